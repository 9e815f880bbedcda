// Handshake wire format, version 2. All integers are big-endian; every field
// has a fixed size or an explicit 2-byte length; a message with trailing
// bytes is malformed. The first byte of every datagram is its type:
//
//	0xE8 Hello       0xE9 Reply      0xEA Finish     0xEB Finished
//	0xEC AuthFailed  0xED Cancel
//	0xD0 Data        0xD1 Keepalive  0xD2 DataHead
//
// (The values avoid the first-byte ranges RFC 7983 gives STUN, ZRTP, DTLS,
// TURN channels and RTP, so a socket can be shared with them. Version 1
// used 0xE1-0xE6 for the handshake: a side that receives one of those from
// its peer reports an old peer instead of timing out.)
//
//	Hello      = 0xE8 | hsid (16) | len (2) | pk_I | Ya (32)
//	Reply      = 0xE9 | hsid (16) | ref(Hello) (16)
//	             | len (2) | pk_R | Yb (32) | len (2) | ct_R | early tag (32)
//	Finish     = 0xEA | hsid (16) | ref(Reply) (16) | len (2) | ct_I | confirm_I (32)
//	Finished   = 0xEB | hsid (16) | ref(Finish) (16) | confirm_R (32)
//	AuthFailed = 0xEC | hsid (16) | ref(Hello as the sender saw it) (16)
//	             | ref(the message that failed verification) (16)
//	Cancel     = 0xED | hsid (16) | ref(Hello) (16) | tag (32)
//
// hsid, the handshake id, is 16 random bytes the initiator draws for its
// Hello; every later message of the handshake repeats it. ref(m) is the
// first 16 bytes of SHA-256(m), m being the whole datagram. pk is an RSA
// modulus, big-endian without leading zeros (public exponent 65537); ct is
// an RSA-OAEP ciphertext as long as the recipient's modulus. Data and
// Keepalive are specified in conn.go.

package secure

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Packet types: the first byte of every datagram.
const (
	typeHello      byte = 0xE8
	typeReply      byte = 0xE9
	typeFinish     byte = 0xEA
	typeFinished   byte = 0xEB
	typeAuthFailed byte = 0xEC
	typeCancel     byte = 0xED
	typeData       byte = 0xD0
	typeKeepalive  byte = 0xD1
	typeDataHead   byte = 0xD2
)

const (
	// maxDatagram is the largest datagram either side sends: it fits the
	// IPv6 minimum MTU with room for IP and UDP headers.
	maxDatagram = 1200
	refSize     = 16
	elementSize = 32 // a CPace share (ristretto255 encoding)
	tagSize     = 32 // HMAC-SHA256
	// maxRSABytes bounds pk and ct: a 4096-bit modulus.
	maxRSABytes = 512
)

type (
	handshakeID [16]byte
	ref         [refSize]byte
)

// isV1Handshake reports a datagram of protocol version 1's handshake
// (Hello 0xE1 to Cancel 0xE6): an older p2pcat.
func isV1Handshake(b []byte) bool { return len(b) > 0 && b[0] >= 0xE1 && b[0] <= 0xE6 }

// refOf returns ref(m), the handle a reply uses to name the message it
// answers.
func refOf(m []byte) ref {
	sum := sha256.Sum256(m)
	return ref(sum[:refSize])
}

// errMalformed marks a datagram that does not parse; such datagrams are
// dropped and counted, never answered.
var errMalformed = errors.New("secure: malformed packet")

type hello struct {
	id handshakeID
	pk []byte
	ya [elementSize]byte
}

type reply struct {
	id  handshakeID
	ref ref
	pk  []byte
	yb  [elementSize]byte
	ct  []byte
	tag [tagSize]byte
}

type finish struct {
	id  handshakeID
	ref ref
	ct  []byte
	tag [tagSize]byte
}

type finished struct {
	id  handshakeID
	ref ref
	tag [tagSize]byte
}

type authFailed struct {
	id     handshakeID
	hello  ref
	failed ref
}

func (m *hello) marshal() []byte {
	b := make([]byte, 0, 1+16+2+len(m.pk)+elementSize)
	b = append(b, typeHello)
	b = append(b, m.id[:]...)
	b = appendVar(b, m.pk)
	return append(b, m.ya[:]...)
}

// marshalUntagged encodes the Reply without its early tag, the part the tag
// covers; append the tag to finish the datagram.
func (m *reply) marshalUntagged() []byte {
	b := make([]byte, 0, 1+16+refSize+2+len(m.pk)+elementSize+2+len(m.ct)+tagSize)
	b = append(b, typeReply)
	b = append(b, m.id[:]...)
	b = append(b, m.ref[:]...)
	b = appendVar(b, m.pk)
	b = append(b, m.yb[:]...)
	return appendVar(b, m.ct)
}

