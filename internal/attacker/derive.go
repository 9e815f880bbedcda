package attacker

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// Known is what an attacker knows besides its password guess: what it
// chose as a malicious server, or read from a capture.
type Known struct {
	ServerIDs  [][16]byte
	Cookies    [][]byte
	Sessions   []string
	Names      [][2]string // (name, peer) as finds carry them
	PairingIDs [][16]byte
	// SessionKeyInputs are registered sessions' CPace inputs. An attacker
	// does not have them; a test that does adds them, so that even a
	// derivation from the password and the key is looked for.
	SessionKeyInputs [][]byte
}

// Value is one password-derived value an attacker looks for.
type Value struct {
	Label string
	Bytes []byte
}

// V1Credential is protocol version 1's credential of a registered
// session, Argon2id (t=3, 32 MiB, p=4) of the password with a salt bound
// to the server and the session (`git show e59484e:rendezvous/credential.go`).
func V1Credential(password []byte, serverID [16]byte, session string) [32]byte {
	h := sha256.New()
	h.Write([]byte("p2pcat credential salt v1\x00"))
	h.Write(serverID[:])
	writeLV32(h, []byte(session))
	salt := h.Sum(nil)[:16]
	return [32]byte(argon2.IDKey(password, salt, 3, 32*1024, 4, 32))
}

// V1FindProof is version 1's find proof under a credential.
func V1FindProof(cred [32]byte, cookie []byte, session, name, peer string) [32]byte {
	m := hmac.New(sha256.New, cred[:])
	m.Write([]byte("p2pcat find proof v1\x00"))
	for _, f := range [][]byte{cookie, []byte(session), []byte(name), []byte(peer)} {
		writeLV32(m, f)
	}
	return [32]byte(m.Sum(nil))
}

func writeLV32(w interface{ Write([]byte) (int, error) }, b []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	w.Write(l[:])
	w.Write(b)
}

func lv32(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// Derived returns every value an attacker who guesses password would look
// for in a capture, given what it knows: version 1's credential and find
// proofs (what version 1 sent), and what a version 2 might plausibly have
// sent instead (hashes, HKDF outputs, Ed25519 keys and signatures made from
// the password, CPace generators), plus the password itself.
func Derived(password []byte, k Known) []Value {
	var out []Value
	add := func(label string, b []byte) { out = append(out, Value{label, append([]byte(nil), b...)}) }
	add("password", password)
	add("hex(password)", []byte(hex.EncodeToString(password)))
	s256 := sha256.Sum256(password)
	add("SHA-256(password)", s256[:])
	s512 := sha512.Sum512(password)
	add("SHA-512(password)", s512[:])

	var seeds []Value // 32-byte secrets a client might have used as signing keys
	seeds = append(seeds, Value{"SHA-256(password)", s256[:]})
	for _, info := range []string{"p2pcat v2 session signing key", "p2pcat v2 session cpace key", "p2pcat v2 find", "p2pcat v2 register"} {
		v, _ := hkdf.Key(sha256.New, password, nil, info, 32)
		add(fmt.Sprintf("HKDF(password, %q)", info), v)
		seeds = append(seeds, Value{fmt.Sprintf("HKDF(password, %q)", info), v})
	}
	for _, ski := range k.SessionKeyInputs {
		v, _ := hkdf.Key(sha256.New, append(append([]byte(nil), ski...), password...), nil, "p2pcat v2", 32)
		add("HKDF(session key input || password)", v)
		h := hmac.New(sha256.New, ski)
		h.Write(password)
		add("HMAC(session key input, password)", h.Sum(nil))
	}
	for _, sid := range k.ServerIDs {
		for _, session := range k.Sessions {
			cred := V1Credential(password, sid, session)
			label := fmt.Sprintf("v1 credential (server %x, session %q)", sid[:4], session)
			add(label, cred[:])
			seeds = append(seeds, Value{label, cred[:]})
			for _, cookie := range k.Cookies {
				for _, n := range k.Names {
					p := V1FindProof(cred, cookie, session, n[0], n[1])
					add(fmt.Sprintf("v1 find proof (cookie %x, %s->%s)", cookie[:min(4, len(cookie))], n[0], n[1]), p[:])
				}
			}
		}
	}
	for _, cookie := range k.Cookies {
		h := hmac.New(sha256.New, password)
		h.Write(cookie)
		add("HMAC(password, cookie)", h.Sum(nil))
		h = hmac.New(sha256.New, cookie)
		h.Write(password)
		add("HMAC(cookie, password)", h.Sum(nil))
	}
	for _, seed := range seeds {
		priv := ed25519.NewKeyFromSeed(seed.Bytes)
		add("Ed25519 public key of "+seed.Label, priv.Public().(ed25519.PublicKey))
		for _, sid := range k.ServerIDs {
			for _, cookie := range k.Cookies {
				for _, session := range k.Sessions {
					for _, n := range k.Names {
						msg := bytes.Join([][]byte{[]byte("p2pcat v2 find\x00"), lv32(sid[:]), lv32(cookie), lv32([]byte(session)), lv32([]byte(n[0])), lv32([]byte(n[1])), {0}}, nil) // flags byte 0: a plain find
						add("Ed25519 find signature by "+seed.Label, ed25519.Sign(priv, msg))
					}
				}
			}
		}
	}
	// CPace's generator is the password's group element: with the pairing
	// id as session id (as version 1 had it), for each known pair of names.
	keyInputs := append([][]byte{nil}, k.SessionKeyInputs...)
	for _, pid := range k.PairingIDs {
		for _, session := range k.Sessions {
			for _, n := range k.Names {
				lo, hi := n[0], n[1]
				if hi < lo {
					lo, hi = hi, lo
				}
				for _, ski := range keyInputs {
					if g := Generator(PRS(password, ski), CI(session, lo, hi), pid[:]); g != nil {
						add(fmt.Sprintf("CPace generator (pairing %x, %s/%s)", pid[:4], lo, hi), g)
					}
				}
			}
		}
	}
	return out
}

// Find returns the first value that occurs anywhere in data, or nil.
func Find(values []Value, data []byte) *Value {
	for i := range values {
		if len(values[i].Bytes) > 0 && bytes.Contains(data, values[i].Bytes) {
			return &values[i]
		}
	}
	return nil
}
