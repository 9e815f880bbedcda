package rendezvous

// Session keys: what a registered session is reserved with, instead of a
// password, so that nothing the server (or anyone on its path) sees depends
// on the password (PROTOCOL.md 2.10).
//
//   - A session key is 256 random bits, made by `p2pcat register`, printed
//     once as text (String) and kept by the user (a file, P2PCAT_SESSION_KEY).
//   - The server stores only the verifier, the Ed25519 public key of a
//     signing key derived from the session key. Register and Find prove
//     possession with Ed25519 signatures over the server id and the cookie
//     (fresh, bound to the sender's address), so a captured request is
//     useless from another address, on another server or after two minutes.
//   - The key is high-entropy: nothing derived from it can be attacked
//     offline, and it is independent of the password. The peers bind it into
//     CPace together with the password (CPaceInput), so that a member of the
//     session without the key cannot impersonate one with it.
//
// Derivations are HKDF-SHA256 with the session key as input key material,
// no salt, 32 bytes out, and one info string each; they are one-way and
// independent of each other.

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// SessionKey is a registered session's secret: 256 random bits.
type SessionKey [32]byte

// SessionKeyPrefix starts the text form of every session key.
const SessionKeyPrefix = "p2pcat-key-"

const (
	keyCheckLen = 2                                           // checksum bytes after the key
	keyTextLen  = ((len(SessionKey{})+keyCheckLen)*8 + 4) / 5 // base32 characters: 55
)

// keyEncoding is RFC 4648 base32, lower case, without padding.
var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// ErrInvalidSessionKey is wrapped by every error of ParseSessionKey.
var ErrInvalidSessionKey = errors.New("invalid session key")

// keyError is a ParseSessionKey failure: its own text (which never holds
// any part of the key), and errors.Is(err, ErrInvalidSessionKey).
type keyError string

func (e keyError) Error() string { return string(e) }
func (e keyError) Unwrap() error { return ErrInvalidSessionKey }

// GenerateSessionKey returns a new random session key.
func GenerateSessionKey() (SessionKey, error) {
	var k SessionKey
	if _, err := rand.Read(k[:]); err != nil {
		return SessionKey{}, fmt.Errorf("generating a session key: %w", err)
	}
	return k, nil
}

// String returns the key's text form: "p2pcat-key-" and 55 characters of
// lower-case base32 (no padding) of the key and a 2-byte checksum, so that
// a typo is caught before anything is sent. It is the secret itself: print
// it only where the user asked for it.
func (k SessionKey) String() string {
	b := make([]byte, 0, len(k)+keyCheckLen)
	b = append(b, k[:]...)
	b = append(b, k.check()...)
	return SessionKeyPrefix + keyEncoding.EncodeToString(b)
}

// LogValue keeps the key out of structured logs.
func (SessionKey) LogValue() slog.Value { return slog.StringValue("[session key]") }

func (k SessionKey) check() []byte {
	h := sha256.New()
	h.Write([]byte("p2pcat session key check"))
	h.Write(k[:])
	return h.Sum(nil)[:keyCheckLen]
}

// ParseSessionKey reads the text form made by String. Surrounding white
// space (a file's trailing newline) is ignored, and so is letter case. The
// errors say what is wrong without repeating any of the text.
func ParseSessionKey(s string) (SessionKey, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	switch {
	case s == "":
		return SessionKey{}, keyError("not a p2pcat session key: it is empty")
	case !strings.HasPrefix(s, SessionKeyPrefix):
		return SessionKey{}, keyError(fmt.Sprintf("not a p2pcat session key: it does not start with %q", SessionKeyPrefix))
	}
	body := s[len(SessionKeyPrefix):]
	if len(body) != keyTextLen {
		return SessionKey{}, keyError(fmt.Sprintf("not a p2pcat session key: %d characters after %q, want %d", len(body), SessionKeyPrefix, keyTextLen))
	}
	raw, err := keyEncoding.DecodeString(body)
	// The last character holds 2 bits of data: only one of the characters
	// that decode alike is the key's, so that every key has one text form.
	if err != nil || len(raw) != len(SessionKey{})+keyCheckLen || keyEncoding.EncodeToString(raw) != body {
		return SessionKey{}, keyError("not a p2pcat session key: it is not base32 (a-z, 2-7)")
	}
	k := SessionKey(raw[:len(SessionKey{})])
	if string(k.check()) != string(raw[len(k):]) {
		return SessionKey{}, keyError("session key checksum does not match: a typo?")
	}
	return k, nil
}

