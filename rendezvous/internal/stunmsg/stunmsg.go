// Package stunmsg is the part of STUN (RFC 5389, RFC 5780) that p2pcat's
// client and server both need: how a STUN datagram is framed, the address
// attributes, and how a Binding answer decodes. The client (rendezvous,
// natcheck.go) sends the requests and reads the answers with it; the server
// (rendezvous/server, stun.go) builds its answers with it. The rules of the
// server's answers are in rendezvous/server/stun.go and PROTOCOL.md.
//
// It imports only pion/stun and the standard library.
package stunmsg

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/pion/stun"
)

const (
	// HeaderLen is the size of a STUN header.
	HeaderLen = 20
	// MagicCookie is in bytes 4..8 of every RFC 5389 message.
	MagicCookie = 0x2112A442

	// CHANGE-REQUEST flags (RFC 5780 7.2).
	ChangeIP   = 0x04
	ChangePort = 0x02
)

// IsSTUN reports whether pkt is framed as a STUN message: the first two bits
// are 0, bytes 4..8 hold the magic cookie, and the length field (bytes 2..4)
// equals the datagram's length minus the header, a multiple of 4. It does
// not look at the attributes.
func IsSTUN(pkt []byte) bool {
	return len(pkt) >= HeaderLen &&
		pkt[0]&0xC0 == 0 &&
		binary.BigEndian.Uint32(pkt[4:8]) == MagicCookie &&
		int(binary.BigEndian.Uint16(pkt[2:4])) == len(pkt)-HeaderLen &&
		len(pkt)%4 == 0
}

// Answer is what one Binding answer says.
type Answer struct {
	From   netip.AddrPort // the answer's source address (set by the caller that read it)
	Mapped netip.AddrPort // XOR-MAPPED-ADDRESS (MAPPED-ADDRESS from old servers)
	Other  netip.AddrPort // OTHER-ADDRESS; zero if absent
	Origin netip.AddrPort // RESPONSE-ORIGIN; zero if absent
	Code   int            // ERROR-CODE of an error response; 0 for success
	Reason string
}

// ParseAnswer decodes b if it is a Binding response (success or error)
// to transaction txid, with a correct FINGERPRINT if it has one. Address
// attributes that do not parse are treated as absent.
func ParseAnswer(b []byte, txid [stun.TransactionIDSize]byte) (Answer, bool) {
	if !IsSTUN(b) {
		return Answer{}, false
	}
	m := &stun.Message{Raw: b}
	if m.Decode() != nil || m.TransactionID != txid || m.Type.Method != stun.MethodBinding {
		return Answer{}, false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return Answer{}, false
	}
	var ans Answer
	switch m.Type.Class {
	case stun.ClassSuccessResponse:
		if v, err := m.Get(stun.AttrXORMappedAddress); err == nil {
			ans.Mapped, _ = DecodeAddr(v, &txid)
		} else if v, err := m.Get(stun.AttrMappedAddress); err == nil {
			ans.Mapped, _ = DecodeAddr(v, nil)
		}
		if v, err := m.Get(stun.AttrOtherAddress); err == nil {
			ans.Other, _ = DecodeAddr(v, nil)
		}
		if v, err := m.Get(stun.AttrResponseOrigin); err == nil {
			ans.Origin, _ = DecodeAddr(v, nil)
		}
	case stun.ClassErrorResponse:
		v, err := m.Get(stun.AttrErrorCode)
		if err != nil || len(v) < 4 {
			ans.Code = 400 // an error without a code is still an error
			break
		}
		ans.Code = int(v[2]&7)*100 + int(v[3])
		ans.Reason = string(v[4:])
	default:
		return Answer{}, false
	}
	return ans, true
}

var errAddr = errors.New("malformed STUN address attribute")

// DecodeAddr decodes an address attribute's value (RFC 5389 15.1),
// un-XOR-ing it with the cookie and txid when txid is not nil (15.2).
// IPv4-mapped IPv6 addresses come back as IPv4. (pion's XORMappedAddress
// decoder indexes the value before checking its length.)
func DecodeAddr(v []byte, txid *[stun.TransactionIDSize]byte) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, errAddr
	}
	port := binary.BigEndian.Uint16(v[2:4])
	var ip [16]byte
	var n int
	switch {
	case v[1] == 1 && len(v) == 8:
		n = 4
	case v[1] == 2 && len(v) == 20:
		n = 16
	default:
		return netip.AddrPort{}, errAddr
	}
	copy(ip[:n], v[4:4+n])
	if txid != nil {
		port ^= MagicCookie >> 16
		key := xorKey(*txid)
		for i := range n {
			ip[i] ^= key[i]
		}
	}
	if n == 4 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[:4])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16(ip).Unmap(), port), nil
}

// AddAddr appends an address attribute in the MAPPED-ADDRESS format
// (RFC 5389 15.1), XOR-ed with the cookie and transaction id when xor is set
// (15.2). It writes the value itself rather than through pion's
// XORMappedAddress, which allocates for every answer.
func AddAddr(m *stun.Message, t stun.AttrType, a netip.AddrPort, xor bool) {
	var v [20]byte
	ip, port, n := a.Addr().Unmap(), a.Port(), 8
	if ip.Is4() {
		v[1] = 1
		b := ip.As4()
		copy(v[4:8], b[:])
	} else {
		v[1] = 2
		b := ip.As16()
		copy(v[4:20], b[:])
		n = 20
	}
	if xor {
		port ^= MagicCookie >> 16
		key := xorKey(m.TransactionID)
		for i := 4; i < n; i++ {
			v[i] ^= key[i-4]
		}
	}
	binary.BigEndian.PutUint16(v[2:4], port)
	m.Add(t, v[:n])
}

// AddrAttrLen is the size of an address attribute for a, header included.
func AddrAttrLen(a netip.AddrPort) int {
	if a.Addr().Unmap().Is4() {
		return 4 + 8
	}
	return 4 + 20
}

// xorKey is what XOR-MAPPED-ADDRESS XORs the IP with: the cookie, then
// the transaction id (an IPv4 address uses the first 4 bytes).
func xorKey(txid [stun.TransactionIDSize]byte) [16]byte {
	var k [16]byte
	binary.BigEndian.PutUint32(k[:4], MagicCookie)
	copy(k[4:], txid[:])
	return k
}
