package secure

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

// Role is this side's part in the handshake: the Initiator speaks first
// and retransmits, the Responder answers. It is CPace's role, since the
// CPace transcript orders the shares by it. Both sides derive it from the
// names (RoleFor), so it is the same in every punch attempt.
type Role = cpace.Role

const (
	Initiator = cpace.Initiator
	Responder = cpace.Responder
)

// RoleFor returns the role of the side called local talking to peer: the
// one whose name sorts first (bytewise) initiates.
func RoleFor(local, peer string) Role {
	if local < peer {
		return Initiator
	}
	return Responder
}

// Defaults for Params' zero values.
const (
	DefaultRSABits    = 2048
	DefaultTimeout    = 20 * time.Second
	DefaultRetransmit = 250 * time.Millisecond
	DefaultKeepalive  = 15 * time.Second

	// MinRSABits and MaxRSABits bound the ephemeral RSA keys, ours and the
	// peer's.
	MinRSABits = 2048
	MaxRSABits = 4096
	// retransmitBackoff caps the retransmit delay at this multiple of the
	// first one.
	retransmitBackoff = 8
	// noticeCopies is how many AuthFailed or Cancel notices are sent, so
	// that one usually survives a lossy path.
	noticeCopies = 3
)

// Params configures Handshake.
type Params struct {
	Role Role
	// Session is the session name; LocalName and PeerName are this side's
	// and the peer's names. All three are bound into the key: both sides
	// must see the same values.
	Session, LocalName, PeerName string
	// Password is the shared secret. It is never logged nor put in errors,
	// and Handshake keeps no copy.
	Password []byte
	// SessionKey is the registered session's CPace input (rendezvous
	// SessionKey.CPaceInput), bound into CPace with the password; empty for
	// an unregistered session. Both sides must give the same.
	SessionKey []byte
	// OnlyFrom, when valid, is the only address handshake datagrams are
	// taken from (direct mode: the peer's configured address).
	OnlyFrom netip.AddrPort
	// RSABits is the size of the generated ephemeral RSA key: 2048 (the
	// default when zero) to 4096.
	RSABits int
	// RSAKey, if not nil, is used instead of generating a key, so it can be
	// generated while waiting for the rendezvous. Its size must be within
	// the RSABits range and its exponent 65537. It must be fresh and used
	// for one handshake only; the caller should drop it afterwards.
	RSAKey *rsa.PrivateKey
	// Timeout bounds the whole handshake (default 20 s); ctx may end it
	// sooner.
	Timeout time.Duration
	// Retransmit is the initiator's first retransmit delay (default
	// 250 ms); it doubles on each retransmission up to 8 times this value.
	Retransmit time.Duration
	// Keepalive is how long the Conn may stay silent before it sends a
	// keepalive, to keep NAT bindings open (default 15 s; negative
	// disables keepalives).
	Keepalive time.Duration

	// testOnlyRSABits, if set, replaces RSABits and the minimum accepted
	// key size, so tests can use fast 1024-bit keys.
	testOnlyRSABits int
}

// String describes p without its secrets, for logs.
func (p Params) String() string {
	return fmt.Sprintf("secure.Params{Role: %v, Session: %q, LocalName: %q, PeerName: %q, Password: <redacted>, SessionKey: <%d bytes, redacted>, OnlyFrom: %v, RSABits: %d}",
		p.Role, p.Session, p.LocalName, p.PeerName, len(p.SessionKey), p.OnlyFrom, p.RSABits)
}

// GoString is String, so %#v does not print the password either.
func (p Params) GoString() string { return p.String() }

func (p *Params) minBits() int {
	if p.testOnlyRSABits > 0 {
		return p.testOnlyRSABits
	}
	return MinRSABits
}

func (p *Params) keyBits() int {
	switch {
	case p.testOnlyRSABits > 0:
		return p.testOnlyRSABits
	case p.RSABits == 0:
		return DefaultRSABits
	}
	return p.RSABits
}

func durationOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// CheckRSABits reports whether bits is an RSA key size this package uses
// and accepts.
func CheckRSABits(bits int) error { return checkRSABits(bits, MinRSABits) }

// checkRSABits is the one check of the key size policy, for our key and the
// peer's; minBits is MinRSABits except in tests (Params.minBits).
func checkRSABits(bits, minBits int) error {
	if bits < minBits || bits > MaxRSABits {
		return fmt.Errorf("RSA key size %d: must be %d to %d bits", bits, minBits, MaxRSABits)
	}
	return nil
}

func (p *Params) check() error {
	if p.Role != Initiator && p.Role != Responder {
		return fmt.Errorf("secure: invalid role %v", p.Role)
	}
	if len(p.Password) == 0 {
		return errors.New("secure: empty password")
	}
	if err := checkRSABits(p.keyBits(), p.minBits()); err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	if p.RSAKey != nil {
		if err := checkRSABits(p.RSAKey.N.BitLen(), p.minBits()); err != nil {
			return fmt.Errorf("secure: RSAKey: %w", err)
		}
		if p.RSAKey.E != rsaExponent {
			return fmt.Errorf("secure: RSA key exponent %d, want %d", p.RSAKey.E, rsaExponent)
		}
	}
	if p.Timeout < 0 || p.Retransmit < 0 {
		return errors.New("secure: negative timeout")
	}
	return nil
}

const rsaExponent = 65537
