// Package secure authenticates two peers that share a password, agrees on
// session keys, and then carries their datagrams encrypted and
// authenticated.
//
// # Overview (protocol p2pcat v2)
//
// Inputs: the role (initiator or responder: the side whose name sorts first
// initiates), the session name, both peer names, the password, and for a
// registered session the session key's CPace input; none of them leaves
// the machine.
//
// Notation: H = SHA-256; lv(x) = LEB128(len(x)) || x; ref(m) = the first 16
// bytes of H(m) for a whole datagram m; HMAC = HMAC-SHA256; HKDF =
// HKDF-SHA256 (RFC 5869).
//
// # Wire format
//
// One message per UDP datagram, never more than 1200 bytes. Integers are
// big-endian; a variable field has a 2-byte length of 1 to 512; a datagram
// with bytes left over is malformed. The first byte is the type:
//
//	Hello      = 0xE8 | hsid (16) | len (2) | pk_I | Ya (32)
//	Reply      = 0xE9 | hsid (16) | ref(Hello) (16)
//	             | len (2) | pk_R | Yb (32) | len (2) | ct_R | early tag (32)
//	Finish     = 0xEA | hsid (16) | ref(Reply) (16) | len (2) | ct_I | confirm_I (32)
//	Finished   = 0xEB | hsid (16) | ref(Finish) (16) | confirm_R (32)
//	AuthFailed = 0xEC | hsid (16) | ref(Hello as the sender saw it) (16)
//	             | ref(the message that failed verification) (16)
//	Cancel     = 0xED | hsid (16) | ref(Hello) (16) | tag (32)
//	Data       = 0xD0 | counter (8) | AES-256-GCM ciphertext of the payload | tag (16)
//	Keepalive  = 0xD1 | counter (8) | tag (16)
//	DataHead   = 0xD2 | counter (8) | h (1) | protected head (h) | AES-256-GCM ciphertext of the body | tag (16)
//
// hsid is 16 random bytes drawn by the initiator for its Hello. The type
// values avoid the first-byte ranges RFC 7983 gives STUN, ZRTP, DTLS, TURN
// channels and RTP. With 4096-bit keys the largest message, Reply, is 1141
// bytes. A Data or Keepalive packet is sealed with the sender's direction
// key; its nonce is 4 zero bytes || counter and its additional data the
// 9-byte header. The counter starts at 0, grows by one per packet and is
// never reused; the receiver accepts each counter once, within a window of
// 4032 behind the highest it accepted.
//
// # Key exchange
//
// Each side has a fresh RSA key (2048 to 4096 bits, public exponent 65537)
// used for this handshake only; pk is its modulus, big-endian without
// leading zeros. Each side draws a fresh 32-byte secret, secret_I or
// secret_R. The password is bound with CPace (draft-irtf-cfrg-cpace-21,
// CPACE-RISTR255-SHA512, initiator-responder setting, package pipe/cpace):
//
//	PRS = lv(password) || lv(session key input)      (the second empty for an unregistered session)
//	sid = hsid
//	CI  = lv("p2pcat v2") || lv(session name) || lv(initiator name) || lv(responder name)
//	ADa = H(pk_I)            ADb = H(pk_R)
//
// CPace yields the shares Ya, Yb and the 64-byte ISK. Then:
//
//	ct_R      = RSA-OAEP-SHA256(pk_I, secret_R, label "p2pcat v2 secret responder")
//	ct_I      = RSA-OAEP-SHA256(pk_R, secret_I, label "p2pcat v2 secret initiator")
//	K_early   = HKDF(ikm = ISK, salt = hsid, info = "p2pcat v2 early confirm", 32 bytes)
//	early tag = HMAC(K_early, H(Hello || Reply without its tag))
//	T         = H(Hello || Reply || Finish without confirm_I)
//	K_cI || K_cR || K_IR || K_RI || K_hIR || K_hRI
//	          = HKDF(ikm = ISK || secret_I || secret_R, salt = T, info = "p2pcat v2 keys", 192 bytes)
//	confirm_I = HMAC(K_cI, T)
//	confirm_R = HMAC(K_cR, H(Hello || Reply || Finish))
//
// The flow:
//
//	I -> R  Hello    {hsid, pk_I, Ya}
//	R -> I  Reply    {ref(Hello), pk_R, Yb, ct_R, early tag}
//	I -> R  Finish   {ref(Reply), ct_I, confirm_I}
//	R -> I  Finished {ref(Finish), confirm_R}
//
// The initiator checks the early tag before anything else, so a wrong
// password is detected after one round trip, and only then decrypts ct_R.
// The responder checks confirm_I, and the initiator confirm_R; each
// confirmation covers the whole transcript, so any change to a public key,
// share or ciphertext makes it fail. The responder is done when Finish
// verifies; the initiator when Finished verifies, or when an authentic data
// or keepalive packet arrives first (only a responder holding the keys can
// make one).
//
// # One guess, and it shows
//
// The only password-dependent answer a side gives to someone who has not
// proven the password is the responder's Reply (its early tag lets whoever
// sent the Hello test one guess). A handshake therefore answers one Hello,
// the first usable one, and no other for as long as it runs, which is the
// whole connect phase of a run: the pipe keeps the same handshake across
// its punch attempts (the link below changes, the handshake does not), and
// the initiator retransmits the same Hello. When the handshake ends,
// however it ends (timeout, the link closed under it), after a Reply went
// out and no valid Finish came back, it fails with an error matching both
// ErrAuth and ErrUnconfirmed: a handshake was begun and never confirmed,
// which is a wrong password or session key on the other side, or someone
// guessing. The initiator gives nothing password-dependent to an unproven
// peer: it checks the early tag first, and a Reply that fails it ends the
// handshake with ErrAuth.
//
// Rules for an unreliable network:
//
//   - Only the initiator retransmits, on a timer with exponential backoff:
//     Hello until a Reply arrives, then Finish until it is done. The
//     responder only answers: a repeated Hello gets the same Reply, a
//     repeated Finish (also after the handshake, from the Conn) gets the same
//     Finished. Identical datagrams are therefore harmless.
//   - Every answer names the message it answers by ref, and every message
//     carries hsid. Datagrams that do not parse, carry another hsid, or
//     name a message this side did not send are dropped, so stale and stray
//     packets are ignored.
//   - With Params.OnlyFrom (direct mode) every handshake datagram from
//     another address is dropped, so nobody else can take the responder's
//     one answer.
//   - A message that names ours but fails verification (invalid share,
//     wrong tag, undecryptable ciphertext) ends the handshake with ErrAuth.
//     Before returning, the side sends three copies of AuthFailed
//     {ref(Hello), ref(failed message)}; the other side returns ErrAuth when
//     either ref matches a message of its handshake, so both sides fail at
//     once. The notice is unauthenticated: it can only make a handshake
//     fail, never succeed. After the handshake the Conn honours it only until
//     the first authentic packet from the peer. Cancel, sent when the
//     caller gives up (ctx cancelled, not a timeout), works the same way.
//   - A packet from an address other than the current peer's is processed
//     like any other; once a packet authenticates (Reply or Finished for the
//     initiator, Finish for the responder, any data packet later), its source
//     is passed to Link.Confirm.
//
// Afterwards each side drops its RSA private key, the secrets, the CPace
// state, the ISK and the confirmation keys, overwriting the byte slices it
// owns (big.Int values of the RSA key cannot be reliably overwritten).
//
// # Threat model
//
// PROTOCOL.md section 5 has the full table. In short: a passive
// eavesdropper learns neither the password (no offline dictionary attack:
// the CPace shares reveal nothing about it) nor the keys; recorded sessions
// stay secret if the password leaks later (the keys depend on ephemeral
// CPace scalars and RSA keys). An active attacker without the password, the
// rendezvous server included, can deny service and test one password guess
// per run of the victim, and the victim sees it as an authentication
// failure; it cannot make the peers accept a substituted key, share or
// ciphertext, agree on a key it knows, or forge, alter or replay data
// packets. Someone who knows the password (and, for a registered session,
// its key) can impersonate either peer: they are the only credentials.
package secure

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

