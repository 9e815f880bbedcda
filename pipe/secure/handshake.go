// Package secure authenticates two peers that share a password, agrees on
// session keys, and then carries their datagrams encrypted and
// authenticated.
//
// # Overview (protocol p2pcat v1)
//
// Inputs, from the rendezvous: the role (initiator or responder), the 16-byte
// pairing id, the session name, both peer names, and the password, which never
// leaves the machine.
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
//	Hello      = 0xE1 | pairing id (16) | len (2) | pk_I | Ya (32)
//	Reply      = 0xE2 | pairing id (16) | ref(Hello) (16)
//	             | len (2) | pk_R | Yb (32) | len (2) | ct_R | early tag (32)
//	Finish     = 0xE3 | pairing id (16) | ref(Reply) (16) | len (2) | ct_I | confirm_I (32)
//	Finished   = 0xE4 | pairing id (16) | ref(Finish) (16) | confirm_R (32)
//	AuthFailed = 0xE5 | pairing id (16) | ref(Hello as the sender saw it) (16)
//	             | ref(the message that failed verification) (16)
//	Data       = 0xD0 | counter (8) | AES-256-GCM ciphertext of the payload | tag (16)
//	Keepalive  = 0xD1 | counter (8) | tag (16)
//	DataHead   = 0xD2 | counter (8) | h (1) | protected head (h) | AES-256-GCM ciphertext of the body | tag (16)
//
// The type values avoid the first-byte ranges RFC 7983 gives STUN, ZRTP,
// DTLS, TURN channels and RTP. With 4096-bit keys the largest message,
// Reply, is 1125 bytes. A Data or Keepalive packet is sealed with the
// sender's direction key; its nonce is 4 zero bytes || counter and its
// additional data the 9-byte header. The counter starts at 0, grows by one
// per packet and is never reused; the receiver accepts each counter once,
// within a window of 4032 behind the highest it accepted.
//
// # Key exchange
//
// Each side has a fresh RSA key (2048 to 4096 bits, public exponent 65537)
// used for this handshake only; pk is its modulus, big-endian without
// leading zeros. Each side draws a fresh 32-byte secret, secret_I or
// secret_R. The password is bound with CPace (draft-irtf-cfrg-cpace-21,
// CPACE-RISTR255-SHA512, initiator-responder setting, package pipe/cpace):
//
//	PRS = password
//	sid = pairing id
//	CI  = lv("p2pcat v1") || lv(session name) || lv(initiator name) || lv(responder name)
//	ADa = H(pk_I)            ADb = H(pk_R)
//
// CPace yields the shares Ya, Yb and the 64-byte ISK. Then:
//
//	ct_R      = RSA-OAEP-SHA256(pk_I, secret_R, label "p2pcat v1 secret responder")
//	ct_I      = RSA-OAEP-SHA256(pk_R, secret_I, label "p2pcat v1 secret initiator")
//	K_early   = HKDF(ikm = ISK, salt = pairing id, info = "p2pcat v1 early confirm", 32 bytes)
//	early tag = HMAC(K_early, H(Hello || Reply without its tag))
//	T         = H(Hello || Reply || Finish without confirm_I)
//	K_cI || K_cR || K_IR || K_RI || K_hIR || K_hRI
//	          = HKDF(ikm = ISK || secret_I || secret_R, salt = T, info = "p2pcat v1 keys", 192 bytes)
//	confirm_I = HMAC(K_cI, T)
//	confirm_R = HMAC(K_cR, H(Hello || Reply || Finish))
//
// T is the whole transcript except the confirmation that is computed from
// it. K_IR is the AES-256-GCM key for initiator-to-responder data, K_RI for
// the other direction (see Wire format).
//
// The flow:
//
//	I -> R  Hello    {pk_I, Ya}
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
// Rules for an unreliable network:
//
//   - Only the initiator retransmits, on a timer with exponential backoff:
//     Hello until a Reply arrives, then Finish until it is done. The
//     responder only answers: a repeated Hello gets the same Reply, a
//     repeated Finish (also after the handshake, from the Conn) gets the same
//     Finished. Identical datagrams are therefore harmless.
//   - Every answer names the message it answers by ref. Datagrams that do
//     not parse, carry another pairing id, or name a message this side did
//     not send are dropped, so stale and stray packets are ignored.
//   - The responder answers only the first Hello; a different one is
//     dropped. So a handshake gives an active attacker at most one password
//     guess.
//   - A message that names ours but fails verification (invalid share,
//     wrong tag, undecryptable ciphertext) ends the handshake with ErrAuth.
//     Before returning, the side sends three copies of AuthFailed
//     {ref(Hello), ref(failed message)}; the other side returns ErrAuth when
//     either ref matches a message of its handshake, so both sides fail at
//     once. The notice is unauthenticated: it can only make a handshake
//     fail, never succeed. After the handshake the Conn honours it only until
//     the first authentic packet from the peer.
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
// A passive eavesdropper sees the pairing id, the RSA public keys, the CPace
// shares, the ciphertexts, the tags, and the sizes and timing of all
// packets. It learns neither the password (the CPace shares reveal nothing
// about it and permit no offline dictionary attack) nor the session keys,
// and cannot read data. Recorded sessions stay secret if the password leaks
// later, because the keys also depend on the ephemeral CPace scalars and RSA
// keys, which are discarded.
//
// An active man in the middle who does not know the password can drop,
// delay, reorder, replay and inject packets, so it can always deny service,
// including by forging AuthFailed notices for a handshake it observed. It can
// test one password guess per handshake by playing one end of CPace; a wrong
// guess makes the honest peer fail with ErrAuth. It cannot make either peer
// accept a substituted public key, share or ciphertext, cannot make the
// peers agree on a key it knows, and cannot forge, alter or replay data
// packets (they are dropped and counted).
//
// A malicious rendezvous server knows the pairing id, the names and both
// addresses, and assigns the roles, but never sees the password. It can act
// as the man in the middle above (one online guess per pairing, visible as
// ErrAuth). If it tells the peers different names or session names, CI
// differs and the handshake fails with ErrAuth; if it gives both peers the
// same role, the handshake times out. It cannot learn the session keys or
// the data.
//
// Someone who knows the password can impersonate either peer: the password
// is the only credential.
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

