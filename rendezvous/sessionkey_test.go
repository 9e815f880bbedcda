package rendezvous_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// vectorKey is the session key 00 01 02 … 1f. The vectors below were
// computed independently, with Python's cryptography package (HKDF-SHA256,
// Ed25519) and base64.b32encode, from PROTOCOL.md 2.10.
var vectorKey = func() (k rendezvous.SessionKey) {
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

const (
	vectorText     = "p2pcat-key-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypz4na"
	vectorVerifier = "2975699604aeb811042d487232940f36eda8227815998a97deef4bf76c09de9a"
	vectorCPace    = "3465a22af1279392091f4d0fcd254b3598f42fd013bdbcb66421e90fcd9554c1"
	// Over server id 16 × 0x11, cookie "cookie", session "team", names
	// "alice" and "bob" (flags 0), ttl 86400; the listener's find is name
	// "homebox", no peer, flags 1 (any peer).
	vectorFind        = "7353fced69fc14c056c55b1efa05e3372a56e7ae2e7bb4b6b347c1427cf79e7b38fbc1b5800b0df9d85c2a13514241d089f4b135a8df8af1ffbe3d8bc925e107"
	vectorFindAnyPeer = "edcf36bc37db94cdc722ba193c1b251f56a17c442a7f8fb36ade10e62b34af0152ed1c4502a7feb0f0c4503fef92b02ebd29c54bdb931d09c97192c3238d500e"
	vectorRegister    = "7bd0667cede5a1795670fda81b38c8702e7ad792b7177ad931fbdbed3cf8c825caf0ea364cc133c5965b0853011a8d865f7c543815b8fe9aadbba966f3c45506"
)

var vectorServerID = [16]byte{0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11}

func TestSessionKeyVectors(t *testing.T) {
	k := vectorKey
	if got := k.String(); got != vectorText {
		t.Errorf("String = %s, want %s", got, vectorText)
	}
	if v := k.Verifier(); fmt.Sprintf("%x", v) != vectorVerifier {
		t.Errorf("Verifier = %x, want %s", v, vectorVerifier)
	}
	if c := k.CPaceInput(); fmt.Sprintf("%x", c) != vectorCPace {
		t.Errorf("CPaceInput = %x, want %s", c, vectorCPace)
	}
	cookie := []byte("cookie")
	if s := rendezvous.FindSignature(k, vectorServerID, cookie, "team", "alice", "bob"); fmt.Sprintf("%x", s) != vectorFind {
		t.Errorf("FindSignature = %x, want %s", s, vectorFind)
	}
	if s := rendezvous.FindSignatureFlags(k, vectorServerID, cookie, "team", "homebox", "", wire.FindAnyPeer); fmt.Sprintf("%x", s) != vectorFindAnyPeer {
		t.Errorf("FindSignatureFlags(any peer) = %x, want %s", s, vectorFindAnyPeer)
	}
	if s := rendezvous.RegisterSignature(k, vectorServerID, cookie, "team", 86400); fmt.Sprintf("%x", s) != vectorRegister {
		t.Errorf("RegisterSignature = %x, want %s", s, vectorRegister)
	}
}

func TestSessionKeyText(t *testing.T) {
	k, err := rendezvous.GenerateSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rendezvous.GenerateSessionKey()
	if k == other || k == (rendezvous.SessionKey{}) {
		t.Fatal("GenerateSessionKey is not random")
	}
	text := k.String()
	if !strings.HasPrefix(text, rendezvous.SessionKeyPrefix) || len(text) != len(rendezvous.SessionKeyPrefix)+55 {
		t.Fatalf("text form %q", text)
	}
	for _, in := range []string{text, text + "\n", "  " + text + "\r\n", strings.ToUpper(text), "\t" + text} {
		got, err := rendezvous.ParseSessionKey(in)
		if err != nil || got != k {
			t.Fatalf("ParseSessionKey(%q) = %x, %v", in, got, err)
		}
	}

	body := text[len(rendezvous.SessionKeyPrefix):]
	typo := []byte(text)
	// Change one character of the key: the checksum catches it.
	i := len(rendezvous.SessionKeyPrefix) + 3
	typo[i] = map[bool]byte{true: 'b', false: 'a'}[typo[i] == 'a']
	// The last character carries only 2 bits: one that decodes alike is
	// not a text form of this key.
	last := []byte(text)
	last[len(last)-1] = nonCanonicalLast(last[len(last)-1])
	cases := map[string]struct {
		in, want string
	}{
		"empty":     {"", "not a p2pcat session key: it is empty"},
		"spaces":    {"  \n", "not a p2pcat session key: it is empty"},
		"password":  {"correct horse battery staple", "not a p2pcat session key: it does not start with"},
		"prefix":    {"p2pcat-kee-" + body, "not a p2pcat session key: it does not start with"},
		"short":     {text[:len(text)-1], "not a p2pcat session key: 54 characters"},
		"long":      {text + "a", "not a p2pcat session key: 56 characters"},
		"base32":    {text[:len(text)-2] + "1" + text[len(text)-1:], "not a p2pcat session key: it is not base32"},
		"inner":     {text[:20] + " " + text[21:], "not a p2pcat session key: it is not base32"},
		"last bits": {string(last), "not a p2pcat session key: it is not base32"},
		"typo":      {string(typo), "session key checksum does not match: a typo?"},
	}
	for name, c := range cases {
		_, err := rendezvous.ParseSessionKey(c.in)
		if err == nil || !errors.Is(err, rendezvous.ErrInvalidSessionKey) || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q… wrapping ErrInvalidSessionKey", name, err, c.want)
			continue
		}
		// The error never repeats the key, or a piece of it.
		for j := 0; j+8 <= len(body); j++ {
			if strings.Contains(strings.ToLower(err.Error()), body[j:j+8]) {
				t.Errorf("%s: the error %q holds part of the key", name, err)
				break
			}
		}
	}
}

