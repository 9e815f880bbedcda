package rendezvous

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"runtime/debug"

	"golang.org/x/crypto/argon2"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Argon2Params are the argon2id costs of a credential. They are part of the
// protocol: both the registering client and every finding client must use the
// same ones, or the proof does not match.
type Argon2Params struct {
	Time    uint32
	MemoryK uint32 // KiB
	Threads uint8
}

// CredentialParams: t=3, 32 MiB, p=4. RFC 9106's second option uses
// 64 MiB, but that alone would take a client to the pipe's 64 MiB memory
// budget; 32 MiB with three passes stays well above OWASP's minimum
// (19 MiB, t=2) and costs ~60 ms here.
var CredentialParams = Argon2Params{Time: 3, MemoryK: 32 * 1024, Threads: 4}

// testOnlyCredentialParams lets tests use a cheap argon2id; nil in
// production.
var testOnlyCredentialParams *Argon2Params

// SetTestOnlyCredentialParams makes credential derivation cheap for tests of
// this module. Never call it outside tests.
func SetTestOnlyCredentialParams(p Argon2Params) { testOnlyCredentialParams = &p }

// Credential derives the 32-byte credential that the server stores for a
// registered session. The salt binds it to this server (its persistent id)
// and to the session, so the same password gives unrelated credentials on
// other servers and sessions. The password itself never leaves the client.
func Credential(password []byte, serverID [16]byte, session string) [32]byte {
	p := CredentialParams
	if testOnlyCredentialParams != nil {
		p = *testOnlyCredentialParams
	}
	h := sha256.New()
	h.Write([]byte("p2pcat credential salt v1\x00"))
	h.Write(serverID[:])
	writeLV(h, []byte(session))
	salt := h.Sum(nil)[:16]
	cred := [32]byte(argon2.IDKey(password, salt, p.Time, p.MemoryK, p.Threads, 32))
	// The argon2 arena is garbage now; hand it back to the OS so it does
	// not stay in the session's resident memory.
	debug.FreeOSMemory()
	return cred
}

// FindProof proves knowledge of a registered session's credential without
// sending it: an HMAC under the credential over the server's cookie (fresh,
// bound to the client's address) and every field of the request.
func FindProof(cred [32]byte, cookie []byte, session, name, peer string) [32]byte {
	m := hmac.New(sha256.New, cred[:])
	m.Write([]byte("p2pcat find proof v1\x00"))
	writeLV(m, cookie)
	writeLV(m, []byte(session))
	writeLV(m, []byte(name))
	writeLV(m, []byte(peer))
	return [32]byte(m.Sum(nil))
}

type byteWriter interface{ Write([]byte) (int, error) }

// writeLV writes a length-prefixed field so that field boundaries are
// unambiguous in what is hashed.
func writeLV(w byteWriter, b []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	w.Write(l[:])
	w.Write(b)
}

// ValidSession checks a session name as the server will.
func ValidSession(s string) error { return wire.ValidName(s) }