// Role is this side's part in the handshake, assigned by the rendezvous:
// the Initiator speaks first and retransmits, the Responder answers. It is
// CPace's role, since the CPace transcript orders the shares by it.
type Role = cpace.Role

const (
	Initiator = cpace.Initiator
	Responder = cpace.Responder
)

// ErrAuth means the handshake failed authentication. Both sides return it
// (wrapped) when the passwords differ.
var ErrAuth = errors.New("authentication failed: wrong password or someone in the middle")

func authError(reason string) error { return fmt.Errorf("%w (%s)", ErrAuth, reason) }

// ErrPeerCancelled means the peer gave the handshake up before it was
// complete (its user interrupted it) and said so with a Cancel notice.
var ErrPeerCancelled = errors.New("the peer gave up the connection before it was complete")

// Defaults for Params' zero values.
const (
	DefaultRSABits    = 2048
	DefaultTimeout    = 20 * time.Second
	DefaultRetransmit = 250 * time.Millisecond
	DefaultKeepalive  = 15 * time.Second

	minRSABits = 2048
	maxRSABits = 4096
	// retransmitBackoff caps the retransmit delay at this multiple of the
	// first one.
	retransmitBackoff = 8
	// noticeCopies is how many AuthFailed notices are sent, so that one
	// usually survives a lossy path.
	noticeCopies = 3
)

// Params configures Handshake.
type Params struct {
	Role      Role
	PairingID [16]byte
	// Session is the session name; LocalName and PeerName are this side's
	// and the peer's names. All three are bound into the key: both sides
	// must see the same values.
	Session, LocalName, PeerName string
	// Password is the shared secret. It is never logged nor put in errors,
	// and Handshake keeps no copy.
	Password []byte
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
	return fmt.Sprintf("secure.Params{Role: %v, PairingID: %x, Session: %q, LocalName: %q, PeerName: %q, Password: <redacted>, RSABits: %d}",
		p.Role, p.PairingID, p.Session, p.LocalName, p.PeerName, p.RSABits)
}

// GoString is String, so %#v does not print the password either.
func (p Params) GoString() string { return p.String() }