// nonCanonicalLast returns another base32 character whose top 2 bits (the
// only ones the last of 55 characters carries) are those of c.
func nonCanonicalLast(c byte) byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	v := strings.IndexByte(alphabet, c)
	return alphabet[v^1]
}

func TestSessionKeyDerivations(t *testing.T) {
	k, _ := rendezvous.GenerateSessionKey()
	k2 := k
	k2[31] ^= 1
	if k.Verifier() != k.Verifier() || k.Verifier() == k2.Verifier() {
		t.Fatal("Verifier is not a function of the key")
	}
	v := k.Verifier()
	c := k.CPaceInput()
	if len(c) != 32 || bytes.Equal(c, v[:]) || bytes.Equal(c, k[:]) || bytes.Equal(c, k2.CPaceInput()) {
		t.Fatal("CPaceInput is not an independent 32-byte derivation")
	}
}

func TestSignatures(t *testing.T) {
	k, _ := rendezvous.GenerateSessionKey()
	other, _ := rendezvous.GenerateSessionKey()
	v := k.Verifier()
	sid := [16]byte{1, 2, 3}
	cookie := []byte("a cookie for one address")

	sig := rendezvous.FindSignature(k, sid, cookie, "team", "alice", "bob")
	if !rendezvous.VerifyFind(v, sig, sid, cookie, "team", "alice", "bob") {
		t.Fatal("a Find signature does not verify")
	}
	// Each covered field matters; a signature made for one cookie (one
	// address, one moment) is worthless with another.
	for name, ok := range map[string]bool{
		"other cookie":    rendezvous.VerifyFind(v, sig, sid, []byte("a cookie for another address"), "team", "alice", "bob"),
		"no cookie":       rendezvous.VerifyFind(v, sig, sid, nil, "team", "alice", "bob"),
		"other server":    rendezvous.VerifyFind(v, sig, [16]byte{9}, cookie, "team", "alice", "bob"),
		"other session":   rendezvous.VerifyFind(v, sig, sid, cookie, "teams", "alice", "bob"),
		"other name":      rendezvous.VerifyFind(v, sig, sid, cookie, "team", "mallory", "bob"),
		"names swapped":   rendezvous.VerifyFind(v, sig, sid, cookie, "team", "bob", "alice"),
		"field boundary":  rendezvous.VerifyFind(v, sig, sid, cookie, "team", "alic", "ebob"),
		"other key":       rendezvous.VerifyFind(other.Verifier(), sig, sid, cookie, "team", "alice", "bob"),
		"zero signature":  rendezvous.VerifyFind(v, [64]byte{}, sid, cookie, "team", "alice", "bob"),
		"zero verifier":   rendezvous.VerifyFind([32]byte{}, sig, sid, cookie, "team", "alice", "bob"),
		"register as one": rendezvous.VerifyRegister(v, sig, sid, cookie, "team", 0),
		"again flag":      rendezvous.VerifyFindFlags(v, sig, sid, cookie, "team", "alice", "bob", wire.FindAgain),
		"any-peer flag":   rendezvous.VerifyFindFlags(v, sig, sid, cookie, "team", "alice", "bob", wire.FindAnyPeer),
		// Someone on the path cannot turn a listener's find into a plain one.
		"any-peer flag cleared": rendezvous.VerifyFindFlags(v, rendezvous.FindSignatureFlags(k, sid, cookie, "team", "alice", "", wire.FindAnyPeer),
			sid, cookie, "team", "alice", "", 0),
	} {
		if ok {
			t.Errorf("Find signature verifies with %s", name)
		}
	}

	rsig := rendezvous.RegisterSignature(k, sid, cookie, "team", 3600)
	if !rendezvous.VerifyRegister(v, rsig, sid, cookie, "team", 3600) {
		t.Fatal("a Register signature does not verify")
	}
	for name, ok := range map[string]bool{
		"other ttl":     rendezvous.VerifyRegister(v, rsig, sid, cookie, "team", 60),
		"other cookie":  rendezvous.VerifyRegister(v, rsig, sid, []byte("x"), "team", 3600),
		"other server":  rendezvous.VerifyRegister(v, rsig, [16]byte{9}, cookie, "team", 3600),
		"other session": rendezvous.VerifyRegister(v, rsig, sid, cookie, "other", 3600),
		// A registrant cannot put another's verifier under its signature.
		"other verifier": rendezvous.VerifyRegister(other.Verifier(), rsig, sid, cookie, "team", 3600),
	} {
		if ok {
			t.Errorf("Register signature verifies with %s", name)
		}
	}
}

// FuzzParseSessionKey: whatever parses is the text form of its key (up to
// white space and case), and nothing panics.
func FuzzParseSessionKey(f *testing.F) {
	f.Add(vectorText)
	f.Add(vectorText + "\n")
	f.Add(strings.ToUpper(vectorText))
	f.Add("p2pcat-key-")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := rendezvous.ParseSessionKey(s)
		if err != nil {
			if !errors.Is(err, rendezvous.ErrInvalidSessionKey) {
				t.Fatalf("error %v does not wrap ErrInvalidSessionKey", err)
			}
			return
		}
		if got := k.String(); got != strings.ToLower(strings.TrimSpace(s)) {
			t.Fatalf("%q parsed to a key whose text is %q", s, got)
		}
	})
}
