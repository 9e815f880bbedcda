package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// The relay: when two paired clients find no direct path, each sends its
// session's datagrams to the server wrapped as
//
//	type      uint8     RelayType (0xF1)
//	pairingID [16]byte  from the FindResp that paired them
//	payload   ...       one datagram of the secure layer, opaque to the server
//
// and the server forwards the same bytes, unchanged, to the other client of
// that pairing, only between the two addresses it has recorded for the
// pairing's ends. A relayed datagram without payload is a keepalive: the
// server answers it with the same 17 bytes and forwards nothing (a client
// on a direct path keeps its NAT mapping toward the server open with it, so
// that the relay can reach it the moment the direct path fails). The server
// reads nothing inside the payload: the session is encrypted and
// authenticated end to end (PROTOCOL.md, "The relay"). The type byte is
// outside the ranges of STUN (first byte 0x00-0x01), the rendezvous
// messages (0x50, "P2PC"), the secure layer (0xD0-0xE5) and the punch
// probes (0xF0).
//
// Relay control is authenticated: the pairing id is no secret (it is in
// every relayed datagram), so each end gets its own random relay token in
// its FindResp, and the two messages that change an end's state carry a MAC
// under it (RelayBindMAC, RelayEndedMAC): only that end can move itself,
// and only the server can end it.

// RelayType is the first byte of a relayed datagram.
const RelayType = 0xF1

// RelayHeaderLen is the size of the relay header.
const RelayHeaderLen = 1 + 16

// MaxRelayDatagram is the largest relayed datagram, header included, that a
// server forwards: what fits a 1500-byte Ethernet MTU in IPv4 and UDP
// headers, so that the two legs never fragment.
const MaxRelayDatagram = 1500 - 20 - 8

// MaxRelayPayload is the largest datagram a client can send through the
// relay.
const MaxRelayPayload = MaxRelayDatagram - RelayHeaderLen

// AppendRelayHeader appends the relay header for pairing id to b.
func AppendRelayHeader(b []byte, id [16]byte) []byte {
	b = append(b, RelayType)
	return append(b, id[:]...)
}

// ParseRelay splits a relayed datagram into its pairing id and payload
// (empty for a keepalive).
func ParseRelay(b []byte) (id [16]byte, payload []byte, ok bool) {
	if len(b) < RelayHeaderLen || len(b) > MaxRelayDatagram || b[0] != RelayType {
		return id, nil, false
	}
	return [16]byte(b[1:RelayHeaderLen]), b[RelayHeaderLen:], true
}

// RelayBindMAC is the MAC a RelayBind carries: HMAC-SHA256 under the
// sender's relay token over
//
//	"p2pcat v2 relay bind" || 0x00 || pairingID || role || u32be(len(cookie)) || cookie
//
// The cookie binds it to the address the end moves to, so a captured
// RelayBind moves nothing anywhere else.
func RelayBindMAC(token [16]byte, pairing [16]byte, role PairingRole, cookie []byte) [32]byte {
	m := hmac.New(sha256.New, token[:])
	m.Write([]byte("p2pcat v2 relay bind\x00"))
	m.Write(pairing[:])
	m.Write([]byte{byte(role)})
	writeLV(m, cookie)
	return [32]byte(m.Sum(nil))
}

// RelayEndedMAC is the MAC a RelayEnded carries: HMAC-SHA256 under the
// recipient's relay token over
//
//	"p2pcat v2 relay ended" || 0x00 || pairingID || u32be(len(reason)) || reason
func RelayEndedMAC(token [16]byte, pairing [16]byte, reason string) [32]byte {
	m := hmac.New(sha256.New, token[:])
	m.Write([]byte("p2pcat v2 relay ended\x00"))
	m.Write(pairing[:])
	writeLV(m, []byte(reason))
	return [32]byte(m.Sum(nil))
}

// Verify reports, in constant time, whether the RelayBind's MAC is right
// under token.
func (m *RelayBind) Verify(token [16]byte) bool {
	want := RelayBindMAC(token, m.PairingID, m.Role, m.Cookie)
	return hmac.Equal(want[:], m.MAC[:])
}

// Verify reports, in constant time, whether the RelayEnded's MAC is right
// under token (the recipient's own).
func (m *RelayEnded) Verify(token [16]byte) bool {
	want := RelayEndedMAC(token, m.PairingID, m.Reason)
	return hmac.Equal(want[:], m.MAC[:])
}

func writeLV(w interface{ Write([]byte) (int, error) }, b []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	w.Write(l[:])
	w.Write(b)
}

// NewRelayEnded makes the notice for the end whose relay token is token:
// the reason cut to MaxErrorMessage bytes, then MACed, so that what is
// sent is what was authenticated.
func NewRelayEnded(token [16]byte, pairing [16]byte, reason string) *RelayEnded {
	if len(reason) > MaxErrorMessage {
		reason = reason[:MaxErrorMessage]
	}
	return &RelayEnded{PairingID: pairing, Reason: reason, MAC: RelayEndedMAC(token, pairing, reason)}
}

// RelayBind moves one end of a relayed pairing to the address it comes from:
// a client whose address changed (a new network, a new public IP, a NAT that
// gave it another port) sends it from its session socket. The cookie proves
// that it receives there (without one the server answers with a Challenge);
// the MAC, under the relay token the server gave that end in its FindResp,
// proves that it is that end, which the pairing id alone does not: the id
// travels in clear in every relayed datagram.
type RelayBind struct {
	ReqID     uint64
	Cookie    []byte
	PairingID [16]byte
	Role      PairingRole // the sender's role in the pairing
	MAC       [32]byte    // RelayBindMAC(the sender's relay token, PairingID, Role, Cookie)
}

// RelayEnded tells one end of a relayed pairing that the server stopped
// relaying it (its byte cap was reached). The MAC, under the recipient's
// relay token, makes it believable: anyone can see the pairing id, only
// the server and that end know the token.
type RelayEnded struct {
	PairingID [16]byte
	Reason    string // human-readable; clients sanitize it before printing
	MAC       [32]byte
}

func (*RelayBind) Type() Type  { return TypeRelayBind }
func (*RelayEnded) Type() Type { return TypeRelayEnded }

func (m *RelayBind) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRelayBind)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = append(b, m.PairingID[:]...)
	b = append(b, byte(m.Role))
	return append(b, m.MAC[:]...)
}

func (m *RelayEnded) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRelayEnded)
	b = append(b, m.PairingID[:]...)
	reason := m.Reason
	if len(reason) > MaxErrorMessage {
		reason = reason[:MaxErrorMessage]
	}
	b = appendString(b, reason)
	return append(b, m.MAC[:]...)
}

func readRelayBind(r *reader) *RelayBind {
	v := &RelayBind{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	r.array(v.PairingID[:], "pairing id")
	v.Role = PairingRole(r.u8("role"))
	if v.Role > RoleResponder {
		r.fail("role")
	}
	r.array(v.MAC[:], "mac")
	r.padding()
	return v
}

func readRelayEnded(r *reader) *RelayEnded {
	v := &RelayEnded{}
	r.array(v.PairingID[:], "pairing id")
	v.Reason = r.text(MaxErrorMessage, "reason")
	r.array(v.MAC[:], "mac")
	r.end()
	return v
}