func (p *Params) minBits() int {
	if p.testOnlyRSABits > 0 {
		return p.testOnlyRSABits
	}
	return minRSABits
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

func (p *Params) check() error {
	if p.Role != Initiator && p.Role != Responder {
		return fmt.Errorf("secure: invalid role %v", p.Role)
	}
	if len(p.Password) == 0 {
		return errors.New("secure: empty password")
	}
	if bits := p.keyBits(); bits < p.minBits() || bits > maxRSABits {
		return fmt.Errorf("secure: RSA key size %d outside %d..%d bits", bits, p.minBits(), maxRSABits)
	}
	if p.RSAKey != nil {
		if bits := p.RSAKey.N.BitLen(); bits < p.minBits() || bits > maxRSABits {
			return fmt.Errorf("secure: RSA key size %d outside %d..%d bits", bits, p.minBits(), maxRSABits)
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
	labelSecretI = []byte("p2pcat v1 secret initiator")
	labelSecretR = []byte("p2pcat v1 secret responder")
)

const (
	infoEarly = "p2pcat v1 early confirm"
	infoKeys  = "p2pcat v1 keys"
)

// Handshake runs the p2pcat v1 handshake over link (see the package
// documentation) and returns the established Conn, which owns link from
// then on. A failed authentication returns an error matching ErrAuth. If
// ctx ends or the timeout passes first, Handshake closes link to unblock
// its Recv and returns an error wrapping ctx's error; after other errors the
// link is left open for the caller to close.
func Handshake(ctx context.Context, link Link, p Params) (*Conn, error) {
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

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, durationOr(p.Timeout, DefaultTimeout))
	defer cancel()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("secure: handshake: %w", err)
	}
	h := newHandshake(link, &p, key)
	// Link.Recv has no deadline: closing the link is the only way to
	// unblock it when ctx ends. When the caller gave up (not the timeout,
	// which the peer runs into too), the peer is told first.
	stopClosing := context.AfterFunc(ctx, func() {
		if parent.Err() != nil {
			h.sendCancel()
		}
		_ = link.Close()
	})

	var conn *Conn
	var err error
	if p.Role == Initiator {
		conn, err = h.runInitiator()
	} else {
		conn, err = h.runResponder()
	}
	h.wipe()
	if !stopClosing() {
		// ctx ended and the link is closed, whatever the loop returned.
		if err == nil || !errors.Is(err, ErrAuth) {
			err = h.contextError(ctx)
		}
	}
	if err != nil {
		return nil, err
	}
	conn.run()
	return conn, nil
}

// handshake is the state of one side. It is used by one goroutine, except
// for send, which the initiator's resender also calls.
type handshake struct {
	p        *Params
	link     Link
	key      *rsa.PrivateKey
	pk       []byte // our modulus, as sent
	ci       []byte
	buf      [maxDatagram + 1]byte
	resend   *resender
	sendMu   sync.Mutex
	sendErr  error // the last Send error, reported if the handshake times out
	helloRef *ref  // ref(Hello) once there is one, for a Cancel notice (guarded by sendMu)

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
	for _, s := range []string{"p2pcat v1", p.Session, initiatorName, responderName} {
		h.ci = binary.AppendUvarint(h.ci, uint64(len(s)))
		h.ci = append(h.ci, s...)
	}
	return h
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
	r := h.helloRef
	h.sendMu.Unlock()
	if r == nil {
		return
	}
	b := (&cancel{pairing: h.p.PairingID, hello: *r}).marshal()
	for range noticeCopies {
		_ = h.link.Send(b)
	}
}

// cancelMatches reports whether pkt is a Cancel notice for this handshake.
func (h *handshake) cancelMatches(pkt []byte) bool {
	m, err := parseCancel(pkt)
	return err == nil && h.hello != nil && m.pairing == h.p.PairingID && m.hello == refOf(h.hello)
}

func (h *handshake) recv() ([]byte, netip.AddrPort, error) {
	for {
		n, from, err := h.link.Recv(h.buf[:])
		if err != nil {
			return nil, from, fmt.Errorf("secure: handshake: %w", err)
		}
		if n > 0 && n <= maxDatagram {
			return h.buf[:n], from, nil
		}
	}
}

func (h *handshake) contextError(ctx context.Context) error {
	err := context.Cause(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("secure: handshake: %w", err)
	}
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	if h.sendErr != nil {
		return fmt.Errorf("secure: handshake timed out (last send error: %v): %w", h.sendErr, err)
	}
	return fmt.Errorf("secure: handshake timed out, no answer from the peer: %w", err)
}

// wipe drops every secret the handshake held.
func (h *handshake) wipe() {
	h.key = nil
	h.cpace = nil
	clear(h.isk)
	clear(h.secretR[:])
	clear(h.wantConfirmR)
	clear(h.buf[:])
	h.isk, h.wantConfirmR = nil, nil
}

func (h *handshake) runInitiator() (*Conn, error) {
	st, ya, err := cpace.Start(h.p.Password, h.ci, h.p.PairingID[:], adOf(h.pk), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	h.cpace = st
	m := hello{pairing: h.p.PairingID, pk: h.pk}
	copy(m.ya[:], ya)
	h.hello = m.marshal()
	h.setHello(h.hello)

	first := durationOr(h.p.Retransmit, DefaultRetransmit)
	h.resend = startResender(h.send, first, retransmitBackoff*first)
	defer h.resend.stop()
	h.send(h.hello)
	h.resend.set(h.hello)

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
			if err != nil || m.pairing != h.p.PairingID || m.ref != refOf(h.hello) {
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
			if err != nil || m.pairing != h.p.PairingID || m.ref != refOf(h.fin) {
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
	want, err := earlyTag(isk, h.p.PairingID, h.hello, pkt[:len(pkt)-tagSize])
	if err != nil {
		return err
	}
	if !hmac.Equal(m.tag[:], want) {
		h.notify(pkt)
		return authError("the responder's early confirmation did not verify")
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
	f := finish{pairing: h.p.PairingID, ref: refOf(h.reply), ct: ct}
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

	h.conn, err = newConn(h.link, h.p.PairingID, dirKeys{keys.initiatorToResponder, keys.headIR}, dirKeys{keys.responderToInitiator, keys.headRI}, from, h.keepalive())
	if err != nil {
		return err
	}
	h.conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin)}
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
			if err != nil || m.pairing != h.p.PairingID {
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
			if err != nil || m.pairing != h.p.PairingID || m.ref != refOf(h.reply) {
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
	st, yb, err := cpace.Start(h.p.Password, h.ci, h.p.PairingID[:], adOf(h.pk), rand.Reader)
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
	h.hello = bytes.Clone(pkt)
	h.setHello(h.hello)
	h.isk = isk
	r := reply{pairing: h.p.PairingID, ref: refOf(h.hello), pk: h.pk, ct: ct}
	copy(r.yb[:], yb)
	tag, err := earlyTag(isk, h.p.PairingID, h.hello, r.marshalUntagged())
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
	fd := finished{pairing: h.p.PairingID, ref: refOf(h.fin)}
	copy(fd.tag[:], mac(keys.confirmR, full[:]))
	h.finished = fd.marshal()

	conn, err := newConn(h.link, h.p.PairingID, dirKeys{keys.responderToInitiator, keys.headRI}, dirKeys{keys.initiatorToResponder, keys.headIR}, from, h.keepalive())
	if err != nil {
		return nil, err
	}
	conn.finished = h.finished
	conn.finishHash = sha256.Sum256(h.fin)
	conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin), refOf(h.finished)}
	h.send(h.finished)
	return conn, nil
}

func (h *handshake) keepalive() time.Duration { return durationOr(h.p.Keepalive, DefaultKeepalive) }

// notify tells the peer that the message failed verification, so it fails
// too instead of waiting for its timeout.
func (h *handshake) notify(failed []byte) {
	n := authFailed{pairing: h.p.PairingID, failed: refOf(failed)}
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
	if err != nil || m.pairing != h.p.PairingID {
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
	if bits := n.BitLen(); bits < minBits || bits > maxRSABits {
		return nil, fmt.Errorf("RSA key has %d bits, want %d..%d", bits, minBits, maxRSABits)
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

func earlyTag(isk []byte, pairing pairingID, hello, replyUntagged []byte) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, isk, pairing[:], infoEarly, 32)
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
