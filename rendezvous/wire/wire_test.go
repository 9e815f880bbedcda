package wire

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func sampleMessages() []Message {
	v4 := netip.MustParseAddrPort("198.51.100.7:4242")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:9")
	return []Message{
		&Hello{ReqID: 1, Session: "team"},
		&Challenge{ReqID: 2, Cookie: bytes.Repeat([]byte{7}, 20), ServerID: [16]byte{1, 2, 3}, Flags: ChallengeRegistered},
		&Register{ReqID: 3, Cookie: []byte{1, 2}, Session: "team", Verifier: [32]byte{9}, TTLSeconds: 86400, Signature: [64]byte{8, 63: 7}},
		&RegisterResp{ReqID: 4, Status: RegisterRefreshed, Expires: 1_900_000_000},
		&Find{ReqID: 5, Cookie: []byte{5}, Session: "team", Name: "alice", Peer: "bob", Signature: [64]byte{4, 63: 3},
			Candidates: []netip.AddrPort{v4, v6}},
		&Find{ReqID: 6, Session: "s", Name: "a", Peer: "b"},
		&FindResp{ReqID: 7, Status: FindWaiting, Observed: v4},
		&FindResp{ReqID: 8, Status: FindMatched, Observed: v4, PairingID: [16]byte{0xaa}, Role: RoleResponder,
			PeerName: "bob", PeerObserved: v6, PeerCandidates: []netip.AddrPort{v4}},
		&Error{ReqID: 9, Code: CodeTaken, Message: "session taken"},
		&FindResp{ReqID: 10, Status: FindMatched, Observed: v6, PairingID: [16]byte{0xbb}, Role: RoleInitiator, Relay: true,
			RelayToken: [16]byte{0x11, 15: 0x22}, PeerName: "alice", PeerObserved: v4},
		&RelayBind{ReqID: 11, Cookie: []byte{1, 2, 3}, PairingID: [16]byte{0xcc}, Role: RoleResponder, MAC: [32]byte{5, 31: 6}},
		&Leave{ReqID: 12, Cookie: []byte{4, 5}, Session: "team", Name: "alice", Peer: "bob"},
		&RelayEnded{PairingID: [16]byte{0xdd}, Reason: "the relay's cap was reached", MAC: [32]byte{1, 31: 2}},
		// A listener's find for any peer, a finder's later punch attempt,
		// and the listener's Leave.
		&Find{ReqID: 14, Cookie: []byte{6}, Session: "team", Name: "homebox", Flags: FindAnyPeer, Signature: [64]byte{2, 63: 1},
			Candidates: []netip.AddrPort{v4}},
		&Find{ReqID: 15, Cookie: []byte{6}, Session: "team", Name: "laptop", Peer: "homebox", Flags: FindAgain},
		&Leave{ReqID: 16, Cookie: []byte{6}, Session: "team", Name: "homebox"},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		enc := m.AppendTo(nil)
		got, err := Decode(enc)
		if err != nil {
			t.Fatalf("%T: decode: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%T: round trip\n got %#v\nwant %#v", m, got, m)
		}
		if got.Type() != m.Type() {
			t.Fatalf("type %v != %v", got.Type(), m.Type())
		}
		id, ok := ReqIDOf(enc)
		if _, noID := m.(*RelayEnded); noID {
			if ok {
				t.Fatalf("ReqIDOf(RelayEnded) = %d, true; it has no request id", id)
			}
		} else if !ok || id == 0 {
			t.Fatalf("%T: ReqIDOf = %d, %v", m, id, ok)
		}
	}
}

func TestPaddedRequestsDecode(t *testing.T) {
	for _, m := range sampleMessages() {
		switch m.(type) {
		case *Hello, *Register, *Find, *Leave, *RelayBind:
		default:
			continue
		}
		enc := Pad(m.AppendTo(nil))
		if len(enc) < MinRequestLen {
			t.Fatalf("Pad left %d bytes", len(enc))
		}
		got, err := Decode(enc)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%T padded: %v %#v", m, err, got)
		}
		enc = append(enc, 0)
		if got, err := Decode(enc); err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%T with a zero byte more: %v %#v", m, err, got)
		}
		enc[len(enc)-1] = 1 // non-zero padding hides data: refused
		if _, err := Decode(enc); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%T with non-zero padding: err = %v", m, err)
		}
	}
}