// Link is the punched path below the secure layer (implemented by
// pipe/path). Send may be called concurrently with Recv and with itself.
type Link interface {
	// Send sends b as one datagram to the peer's current address. It does
	// not retain b.
	Send(b []byte) error
	// Recv reads the next datagram from anyone into buf. It returns an
	// error after Close.
	Recv(buf []byte) (n int, from netip.AddrPort, err error)
	// Confirm reports that a packet from `from` authenticated: the link
	// should use it as the peer's address from now on (peer-reflexive
	// address learning, roaming).
	Confirm(from netip.AddrPort)
	Close() error
}

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

// ErrAuth means the handshake failed authentication. Both sides return it
// (wrapped) when the passwords differ.
var ErrAuth = errors.New("authentication failed: wrong password or someone in the middle")

func authError(reason string) error { return fmt.Errorf("%w (%s)", ErrAuth, reason) }

// ErrUnconfirmed is matched (together with ErrAuth) by the error of a
// responder's handshake that answered a Hello and never received a valid
// Finish: the other side used another password or session key, or someone
// tested a guess (see the package documentation).
var ErrUnconfirmed = errors.New("a handshake was begun and never confirmed: a wrong password or session key on the other side, or someone guessing it")

type unconfirmedError struct{ why string }

func (e unconfirmedError) Error() string {
	return fmt.Sprintf("authentication failed: %v (%s)", ErrUnconfirmed, e.why)
}

func (unconfirmedError) Is(target error) bool { return target == ErrAuth || target == ErrUnconfirmed }

