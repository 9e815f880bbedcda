package wire

import (
	"bytes"
	"errors"
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
		&Register{ReqID: 3, Cookie: []byte{1, 2}, Session: "team", Credential: [32]byte{9}, TTLSeconds: 86400},
		&RegisterResp{ReqID: 4, Status: RegisterRefreshed, Expires: 1_900_000_000},
		&Find{ReqID: 5, Cookie: []byte{5}, Session: "team", Name: "alice", Peer: "bob", Proof: [32]byte{4},
			Candidates: []netip.AddrPort{v4, v6}},
		&Find{ReqID: 6, Session: "s", Name: "a", Peer: "b"},
		&FindResp{ReqID: 7, Status: FindWaiting, Observed: v4},
		&FindResp{ReqID: 8, Status: FindMatched, Observed: v4, PairingID: [16]byte{0xaa}, Role: RoleResponder,
			PeerObserved: v6, PeerCandidates: []netip.AddrPort{v4}},
		&Error{ReqID: 9, Code: CodeTaken, Message: "session taken"},
		&FindResp{ReqID: 10, Status: FindMatched, Observed: v6, PairingID: [16]byte{0xbb}, Role: RoleInitiator, Relay: true,
			PeerObserved: v4},
		&RelayBind{ReqID: 11, Cookie: []byte{1, 2, 3}, PairingID: [16]byte{0xcc}, Role: RoleResponder},
		&Leave{ReqID: 12, Cookie: []byte{4, 5}, Session: "team", Name: "alice", Peer: "bob"},
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
		if !ok || id == 0 {
			t.Fatalf("%T: ReqIDOf = %d, %v", m, id, ok)
		}
	}
}

func TestPaddedRequestsDecode(t *testing.T) {
	for _, m := range sampleMessages() {
		switch m.(type) {
		case *Hello, *Register, *Find, *Leave:
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
		"version":     {append([]byte("P2PC\x02\x01"), hello[6:]...), ErrVersion},
		"type":        {append([]byte("P2PC\x01\x7f"), hello[6:]...), ErrType},
		"oversized":   {append(append([]byte(nil), hello...), make([]byte, MaxPacket)...), ErrMalformed},
		"bad name":    {(&Hello{ReqID: 1, Session: "a b"}).AppendTo(nil), ErrMalformed},
		"escape name": {(&Hello{ReqID: 1, Session: "\x1b[31m"}).AppendTo(nil), ErrMalformed},
		"reply trail": {append((&Error{ReqID: 1, Code: 1}).AppendTo(nil), 0), ErrMalformed},
	}
	for name, c := range cases {
		if _, err := Decode(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
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
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
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