func TestEveryTruncationFails(t *testing.T) {
	for _, m := range sampleMessages() {
		enc := m.AppendTo(nil)
		for n := range len(enc) {
			if _, err := Decode(enc[:n]); err == nil {
				t.Fatalf("%T truncated to %d bytes decoded without error", m, n)
			}
		}
	}
}

func TestRejects(t *testing.T) {
	hello := (&Hello{ReqID: 1, Session: "x"}).AppendTo(nil)
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":       {nil, ErrNotRendezvous},
		"stun":        {[]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42}, ErrNotRendezvous},
		"version 1":   {append([]byte("P2PC\x01\x01"), hello[6:]...), ErrVersion},
		"version 3":   {append([]byte("P2PC\x03\x01"), hello[6:]...), ErrVersion},
		"type":        {append([]byte("P2PC\x02\x7f"), hello[6:]...), ErrType},
		"oversized":   {append(append([]byte(nil), hello...), make([]byte, MaxPacket)...), ErrMalformed},
		"bad name":    {(&Hello{ReqID: 1, Session: "a b"}).AppendTo(nil), ErrMalformed},
		"escape name": {(&Hello{ReqID: 1, Session: "\x1b[31m"}).AppendTo(nil), ErrMalformed},
		"reply trail": {append((&Error{ReqID: 1, Code: 1}).AppendTo(nil), 0), ErrMalformed},
		"ended trail": {append((&RelayEnded{Reason: "x"}).AppendTo(nil), 0), ErrMalformed},
		// The relay token is there exactly when the relay flag is: a
		// matched FindResp without the flag that still carries 16 more
		// bytes does not decode.
		"token without relay": {tokenWithoutRelay(), ErrMalformed},
		"matched, no peer name": {func() []byte {
			m := &FindResp{ReqID: 1, Status: FindMatched, Observed: netip.MustParseAddrPort("192.0.2.1:1"), PeerName: "b"}
			b := m.AppendTo(nil)
			// header 6, reqID 8, status 1, observed 7, pairing id 16, role 1, flags 1: the name's length
			return append(b[:6+8+1+7+16+1+1], append([]byte{0}, b[6+8+1+7+16+1+1+2:]...)...)
		}(), ErrMalformed},
		"matched, escape in peer name": {(&FindResp{ReqID: 1, Status: FindMatched, PeerName: "\x1b]0;x\x07",
			Observed: netip.MustParseAddrPort("192.0.2.1:1"), PeerObserved: netip.MustParseAddrPort("192.0.2.1:1")}).AppendTo(nil), ErrMalformed},
		"find, bad peer name": {(&Find{ReqID: 1, Session: "s", Name: "a", Peer: "b c"}).AppendTo(nil), ErrMalformed},
	}
	for name, c := range cases {
		if _, err := Decode(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
}

func tokenWithoutRelay() []byte {
	m := &FindResp{ReqID: 1, Status: FindMatched, Observed: netip.MustParseAddrPort("192.0.2.1:1"), Relay: true,
		RelayToken: [16]byte{1}, PeerName: "b", PeerObserved: netip.MustParseAddrPort("192.0.2.2:2")}
	b := m.AppendTo(nil)
	// header 6, reqID 8, status 1, observed 7, pairing id 16, role 1: flags
	b[6+8+1+7+16+1] = 0
	return b
}

// TestVersionHeaders: version 2 in every header; an Error can be written
// in another version and read back whatever its version says, and nothing
// else is read that way.
func TestVersionHeaders(t *testing.T) {
	for _, m := range sampleMessages() {
		if b := m.AppendTo(nil); b[4] != 2 || Type(b[5]) != m.Type() {
			t.Fatalf("%T: header % x", m, b[:6])
		}
	}
	e := &Error{ReqID: 0x2a, Code: CodeVersion, Message: "this server speaks p2pcat protocol version 2"}
	v1 := AppendErrorVersion(nil, 1, e)
	if !bytes.Equal(v1[:6], []byte("P2PC\x01\x07")) || !bytes.Equal(v1[6:], e.AppendTo(nil)[6:]) {
		t.Fatalf("version-1 Error % x: want the same body under a version-1 header", v1)
	}
	if _, err := Decode(v1); !errors.Is(err, ErrVersion) {
		t.Fatalf("Decode of a version-1 Error: %v, want ErrVersion", err)
	}
	for _, version := range []uint8{1, 2, 3, 255} {
		got, v, ok := DecodeAnyVersionError(AppendErrorVersion(nil, version, e))
		if !ok || v != version || !reflect.DeepEqual(got, e) {
			t.Fatalf("DecodeAnyVersionError(version %d) = %#v, %d, %v", version, got, v, ok)
		}
	}
	// The Error version 1 servers send: "server speaks protocol version 1".
	fromV1 := []byte("P2PC\x01\x07\x00\x00\x00\x00\x00\x00\x00\x2a\x02\x20server speaks protocol version 1")
	if got, v, ok := DecodeAnyVersionError(fromV1); !ok || v != 1 || got.Code != CodeVersion || got.ReqID != 0x2a {
		t.Fatalf("a version-1 server's answer: %#v, %d, %v", got, v, ok)
	}
	for name, b := range map[string][]byte{
		"hello":     (&Hello{ReqID: 1, Session: "s"}).AppendTo(nil),
		"trailing":  append(AppendErrorVersion(nil, 1, e), 0),
		"truncated": v1[:len(v1)-1],
		"no magic":  append([]byte("Q2PC"), v1[4:]...),
		"short":     v1[:5],
		"oversized": append(append([]byte(nil), v1[:15]...), make([]byte, MaxPacket)...),
	} {
		if _, _, ok := DecodeAnyVersionError(b); ok {
			t.Errorf("DecodeAnyVersionError(%s) accepted it", name)
		}
	}
}

// TestRelayMACs: each MAC verifies under its own token only, and covers
// every field it names.
func TestRelayMACs(t *testing.T) {
	tok, other := [16]byte{1}, [16]byte{2}
	pid := [16]byte{0xaa}
	bind := &RelayBind{ReqID: 1, Cookie: []byte("cookie"), PairingID: pid, Role: RoleResponder}
	bind.MAC = RelayBindMAC(tok, pid, RoleResponder, bind.Cookie)
	if !bind.Verify(tok) || bind.Verify(other) {
		t.Fatal("RelayBind MAC: verifies under the wrong token, or not under the right one")
	}
	for name, change := range map[string]func(*RelayBind){
		"role":      func(m *RelayBind) { m.Role = RoleInitiator },
		"pairing":   func(m *RelayBind) { m.PairingID[15] = 1 },
		"cookie":    func(m *RelayBind) { m.Cookie = []byte("cookiE") },
		"no cookie": func(m *RelayBind) { m.Cookie = nil },
	} {
		m := *bind
		m.Cookie = bytes.Clone(bind.Cookie)
		change(&m)
		if m.Verify(tok) {
			t.Errorf("RelayBind MAC still verifies with another %s", name)
		}
	}
	// The request id is not covered: it only matches the Challenge.
	moved := *bind
	moved.ReqID = 2
	if !moved.Verify(tok) {
		t.Error("RelayBind MAC depends on the request id")
	}

	ended := NewRelayEnded(tok, pid, "cap reached")
	if !ended.Verify(tok) || ended.Verify(other) {
		t.Fatal("RelayEnded MAC: verifies under the wrong token, or not under the right one")
	}
	for name, m := range map[string]RelayEnded{
		"reason":  {PairingID: pid, Reason: "cap reached!", MAC: ended.MAC},
		"pairing": {PairingID: [16]byte{0xab}, Reason: ended.Reason, MAC: ended.MAC},
	} {
		if m.Verify(tok) {
			t.Errorf("RelayEnded MAC still verifies with another %s", name)
		}
	}
	long := NewRelayEnded(tok, pid, string(bytes.Repeat([]byte("x"), 300)))
	got, err := Decode(long.AppendTo(nil))
	if err != nil || len(got.(*RelayEnded).Reason) != MaxErrorMessage || !got.(*RelayEnded).Verify(tok) {
		t.Fatalf("a long reason: %v; what is sent must be what is MACed", err)
	}
	// Fixed vectors, so that another implementation can check itself.
	if got := fmt.Sprintf("%x", RelayBindMAC([16]byte{}, [16]byte{}, RoleInitiator, nil)); got != relayBindVector {
		t.Errorf("RelayBindMAC(zero) = %s, want %s", got, relayBindVector)
	}
	if got := fmt.Sprintf("%x", RelayEndedMAC([16]byte{}, [16]byte{}, "")); got != relayEndedVector {
		t.Errorf("RelayEndedMAC(zero) = %s, want %s", got, relayEndedVector)
	}
}

// TestFindCheck: the decoder keeps a find's flags and an empty peer as they
// came, and Check says what is wrong with the ones no server may act on.
func TestFindCheck(t *testing.T) {
	for name, f := range map[string]Find{
		"plain":     {Name: "a", Peer: "b"},
		"again":     {Name: "a", Peer: "b", Flags: FindAgain},
		"any peer":  {Name: "a", Flags: FindAnyPeer},
		"long name": {Name: string(bytes.Repeat([]byte("x"), MaxNameLen)), Flags: FindAnyPeer},
	} {
		if err := f.Check(); err != nil {
			t.Errorf("%s: Check = %v", name, err)
		}
	}
	for name, f := range map[string]Find{
		"unknown bit":         {Name: "a", Peer: "b", Flags: 1 << 2},
		"top bit":             {Name: "a", Flags: FindAnyPeer | 1<<7},
		"any peer with peer":  {Name: "a", Peer: "b", Flags: FindAnyPeer},
		"any peer and again":  {Name: "a", Flags: FindAnyPeer | FindAgain},
		"no peer":             {Name: "a"},
		"again without peer":  {Name: "a", Flags: FindAgain},
		"name is peer":        {Name: "a", Peer: "a"},
		"name is peer, again": {Name: "a", Peer: "a", Flags: FindAgain},
	} {
		f.Session = "s"
		err := f.Check()
		if err == nil {
			t.Errorf("%s: Check accepted %+v", name, f)
			continue
		}
		// It decodes all the same: refusing it is the server's, with a
		// reason (CodeBadArgument), not a malformed packet.
		got, derr := Decode(f.AppendTo(nil))
		if derr != nil {
			t.Errorf("%s: Decode = %v, want the find as sent", name, derr)
		} else if g := got.(*Find); g.Flags != f.Flags || g.Peer != f.Peer {
			t.Errorf("%s: decoded flags 0x%02x peer %q, sent 0x%02x %q", name, g.Flags, g.Peer, f.Flags, f.Peer)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"alice", "bob@example", "Zoë", "a.b-c_d+1"} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "tab\t", "nl\n", "\x00", "\u200b", string(bytes.Repeat([]byte("x"), 65)), "\xff"} {
		if err := ValidName(bad); err == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
}

// TestSeedCorpus keeps testdata/fuzz/FuzzDecode in step with the messages.
// Run with -update-corpus after a wire change... the files are plain Go fuzz
// corpus entries, one per sample message.
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) < len(sampleMessages()) {
		t.Fatalf("seed corpus in %s missing or short (%v); regenerate with: go test ./rendezvous/wire -run TestWriteSeedCorpus -write-corpus", dir, err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(m.AppendTo(nil))
	}
	f.Add(AppendErrorVersion(nil, 1, &Error{ReqID: 1, Code: CodeVersion, Message: "server speaks protocol version 1"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// An Error of any version decodes the same way as ours, and
		// re-encodes to the same bytes.
		if e, v, ok := DecodeAnyVersionError(b); ok {
			if again := AppendErrorVersion(nil, v, e); !bytes.Equal(again, b) {
				t.Fatalf("Error re-encoding % x != % x", again, b)
			}
		}
		m, err := Decode(b)
		if err != nil {
			return
		}
		if e, ok := m.(*Error); ok {
			if any, v, ok := DecodeAnyVersionError(b); !ok || v != Version || !reflect.DeepEqual(any, e) {
				t.Fatalf("DecodeAnyVersionError disagrees with Decode on %x", b)
			}
		}
		// Whatever decodes re-encodes to something that decodes to the same.
		again, err := Decode(m.AppendTo(nil))
		if err != nil {
			t.Fatalf("re-encoding of %#v does not decode: %v", m, err)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("unstable: %#v != %#v", m, again)
		}
	})
}

// The MACs of all-zero inputs (token, pairing id, role 0, empty cookie or
// reason), computed independently:
//
//	python3 -c 'import hmac,hashlib; print(hmac.new(bytes(16), b"p2pcat v2 relay bind\0"+bytes(16)+bytes(1)+bytes(4), hashlib.sha256).hexdigest())'
//	python3 -c 'import hmac,hashlib; print(hmac.new(bytes(16), b"p2pcat v2 relay ended\0"+bytes(16)+bytes(4), hashlib.sha256).hexdigest())'
const (
	relayBindVector  = "7743c60c7b69a66cf287d528c7774831c0fe97fbe4244d0d72147a3a4c9156b6"
	relayEndedVector = "b7a2d557cb22df95f20520d7c4e8f4d540c4e4dbe2e190806f40376281de0613"
)