// ErrPeerCancelled means the peer gave the handshake up before it was
// complete (its user interrupted it) and said so with a Cancel notice.
var ErrPeerCancelled = errors.New("the peer gave up the connection before it was complete")

// ErrPeerVersion means the peer speaks protocol version 1 (an older
// p2pcat): its handshake cannot meet ours.
var ErrPeerVersion = errors.New("the peer runs an older p2pcat (protocol version 1); run the same version on both sides")

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
func CheckRSABits(bits int) error {
	if bits < MinRSABits || bits > MaxRSABits {
		return fmt.Errorf("RSA key size %d: must be %d to %d bits", bits, MinRSABits, MaxRSABits)
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
	if bits := p.keyBits(); bits < p.minBits() || bits > MaxRSABits {
		return fmt.Errorf("secure: RSA key size %d outside %d..%d bits", bits, p.minBits(), MaxRSABits)
	}
	if p.RSAKey != nil {
		if bits := p.RSAKey.N.BitLen(); bits < p.minBits() || bits > MaxRSABits {
			return fmt.Errorf("secure: RSA key size %d outside %d..%d bits", bits, p.minBits(), MaxRSABits)
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

var (
	labelSecretI = []byte("p2pcat v2 secret initiator")
	labelSecretR = []byte("p2pcat v2 secret responder")
)

const (
	infoEarly  = "p2pcat v2 early confirm"
	infoCancel = "p2pcat v2 cancel"
	infoKeys   = "p2pcat v2 keys"
)

// Handshake runs the p2pcat v2 handshake over link (see the package
// documentation) and returns the established Conn, which owns link from
// then on: a Handshaker run once until p.Timeout. A failed authentication
// returns an error matching ErrAuth. If ctx ends or the timeout passes
// first, it returns an error wrapping ctx's error (or, for a responder that
// answered a Hello, one matching ErrUnconfirmed), and a link that cannot
// bound its Recv with a deadline is closed to unblock it.
func Handshake(ctx context.Context, link Link, p Params) (*Conn, error) {
	hs, err := NewHandshaker(p)
	if err != nil {
		return nil, err
	}
	conn, err := hs.Run(ctx, link, time.Now().Add(durationOr(p.Timeout, DefaultTimeout)))
	cerr := hs.Close()
	switch {
	case err == nil:
		return conn, nil
	case cerr != nil && ctx.Err() == nil && !errors.Is(err, ErrAuth):
		return nil, cerr // we answered a Hello, and it was never confirmed
	}
	return nil, err
}

// DeadlineLink is a Link that can bound a blocked Recv (pipe/path: the
// socket's read deadline), so that a Handshaker stops at its deadline and
// can go on later over the same link. Over a Link without it, a deadline
// closes the link.
type DeadlineLink interface {
	Link
	SetReadDeadline(t time.Time) error
}

// ErrAttemptTimeout: Run reached its deadline; the handshake may go on
// with another Run. It matches context.DeadlineExceeded.
var ErrAttemptTimeout = fmt.Errorf("secure: handshake timed out: %w", context.DeadlineExceeded)

// Handshaker is one handshake, which may run over several links in turn:
// the pipe runs it over each punch attempt's path until one carries it to
// the end. Its state (the Hello, the one Reply a responder gives, the keys)
// lives as long as the Handshaker, so that every attempt continues the same
// handshake and a responder never answers a second Hello: one password
// guess per run, whatever the attempts. It is used by one goroutine.
type Handshaker struct {
	p      Params
	h      *handshake
	conn   *Conn // the result, once done
	failed error // a terminal failure (authentication, cancel, version)
	closed bool
}

// NewHandshaker checks p, takes (or generates) the RSA key and prepares the
// handshake; an initiator draws its Hello now.
func NewHandshaker(p Params) (*Handshaker, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	key := p.RSAKey
	if key == nil {
		var err error
		if key, err = rsa.GenerateKey(rand.Reader, p.keyBits()); err != nil {
			return nil, fmt.Errorf("secure: generating RSA key: %w", err)
		}
	}
	p.RSAKey = nil // from here on only h.key, which wipe drops
	hs := &Handshaker{p: p}
	hs.h = newHandshake(nil, &hs.p, key)
	if p.Role == Initiator {
		if err := hs.h.makeHello(); err != nil {
			return nil, err
		}
	}
	return hs, nil
}

// Answered reports whether this side (a responder) has answered a Hello
// with its Reply: the one password-dependent answer of the handshake.
func (hs *Handshaker) Answered() bool { return hs.p.Role == Responder && hs.h.reply != nil }

// HasKeys reports whether this side (an initiator) accepted the peer's
// Reply and sent Finish: the path carried both directions, and only the
// peer's confirmation is missing.
func (hs *Handshaker) HasKeys() bool { return hs.p.Role == Initiator && hs.h.fin != nil }

// Run runs the handshake over link until it completes, fails, ctx ends or
// the deadline passes. On success it returns the Conn, which owns link. At
// the deadline it returns ErrAttemptTimeout and the handshake can go on with
// another Run (over this link or another); a link failure (the caller closed
// it) can be resumed the same way. Authentication failures, the peer's
// Cancel and a version 1 peer are final. When ctx ends (the caller gives
// up), the peer is sent a Cancel notice and ctx's error is returned.
func (hs *Handshaker) Run(ctx context.Context, link Link, deadline time.Time) (*Conn, error) {
	switch {
	case hs.closed:
		return nil, errors.New("secure: handshake closed")
	case hs.failed != nil:
		return nil, hs.failed
	case hs.conn != nil:
		return hs.conn, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("secure: handshake: %w", err)
	}
	h := hs.h
	h.link = link
	if h.conn != nil {
		h.conn.setLink(link)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// Link.Recv must come back when the run ends: by a past read deadline
	// where the link has them (the link stays usable), else by closing
	// it. When the caller gave up (ctx, not the deadline, which the peer
	// runs into too), the peer is told first.
	dl, canDeadline := link.(DeadlineLink)
	if canDeadline {
		_ = dl.SetReadDeadline(deadline)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(dctx, func() {
		defer close(fired)
		if ctx.Err() != nil {
			h.sendCancel()
		}
		if canDeadline {
			_ = dl.SetReadDeadline(time.Now())
		} else {
			_ = link.Close()
		}
	})
	var conn *Conn
	var err error
	if hs.p.Role == Initiator {
		conn, err = h.runInitiator()
	} else {
		conn, err = h.runResponder()
	}
	ended := !stop()
	if ended {
		<-fired
	}
	if canDeadline {
		_ = dl.SetReadDeadline(time.Time{})
	}
	switch {
	case err == nil && (!ended || canDeadline):
		hs.conn = conn
		conn.run()
		return conn, nil
	case err == nil:
		// Done, but the link was closed under the Conn meanwhile: there is
		// no session to hand over.
		conn.Close()
		err = h.contextError(dctx)
		if ctx.Err() != nil {
			err = fmt.Errorf("secure: handshake: %w", context.Cause(ctx))
		}
		return nil, err
	case errors.Is(err, ErrAuth), errors.Is(err, ErrPeerCancelled), errors.Is(err, ErrPeerVersion):
		hs.failed = err
		return nil, err
	case ctx.Err() != nil:
		// The caller gave up (interrupted): that is what it wants to hear,
		// whatever else happened.
		return nil, fmt.Errorf("secure: handshake: %w", context.Cause(ctx))
	case dctx.Err() != nil, errors.Is(err, os.ErrDeadlineExceeded):
		// (The link's read deadline can fire a moment before dctx's.)
		return nil, h.timeoutError()
	}
	return nil, err
}

// Close ends the handshake and wipes its secrets (a Conn it made keeps its
// own keys). It returns an error matching ErrUnconfirmed and ErrAuth when
// this side answered a Hello and the handshake never completed: a wrong
// password or session key on the other side, or a guess.
func (hs *Handshaker) Close() error {
	if hs.closed {
		return nil
	}
	answered := hs.Answered()
	hs.h.wipe()
	hs.closed = true
	if hs.conn == nil && answered && !errors.Is(hs.failed, ErrAuth) && !errors.Is(hs.failed, ErrPeerCancelled) {
		// (A Cancel that a responder believes proved the password.)
		return unconfirmedError{"no valid answer to our reply"}
	}
	return nil
}

// handshake is the state of one side. It is used by one goroutine, except
// for send, which the initiator's resender also calls.
type handshake struct {
	p         *Params
	link      Link
	key       *rsa.PrivateKey
	pk        []byte // our modulus, as sent
	ci, prs   []byte
	buf       [maxDatagram + 1]byte
	resend    *resender
	sendMu    sync.Mutex
	sendErr   error  // the last Send error, reported if the handshake times out
	helloRef  *ref   // ref(Hello) once there is one, for a Cancel notice (guarded by sendMu)
	cancelKey []byte // K_cancel once there is an ISK (guarded by sendMu)
	id        handshakeID

	// The transcript: whole datagrams, in order, once sent or accepted.
	hello, reply, fin, finished []byte

	cpace        *cpace.State // initiator, between Hello and Reply
	isk          []byte       // responder, between Hello and Finish
	secretR      [32]byte     // responder, between Hello and Finish
	wantConfirmR []byte       // initiator, between Finish and Finished
	conn         *Conn        // initiator, between Finish and Finished
}

func newHandshake(link Link, p *Params, key *rsa.PrivateKey) *handshake {
	h := &handshake{p: p, link: link, key: key, pk: key.N.Bytes()}
	initiatorName, responderName := p.LocalName, p.PeerName
	if p.Role == Responder {
		initiatorName, responderName = p.PeerName, p.LocalName
	}
	for _, s := range []string{"p2pcat v2", p.Session, initiatorName, responderName} {
		h.ci = appendLV(h.ci, []byte(s))
	}
	h.prs = appendLV(appendLV(nil, p.Password), p.SessionKey)
	return h
}

func appendLV(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func (h *handshake) send(b []byte) {
	if err := h.link.Send(b); err != nil {
		// Datagrams get lost anyway; retransmission covers a failed send.
		h.sendMu.Lock()
		h.sendErr = err
		h.sendMu.Unlock()
	}
}

// setHello records the Hello of this handshake (sent or answered).
func (h *handshake) setHello(hello []byte) {
	r := refOf(hello)
	h.sendMu.Lock()
	h.helloRef = &r
	h.sendMu.Unlock()
}

// sendCancel tells the peer, with copies in case some are lost, that we
// give the handshake up. Before there is a Hello there is nothing the peer
// could check a notice against, and nothing is sent.
func (h *handshake) sendCancel() {
	h.sendMu.Lock()
	r, id, key := h.helloRef, h.id, h.cancelKey
	m := cancel{id: id}
	if r != nil {
		m.hello = *r
		if key != nil {
			copy(m.tag[:], mac(key, r[:]))
		}
	}
	h.sendMu.Unlock()
	if r == nil {
		return
	}
	b := m.marshal()
	for range noticeCopies {
		_ = h.link.Send(b)
	}
}

// setCancelKey derives K_cancel from the ISK, for Cancel notices.
func (h *handshake) setCancelKey(isk []byte) error {
	k, err := hkdf.Key(sha256.New, isk, h.id[:], infoCancel, 32)
	if err != nil {
		return fmt.Errorf("secure: hkdf: %w", err)
	}
	h.sendMu.Lock()
	h.cancelKey = k
	h.sendMu.Unlock()
	return nil
}

// cancelMatches reports whether pkt is a Cancel notice for this handshake
// that we may believe: once we hold K_cancel (a responder that answered, an
// initiator that accepted the Reply), only with its tag, which only a
// holder of the password can make; a responder's answer is thus never
// written off as an interruption by someone who only guessed. Before, an
// initiator takes any Cancel that names its Hello (it has given nothing
// away: at worst, a denial of service by someone who saw the Hello).
func (h *handshake) cancelMatches(pkt []byte) bool {
	m, err := parseCancel(pkt)
	if err != nil || h.hello == nil || m.id != h.id || m.hello != refOf(h.hello) {
		return false
	}
	h.sendMu.Lock()
	key := h.cancelKey
	h.sendMu.Unlock()
	if key != nil {
		return hmac.Equal(m.tag[:], mac(key, m.hello[:]))
	}
	return h.p.Role == Initiator
}

// recv returns the next handshake datagram: from the one allowed address
// when there is one (Params.OnlyFrom), and never a version 1 handshake
// message, which fails the handshake when it comes from that address.
func (h *handshake) recv() ([]byte, netip.AddrPort, error) {
	for {
		n, from, err := h.link.Recv(h.buf[:])
		if err != nil {
			return nil, from, fmt.Errorf("secure: handshake: %w", err)
		}
		if n == 0 || n > maxDatagram {
			continue
		}
		pkt := h.buf[:n]
		if h.p.OnlyFrom.IsValid() && from != h.p.OnlyFrom {
			if pkt[0] < typeData || pkt[0] > typeDataHead { // data packets authenticate themselves
				continue
			}
		}
		if isV1Handshake(pkt) {
			if h.p.OnlyFrom.IsValid() {
				return nil, from, fmt.Errorf("%w (it answered from %s)", ErrPeerVersion, from)
			}
			continue
		}
		return pkt, from, nil
	}
}

func (h *handshake) contextError(ctx context.Context) error {
	if err := context.Cause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("secure: handshake: %w", err)
	}
	return h.timeoutError()
}

// timeoutError is the error of a handshake run that reached its deadline.
func (h *handshake) timeoutError() error {
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	if h.sendErr != nil {
		return attemptTimeout(fmt.Sprintf("secure: handshake timed out (last send error: %v)", h.sendErr))
	}
	return attemptTimeout("secure: handshake timed out, no answer from the peer")
}

// attemptTimeout is Run's error at its deadline: it matches
// ErrAttemptTimeout and context.DeadlineExceeded.
type attemptTimeout string

func (e attemptTimeout) Error() string { return string(e) + ": " + context.DeadlineExceeded.Error() }

func (attemptTimeout) Is(target error) bool {
	return target == ErrAttemptTimeout || target == context.DeadlineExceeded
}

// wipe drops every secret the handshake held.
func (h *handshake) wipe() {
	h.key = nil
	h.cpace = nil
	clear(h.isk)
	clear(h.secretR[:])
	clear(h.wantConfirmR)
	clear(h.buf[:])
	clear(h.prs)
	h.sendMu.Lock()
	clear(h.cancelKey)
	h.cancelKey = nil
	h.sendMu.Unlock()
	h.isk, h.wantConfirmR, h.prs = nil, nil, nil
}

// makeHello draws the handshake id and the initiator's CPace share and
// builds the Hello, once per handshake: every Run sends the same one.
func (h *handshake) makeHello() error {
	var id handshakeID
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	h.sendMu.Lock()
	h.id = id
	h.sendMu.Unlock()
	st, ya, err := cpace.Start(h.prs, h.ci, h.id[:], adOf(h.pk), rand.Reader)
	if err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	h.cpace = st
	m := hello{id: h.id, pk: h.pk}
	copy(m.ya[:], ya)
	h.hello = m.marshal()
	h.setHello(h.hello)
	return nil
}

// runInitiator sends the current message (Hello, or Finish once a Reply
// was accepted), retransmits it, and processes answers until done.
func (h *handshake) runInitiator() (*Conn, error) {
	current := h.hello
	if h.fin != nil {
		current = h.fin
	}
	first := durationOr(h.p.Retransmit, DefaultRetransmit)
	h.resend = startResender(h.send, first, retransmitBackoff*first)
	defer h.resend.stop()
	h.send(current)
	h.resend.set(current)

	for {
		pkt, from, err := h.recv()
		if err != nil {
			return nil, err
		}
		switch pkt[0] {
		case typeReply:
			if h.reply != nil {
				if bytes.Equal(pkt, h.reply) {
					h.send(h.fin) // the responder did not get our Finish
				}
				continue
			}
			m, err := parseReply(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.hello) {
				continue
			}
			if err := h.acceptReply(m, pkt, from); err != nil {
				return nil, err
			}
			h.resend.set(h.fin)
		case typeFinished:
			if h.fin == nil {
				continue
			}
			m, err := parseFinished(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.fin) {
				continue
			}
			if !hmac.Equal(m.tag[:], h.wantConfirmR) {
				h.notify(pkt)
				return nil, authError("the responder's key confirmation did not verify")
			}
			h.conn.confirmPeer(from)
			return h.conn, nil
		case typeData, typeDataHead, typeKeepalive:
			if h.conn != nil && h.conn.acceptEarly(pkt, from) {
				return h.conn, nil
			}
		case typeAuthFailed:
			if h.noticeMatches(pkt) {
				return nil, authError("the responder rejected the handshake")
			}
		case typeCancel:
			if h.cancelMatches(pkt) {
				return nil, ErrPeerCancelled
			}
		}
	}
}

// acceptReply verifies a Reply that names our Hello and answers it with
// Finish. Every failure here is an authentication failure: the Reply claims
// to answer us.
func (h *handshake) acceptReply(m *reply, pkt []byte, from netip.AddrPort) error {
	isk, err := h.cpace.Finish(m.yb[:], adOf(m.pk), cpace.Initiator)
	if err != nil {
		h.notify(pkt)
		return authError("the responder's CPace share is invalid")
	}
	h.cpace = nil
	defer clear(isk)
	want, err := earlyTag(isk, h.id, h.hello, pkt[:len(pkt)-tagSize])
	if err != nil {
		return err
	}
	if !hmac.Equal(m.tag[:], want) {
		h.notify(pkt)
		return authError("the responder's early confirmation did not verify")
	}
	if err := h.setCancelKey(isk); err != nil {
		return err
	}
	// The responder knows the password: from here on it is authenticated.
	h.link.Confirm(from)
	peerKey, err := parsePublicKey(m.pk, h.p.minBits())
	if err != nil {
		return fmt.Errorf("secure: responder's %w", err)
	}
	var secretI, secretR [32]byte
	defer clear(secretI[:])
	defer clear(secretR[:])
	sr, err := rsa.DecryptOAEP(sha256.New(), nil, h.key, m.ct, labelSecretR)
	if err != nil || len(sr) != len(secretR) {
		h.notify(pkt)
		return authError("cannot decrypt the responder's secret")
	}
	copy(secretR[:], sr)
	clear(sr)
	if _, err := rand.Read(secretI[:]); err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, peerKey, secretI[:], labelSecretI)
	if err != nil {
		return fmt.Errorf("secure: encrypting to the responder's key: %w", err)
	}

	h.reply = bytes.Clone(pkt)
	f := finish{id: h.id, ref: refOf(h.reply), ct: ct}
	untagged := f.marshalUntagged()
	t := transcriptHash(h.hello, h.reply, untagged)
	keys, err := deriveKeys(isk, secretI[:], secretR[:], t[:])
	if err != nil {
		return err
	}
	defer keys.wipe()
	copy(f.tag[:], mac(keys.confirmI, t[:]))
	h.fin = f.marshal()
	full := transcriptHash(h.hello, h.reply, h.fin)
	h.wantConfirmR = mac(keys.confirmR, full[:])

	h.conn, err = newConn(h.link, h.id, dirKeys{keys.initiatorToResponder, keys.headIR}, dirKeys{keys.responderToInitiator, keys.headRI}, from, h.keepalive())
	if err != nil {
		return err
	}
	h.conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin)}
	h.conn.cancelKey = bytes.Clone(h.cancelKey)
	h.send(h.fin)
	return nil
}

func (h *handshake) runResponder() (*Conn, error) {
	for {
		pkt, from, err := h.recv()
		if err != nil {
			return nil, err
		}
		switch pkt[0] {
		case typeHello:
			if h.hello != nil {
				// Only the first Hello is answered: one guess per handshake.
				if bytes.Equal(pkt, h.hello) {
					h.send(h.reply) // the initiator did not get our Reply
				}
				continue
			}
			m, err := parseHello(pkt)
			if err != nil {
				continue
			}
			if err := h.answerHello(m, pkt); err != nil {
				return nil, err
			}
		case typeFinish:
			if h.reply == nil {
				continue
			}
			m, err := parseFinish(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.reply) {
				continue
			}
			return h.acceptFinish(m, pkt, from)
		case typeAuthFailed:
			if h.noticeMatches(pkt) {
				return nil, authError("the initiator rejected the handshake")
			}
		case typeCancel:
			if h.cancelMatches(pkt) {
				return nil, ErrPeerCancelled
			}
		}
	}
}

// answerHello answers the first valid Hello with a Reply. A Hello is not
// authenticated, so one that is unusable (bad key, invalid share) is
// dropped, not treated as an attack; only local failures return an error.
func (h *handshake) answerHello(m *hello, pkt []byte) error {
	peerKey, err := parsePublicKey(m.pk, h.p.minBits())
	if err != nil {
		return nil
	}
	st, yb, err := cpace.Start(h.prs, h.ci, m.id[:], adOf(h.pk), rand.Reader)
	if err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	isk, err := st.Finish(m.ya[:], adOf(m.pk), cpace.Responder)
	if err != nil {
		return nil
	}
	if _, err := rand.Read(h.secretR[:]); err != nil {
		clear(isk)
		return fmt.Errorf("secure: %w", err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, peerKey, h.secretR[:], labelSecretR)
	if err != nil {
		clear(isk)
		return fmt.Errorf("secure: encrypting to the initiator's key: %w", err)
	}
	h.sendMu.Lock()
	h.id = m.id
	h.sendMu.Unlock()
	h.hello = bytes.Clone(pkt)
	h.setHello(h.hello)
	h.isk = isk
	if err := h.setCancelKey(isk); err != nil {
		return err
	}
	r := reply{id: h.id, ref: refOf(h.hello), pk: h.pk, ct: ct}
	copy(r.yb[:], yb)
	tag, err := earlyTag(isk, h.id, h.hello, r.marshalUntagged())
	if err != nil {
		return err
	}
	copy(r.tag[:], tag)
	h.reply = r.marshal()
	h.send(h.reply)
	return nil
}

// acceptFinish verifies a Finish that names our Reply; success completes
// the responder's handshake.
func (h *handshake) acceptFinish(m *finish, pkt []byte, from netip.AddrPort) (*Conn, error) {
	var secretI [32]byte
	defer clear(secretI[:])
	si, err := rsa.DecryptOAEP(sha256.New(), nil, h.key, m.ct, labelSecretI)
	if err != nil || len(si) != len(secretI) {
		h.notify(pkt)
		return nil, authError("cannot decrypt the initiator's secret")
	}
	copy(secretI[:], si)
	clear(si)
	t := transcriptHash(h.hello, h.reply, pkt[:len(pkt)-tagSize])
	keys, err := deriveKeys(h.isk, secretI[:], h.secretR[:], t[:])
	if err != nil {
		return nil, err
	}
	defer keys.wipe()
	if !hmac.Equal(m.tag[:], mac(keys.confirmI, t[:])) {
		h.notify(pkt)
		return nil, authError("the initiator's key confirmation did not verify")
	}
	h.link.Confirm(from)

	h.fin = bytes.Clone(pkt)
	full := transcriptHash(h.hello, h.reply, h.fin)
	fd := finished{id: h.id, ref: refOf(h.fin)}
	copy(fd.tag[:], mac(keys.confirmR, full[:]))
	h.finished = fd.marshal()

	conn, err := newConn(h.link, h.id, dirKeys{keys.responderToInitiator, keys.headRI}, dirKeys{keys.initiatorToResponder, keys.headIR}, from, h.keepalive())
	if err != nil {
		return nil, err
	}
	conn.finished = h.finished
	conn.finishHash = sha256.Sum256(h.fin)
	conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin), refOf(h.finished)}
	conn.cancelKey = bytes.Clone(h.cancelKey)
	h.send(h.finished)
	return conn, nil
}

func (h *handshake) keepalive() time.Duration { return durationOr(h.p.Keepalive, DefaultKeepalive) }

// notify tells the peer that the message failed verification, so it fails
// too instead of waiting for its timeout.
func (h *handshake) notify(failed []byte) {
	n := authFailed{id: h.id, failed: refOf(failed)}
	if h.hello != nil {
		n.hello = refOf(h.hello)
	} else {
		n.hello = refOf(failed) // the responder rejects nothing before Hello
	}
	b := n.marshal()
	for range noticeCopies {
		h.send(b)
	}
}

// noticeMatches reports whether pkt is an AuthFailed notice about this
// handshake: one of its refs names a message we sent or accepted.
func (h *handshake) noticeMatches(pkt []byte) bool {
	m, err := parseAuthFailed(pkt)
	if err != nil || h.hello == nil || m.id != h.id {
		return false
	}
	for _, msg := range [][]byte{h.hello, h.reply, h.fin, h.finished} {
		if msg == nil {
			continue
		}
		if r := refOf(msg); r == m.hello || r == m.failed {
			return true
		}
	}
	return false
}

// adOf is CPace's associated data for a side: the hash of its RSA public
// key, so the ISK binds both keys.
func adOf(pk []byte) []byte {
	sum := sha256.Sum256(pk)
	return sum[:]
}

// parsePublicKey checks a peer's modulus against the key-size policy.
func parsePublicKey(pk []byte, minBits int) (*rsa.PublicKey, error) {
	if len(pk) == 0 || pk[0] == 0 {
		return nil, errors.New("RSA modulus is not minimally encoded")
	}
	n := new(big.Int).SetBytes(pk)
	if bits := n.BitLen(); bits < minBits || bits > MaxRSABits {
		return nil, fmt.Errorf("RSA key has %d bits, want %d..%d", bits, minBits, MaxRSABits)
	}
	if n.Bit(0) == 0 {
		return nil, errors.New("RSA modulus is even")
	}
	return &rsa.PublicKey{N: n, E: rsaExponent}, nil
}

func transcriptHash(parts ...[]byte) [sha256.Size]byte {
	d := sha256.New()
	for _, p := range parts {
		d.Write(p)
	}
	var sum [sha256.Size]byte
	d.Sum(sum[:0])
	return sum
}

func mac(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func earlyTag(isk []byte, id handshakeID, hello, replyUntagged []byte) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, isk, id[:], infoEarly, 32)
	if err != nil {
		return nil, fmt.Errorf("secure: hkdf: %w", err)
	}
	defer clear(k)
	t := transcriptHash(hello, replyUntagged)
	return mac(k, t[:]), nil
}

type sessionKeys struct {
	all                                        []byte
	confirmI, confirmR                         []byte
	initiatorToResponder, responderToInitiator []byte
	headIR, headRI                             []byte // DataHead head protection (conn.go)
}

func deriveKeys(isk, secretI, secretR, transcript []byte) (*sessionKeys, error) {
	ikm := make([]byte, 0, len(isk)+len(secretI)+len(secretR))
	ikm = append(append(append(ikm, isk...), secretI...), secretR...)
	defer clear(ikm)
	// HKDF-Expand's output is prefix-stable: the head protection keys
	// follow the first four keys without changing them.
	all, err := hkdf.Key(sha256.New, ikm, transcript, infoKeys, 6*32)
	if err != nil {
		return nil, fmt.Errorf("secure: hkdf: %w", err)
	}
	return &sessionKeys{
		all:                  all,
		confirmI:             all[0:32],
		confirmR:             all[32:64],
		initiatorToResponder: all[64:96],
		responderToInitiator: all[96:128],
		headIR:               all[128:160],
		headRI:               all[160:192],
	}, nil
}

func (k *sessionKeys) wipe() { clear(k.all) }

// resender retransmits the initiator's current message on a timer that
// doubles after each retransmission and restarts when the message changes.
// Its goroutine is owned by the handshake, which stops it before returning.
type resender struct {
	send       func([]byte)
	first, max time.Duration
	mu         sync.Mutex
	msg        []byte
	kick       chan struct{}
	done       chan struct{}
	wg         sync.WaitGroup
}

func startResender(send func([]byte), first, max time.Duration) *resender {
	r := &resender{send: send, first: first, max: max, kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.wg.Add(1)
	go r.routine()
	return r
}

// set makes msg the message to retransmit, starting from the first delay.
func (r *resender) set(msg []byte) {
	r.mu.Lock()
	r.msg = msg
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *resender) stop() {
	close(r.done)
	r.wg.Wait()
}

func (r *resender) routine() {
	defer r.wg.Done()
	delay := r.first
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-r.kick:
			delay = r.first
			t.Reset(delay)
		case <-t.C:
			r.mu.Lock()
			msg := r.msg
			r.mu.Unlock()
			if msg != nil {
				r.send(msg)
			}
			delay = min(2*delay, r.max)
			t.Reset(delay)
		}
	}
}