func (m *reply) marshal() []byte { return append(m.marshalUntagged(), m.tag[:]...) }

func (m *finish) marshalUntagged() []byte {
	b := make([]byte, 0, 1+16+refSize+2+len(m.ct)+tagSize)
	b = append(b, typeFinish)
	b = append(b, m.id[:]...)
	b = append(b, m.ref[:]...)
	return appendVar(b, m.ct)
}

func (m *finish) marshal() []byte { return append(m.marshalUntagged(), m.tag[:]...) }

func (m *finished) marshal() []byte {
	b := make([]byte, 0, 1+16+refSize+tagSize)
	b = append(b, typeFinished)
	b = append(b, m.id[:]...)
	b = append(b, m.ref[:]...)
	return append(b, m.tag[:]...)
}

func (m *authFailed) marshal() []byte {
	b := make([]byte, 0, 1+16+2*refSize)
	b = append(b, typeAuthFailed)
	b = append(b, m.id[:]...)
	b = append(b, m.hello[:]...)
	return append(b, m.failed[:]...)
}

// cancel tells the peer that this side gave up the handshake (the user
// interrupted it). It names the Hello both sides saw, so only someone who
// saw it can forge one; once the sender holds the handshake's ISK it also
// carries tag = HMAC(K_cancel, ref(Hello)), which proves the sender knows
// the password (zero before that).
type cancel struct {
	id    handshakeID
	hello ref
	tag   [tagSize]byte
}

func (m *cancel) marshal() []byte {
	b := make([]byte, 0, 1+16+refSize+tagSize)
	b = append(b, typeCancel)
	b = append(b, m.id[:]...)
	b = append(b, m.hello[:]...)
	return append(b, m.tag[:]...)
}

func parseCancel(b []byte) (*cancel, error) {
	r := reader{b: b}
	m := &cancel{}
	r.expectType(typeCancel)
	r.read(m.id[:])
	r.read(m.hello[:])
	r.read(m.tag[:])
	return m, r.done()
}

func parseHello(b []byte) (*hello, error) {
	r := reader{b: b}
	m := &hello{}
	r.expectType(typeHello)
	r.read(m.id[:])
	m.pk = r.readVar(maxRSABytes)
	r.read(m.ya[:])
	return m, r.done()
}

func parseReply(b []byte) (*reply, error) {
	r := reader{b: b}
	m := &reply{}
	r.expectType(typeReply)
	r.read(m.id[:])
	r.read(m.ref[:])
	m.pk = r.readVar(maxRSABytes)
	r.read(m.yb[:])
	m.ct = r.readVar(maxRSABytes)
	r.read(m.tag[:])
	return m, r.done()
}

func parseFinish(b []byte) (*finish, error) {
	r := reader{b: b}
	m := &finish{}
	r.expectType(typeFinish)
	r.read(m.id[:])
	r.read(m.ref[:])
	m.ct = r.readVar(maxRSABytes)
	r.read(m.tag[:])
	return m, r.done()
}

func parseFinished(b []byte) (*finished, error) {
	r := reader{b: b}
	m := &finished{}
	r.expectType(typeFinished)
	r.read(m.id[:])
	r.read(m.ref[:])
	r.read(m.tag[:])
	return m, r.done()
}

func parseAuthFailed(b []byte) (*authFailed, error) {
	r := reader{b: b}
	m := &authFailed{}
	r.expectType(typeAuthFailed)
	r.read(m.id[:])
	r.read(m.hello[:])
	r.read(m.failed[:])
	return m, r.done()
}

// appendVar appends a 2-byte length and v. Callers keep v under 64 KiB.
func appendVar(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// reader consumes a datagram field by field; the first short read or bad
// length poisons it and done reports errMalformed.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) expectType(t byte) {
	if v := r.take(1); v == nil || v[0] != t {
		r.bad = true
	}
}

func (r *reader) read(dst []byte) { copy(dst, r.take(len(dst))) }

// readVar reads a length-prefixed field of 1 to max bytes. The result
// aliases the datagram.
func (r *reader) readVar(max int) []byte {
	l := r.take(2)
	if l == nil {
		return nil
	}
	n := int(binary.BigEndian.Uint16(l))
	if n == 0 || n > max {
		r.bad = true
		return nil
	}
	return r.take(n)
}

func (r *reader) done() error {
	if r.bad || len(r.b) != 0 {
		return errMalformed
	}
	return nil
}