func (k SessionKey) derive(info string) []byte {
	out, err := hkdf.Key(sha256.New, k[:], nil, info, 32)
	if err != nil {
		panic("rendezvous: HKDF-SHA256 refused 32 bytes: " + err.Error()) // cannot happen: the limit is 8160
	}
	return out
}

func (k SessionKey) signingKey() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(k.derive("p2pcat v2 session signing key"))
}

// Verifier is what the server stores for a session registered with k: the
// Ed25519 public key of k's signing key.
func (k SessionKey) Verifier() [32]byte {
	return [32]byte(k.signingKey().Public().(ed25519.PublicKey))
}

// CPaceInput is the 32 bytes the peers bind into CPace's password-related
// string together with the password.
func (k SessionKey) CPaceInput() []byte {
	return k.derive("p2pcat v2 session cpace key")
}

// findMessage is what a Find signature covers:
//
//	"p2pcat v2 find" || 0x00 || lv(serverID) || lv(cookie) || lv(session) || lv(name) || lv(peer) || u8(flags)
//
// with lv(x) = u32be(len(x)) || x. The flags are covered so that nobody on
// the path can turn a find for one peer into a listener's find for anyone
// (or back), nor an again-find into a first one.
func findMessage(serverID [16]byte, cookie []byte, session, name, peer string, flags wire.FindFlags) []byte {
	b := []byte("p2pcat v2 find\x00")
	b = appendLV(b, serverID[:])
	b = appendLV(b, cookie)
	b = appendLV(b, []byte(session))
	b = appendLV(b, []byte(name))
	b = appendLV(b, []byte(peer))
	return append(b, byte(flags))
}

// registerMessage is what a Register signature covers:
//
//	"p2pcat v2 register" || 0x00 || lv(serverID) || lv(cookie) || lv(session) || u32be(ttl) || lv(verifier)
func registerMessage(serverID [16]byte, cookie []byte, session string, ttlSeconds uint32, verifier [32]byte) []byte {
	b := []byte("p2pcat v2 register\x00")
	b = appendLV(b, serverID[:])
	b = appendLV(b, cookie)
	b = appendLV(b, []byte(session))
	b = binary.BigEndian.AppendUint32(b, ttlSeconds)
	return appendLV(b, verifier[:])
}

// FindSignatureFlags signs a Find of a registered session: the server id
// and the cookie come from the Challenge, the names and flags from the Find.
func FindSignatureFlags(k SessionKey, serverID [16]byte, cookie []byte, session, name, peer string, flags wire.FindFlags) [64]byte {
	return [64]byte(ed25519.Sign(k.signingKey(), findMessage(serverID, cookie, session, name, peer, flags)))
}

// VerifyFindFlags reports whether sig is verifier's signature of that Find.
func VerifyFindFlags(verifier [32]byte, sig [64]byte, serverID [16]byte, cookie []byte, session, name, peer string, flags wire.FindFlags) bool {
	return ed25519.Verify(verifier[:], findMessage(serverID, cookie, session, name, peer, flags), sig[:])
}

// FindSignature is FindSignatureFlags of a plain find (no flags).
func FindSignature(k SessionKey, serverID [16]byte, cookie []byte, session, name, peer string) [64]byte {
	return FindSignatureFlags(k, serverID, cookie, session, name, peer, 0)
}

// VerifyFind is VerifyFindFlags of a plain find (no flags).
func VerifyFind(verifier [32]byte, sig [64]byte, serverID [16]byte, cookie []byte, session, name, peer string) bool {
	return VerifyFindFlags(verifier, sig, serverID, cookie, session, name, peer, 0)
}

// RegisterSignature signs a Register of session for ttlSeconds; it covers
// k's verifier too.
func RegisterSignature(k SessionKey, serverID [16]byte, cookie []byte, session string, ttlSeconds uint32) [64]byte {
	return [64]byte(ed25519.Sign(k.signingKey(), registerMessage(serverID, cookie, session, ttlSeconds, k.Verifier())))
}

// VerifyRegister reports whether sig is verifier's signature of that
// Register: proof that the registrant holds the key behind the verifier.
func VerifyRegister(verifier [32]byte, sig [64]byte, serverID [16]byte, cookie []byte, session string, ttlSeconds uint32) bool {
	return ed25519.Verify(verifier[:], registerMessage(serverID, cookie, session, ttlSeconds, verifier), sig[:])
}

// appendLV appends a length-prefixed field, so that field boundaries are
// unambiguous in what is signed.
func appendLV(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}
