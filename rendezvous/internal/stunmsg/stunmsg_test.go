package stunmsg

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/stun"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// stunRequest encodes a STUN message of type typ with attrs, and a
// FINGERPRINT when fingerprint is set.
func stunRequest(typ stun.MessageType, fingerprint bool, attrs ...stun.RawAttribute) ([]byte, [stun.TransactionIDSize]byte) {
	m := new(stun.Message)
	m.Type = typ
	rand.Read(m.TransactionID[:])
	m.WriteHeader()
	for _, a := range attrs {
		m.Add(a.Type, a.Value)
	}
	if fingerprint {
		stun.Fingerprint.AddTo(m)
	}
	return m.Raw, m.TransactionID
}

func TestIsSTUN(t *testing.T) {
	valid, _ := stunRequest(stun.BindingRequest, true, stun.RawAttribute{Type: stun.AttrSoftware, Value: []byte("x")})
	hello := wire.Pad((&wire.Hello{ReqID: 1, Session: "s"}).AppendTo(nil))
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"binding request", valid, true},
		{"header only", valid[:20:20], false}, // length field says attributes follow
		{"truncated", valid[:len(valid)-4], false},
		{"trailing byte", append(bytes.Clone(valid), 0), false},
		{"short", valid[:19], false},
		{"empty", nil, false},
		{"top bits set", append([]byte{valid[0] | 0x40}, valid[1:]...), false},
		{"wrong cookie", append(append(bytes.Clone(valid[:4]), 0x21, 0x12, 0xa4, 0x43), valid[8:]...), false},
		{"rendezvous hello", hello, false},
		{"relay", append([]byte{wire.RelayType}, valid[1:]...), false},
		{"probe", append([]byte{0xF0}, valid[1:]...), false},
	} {
		if got := IsSTUN(tc.pkt); got != tc.want {
			t.Errorf("%s: IsSTUN = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A header claiming 4 bytes of attributes and carrying 4 is framed
	// correctly; one with a length that is not a multiple of 4 is not.
	hdr := append(bytes.Clone(valid[:20]), 0, 0, 0, 0)
	binary.BigEndian.PutUint16(hdr[2:4], 4)
	if !IsSTUN(hdr) {
		t.Error("a 24-byte message with length 4 is STUN")
	}
	odd := append(bytes.Clone(valid[:20]), 0, 0)
	binary.BigEndian.PutUint16(odd[2:4], 2)
	if IsSTUN(odd) {
		t.Error("a length that is not a multiple of 4 is not STUN")
	}
}

func TestSTUNAddrRoundTrip(t *testing.T) {
	for _, s := range []string{"192.0.2.1:32853", "[2001:db8:1234:5678:11:2233:4455:6677]:32853", "[::ffff:10.0.0.1]:1", "0.0.0.0:0", "[::]:65535"} {
		a := netip.MustParseAddrPort(s)
		want := udpio.Unmap(a)
		for _, xor := range []bool{true, false} {
			m := new(stun.Message)
			rand.Read(m.TransactionID[:])
			m.WriteHeader()
			typ := stun.AttrOtherAddress
			if xor {
				typ = stun.AttrXORMappedAddress
			}
			AddAddr(m, typ, a, xor)
			v, err := m.Get(typ)
			if err != nil {
				t.Fatal(err)
			}
			var txid *[stun.TransactionIDSize]byte
			if xor {
				txid = &m.TransactionID
			}
			got, err := DecodeAddr(v, txid)
			if err != nil || got != want {
				t.Errorf("%s xor=%v: decoded %v, %v", s, xor, got, err)
			}
			// pion decodes what we encode (its decoder is safe on
			// well-formed values).
			var pa stun.XORMappedAddress
			var perr error
			if xor {
				perr = pa.GetFrom(m)
			} else {
				var o stun.OtherAddress
				perr = o.GetFrom(m)
				pa = stun.XORMappedAddress(o)
			}
			pip, _ := netip.AddrFromSlice(pa.IP)
			if perr != nil || netip.AddrPortFrom(pip.Unmap(), uint16(pa.Port)) != want {
				t.Errorf("%s xor=%v: pion decoded %v:%d, %v", s, xor, pa.IP, pa.Port, perr)
			}
		}
	}
}

func TestDecodeSTUNAddrRejects(t *testing.T) {
	var txid [stun.TransactionIDSize]byte
	for _, v := range [][]byte{
		nil,
		{0},
		{0, 1, 0},                   // shorter than family and port
		{0, 1, 0, 1},                // IPv4 without the address
		{0, 1, 0, 1, 1, 2, 3},       // IPv4 one byte short
		{0, 1, 0, 1, 1, 2, 3, 4, 5}, // IPv4 one byte long
		{0, 2, 0, 1, 1, 2, 3, 4},    // IPv6 family, IPv4 length
		{0, 3, 0, 1, 1, 2, 3, 4},    // unknown family
		append([]byte{0, 2, 0, 1}, make([]byte, 15)...),
	} {
		if a, err := DecodeAddr(v, &txid); err == nil {
			t.Errorf("%x decoded to %v", v, a)
		}
	}
}

// TestRFC5769Responses decodes the sample responses of RFC 5769 (2.2, 2.3),
// FINGERPRINT and XOR-MAPPED-ADDRESS included.
func TestRFC5769Responses(t *testing.T) {
	txid := [stun.TransactionIDSize]byte{0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae}
	for _, tc := range []struct {
		raw  string
		want string
	}{
		{"\x01\x01\x00\x3c\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
			"\x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20" +
			"\x00\x20\x00\x08\x00\x01\xa1\x47\xe1\x12\xa6\x43" +
			"\x00\x08\x00\x14\x2b\x91\xf5\x99\xfd\x9e\x90\xc3\x8c\x74\x89\xf9\x2a\xf9\xba\x53\xf0\x6b\xe7\xd7" +
			"\x80\x28\x00\x04\xc0\x7d\x4c\x96", "192.0.2.1:32853"},
		{"\x01\x01\x00\x48\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
			"\x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20" +
			"\x00\x20\x00\x14\x00\x02\xa1\x47\x01\x13\xa9\xfa\xa5\xd3\xf1\x79\xbc\x25\xf4\xb5\xbe\xd2\xb9\xd9" +
			"\x00\x08\x00\x14\xa3\x82\x95\x4e\x4b\xe6\x7b\xf1\x17\x84\xc9\x7c\x82\x92\xc2\x75\xbf\xe3\xed\x41" +
			"\x80\x28\x00\x04\xc8\xfb\x0b\x4c", "[2001:db8:1234:5678:11:2233:4455:6677]:32853"},
	} {
		raw := []byte(tc.raw)
		ans, ok := ParseAnswer(raw, txid)
		if !ok || ans.Code != 0 || ans.Mapped != netip.MustParseAddrPort(tc.want) {
			t.Errorf("RFC 5769 response: %+v %v, want %s", ans, ok, tc.want)
		}
		// A flipped bit breaks the FINGERPRINT: the answer is not taken.
		raw[len(raw)-1] ^= 1
		if _, ok := ParseAnswer(raw, txid); ok {
			t.Error("an answer with a wrong FINGERPRINT was accepted")
		}
		raw[len(raw)-1] ^= 1
		other := txid
		other[0] ^= 1
		if _, ok := ParseAnswer(raw, other); ok {
			t.Error("an answer to another transaction was accepted")
		}
	}
}
