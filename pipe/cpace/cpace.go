// Package cpace implements CPace-RISTRETTO255-SHA512 in the
// initiator-responder setting, as specified by draft-irtf-cfrg-cpace-21
// ("CPace, a balanced composable PAKE").
//
// The rules, quoted from the draft (sections 6.3, 7.2, 8.1, 8.3):
//
//	prepend_len(s)      = LEB128(len(s)) || s
//	lv_cat(a0, a1, ...) = prepend_len(a0) || prepend_len(a1) || ...
//	DSI                 = "CPaceRistretto255"
//	len_zpad            = max(0, 128 - 1 - len(prepend_len(PRS)) - len(prepend_len(DSI)))
//	generator_string    = lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)
//	g                   = ristretto255 element_derivation(SHA-512(generator_string))
//	y                   = 32 random bytes, bits 252..255 cleared, little-endian
//	Y                   = encode(y * g)                    (the 32-byte message)
//	K                   = encode(y * decode(Y_peer))       abort if decoding fails or K = identity
//	transcript_ir       = lv_cat(Ya, ADa) || lv_cat(Yb, ADb)
//	ISK                 = SHA-512(lv_cat(DSI || "_ISK", sid, K) || transcript_ir)
//
// Party A is the initiator (it speaks first), party B the responder. Each
// side sends its Y together with its associated data AD; CI and sid are
// never sent. Both sides get the same 64-byte ISK if and only if they used
// the same PRS, CI and sid and saw the same Ya, ADa, Yb, ADb. CPace itself
// has no key confirmation: callers must confirm ISK explicitly (draft
// section 10.4) and should pass it through a KDF before use (section 10.3).
//
// The package owns the PAKE and nothing around it: no wire format, no
// transport, no key confirmation (pipe/secure does all three). It imports
// the standard library and github.com/gtank/ristretto255, and nothing of
// p2pcat.
package cpace

import (
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/gtank/ristretto255"
)

const (
	// dsi is G_Ristretto255.DSI, the domain-separation identifier.
	dsi = "CPaceRistretto255"
	// hashBlockSize is H.s_in_bytes for SHA-512.
	hashBlockSize = sha512.BlockSize

	// MessageSize is the length of the public share Y that Start returns
	// and Finish expects from the peer.
	MessageSize = 32
	// ISKSize is the length of the intermediate session key.
	ISKSize = sha512.Size
)

// Role says which side of the initiator-responder flow the caller is. The
// initiator's share and AD come first in the transcript.
type Role int

const (
	// Initiator is party A: it sends Ya, ADa first.
	Initiator Role = iota + 1
	// Responder is party B: it answers with Yb, ADb.
	Responder
)

func (r Role) String() string {
	switch r {
	case Initiator:
		return "initiator"
	case Responder:
		return "responder"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// ErrInvalidMessage is returned by Finish when the peer's share is not a
// canonical ristretto255 encoding or encodes the identity element. The
// State stays usable: such a message reveals nothing about the password,
// so the caller may drop it and wait for a genuine one.
var ErrInvalidMessage = errors.New("cpace: invalid peer message")

// identity is G.I, the encoding of the neutral element.
var identity [MessageSize]byte

// State is one side of one CPace run. It holds the secret scalar between
// Start and Finish. A State is single-use and not safe for concurrent use.
type State struct {
	y     *ristretto255.Scalar
	msg   [MessageSize]byte
	ad    []byte
	sid   []byte
	spent bool
}

// Start begins a CPace run with password-related string prs, channel
// identifier ci, session id sid and this side's associated data ad. It
// draws the secret scalar from rand (normally crypto/rand.Reader) and
// returns the state and the message Y to send to the peer together with ad.
// prs must not be empty; ci, sid and ad may be.
func Start(prs, ci, sid, ad []byte, rand io.Reader) (*State, []byte, error) {
	if len(prs) == 0 {
		return nil, nil, errors.New("cpace: empty password")
	}
	y, err := sampleScalar(rand)
	if err != nil {
		return nil, nil, err
	}
	g := calculateGenerator(prs, ci, sid)
	s := &State{
		y:   y,
		ad:  append([]byte(nil), ad...),
		sid: append([]byte(nil), sid...),
	}
	ristretto255.NewElement().ScalarMult(y, g).Encode(s.msg[:0])
	return s, append([]byte(nil), s.msg[:]...), nil
}

// Finish takes the peer's message Y and associated data and returns the
// 64-byte ISK. role is the caller's own role. If peerMsg is invalid, Finish
// returns an error matching ErrInvalidMessage and the State may be used
// again; after a successful Finish the secret scalar is erased and the State
// is spent.
func (s *State) Finish(peerMsg, peerAD []byte, role Role) ([]byte, error) {
	if s.spent {
		return nil, errors.New("cpace: state already used")
	}
	if role != Initiator && role != Responder {
		return nil, fmt.Errorf("cpace: unknown role %v", role)
	}
	k, err := scalarMultVfy(s.y, peerMsg)
	if err != nil {
		return nil, err
	}
	defer clear(k)

	var t []byte
	if role == Initiator {
		t = transcriptIR(s.msg[:], s.ad, peerMsg, peerAD)
	} else {
		t = transcriptIR(peerMsg, peerAD, s.msg[:], s.ad)
	}
	isk := deriveISK(s.sid, k, t)
	s.y.Zero()
	s.spent = true
	return isk, nil
}

// prependLen appends LEB128(len(data)) || data to dst.
func prependLen(dst, data []byte) []byte {
	n := len(data)
	for n >= 0x80 {
		dst = append(dst, byte(n&0x7f)|0x80)
		n >>= 7
	}
	dst = append(dst, byte(n))
	return append(dst, data...)
}

// lvCat appends the length-value encoding of parts to dst.
func lvCat(dst []byte, parts ...[]byte) []byte {
	for _, p := range parts {
		dst = prependLen(dst, p)
	}
	return dst
}

// leb128Len is len(prepend_len(data)) - len(data).
func leb128Len(n int) int {
	size := 1
	for n >= 0x80 {
		n >>= 7
		size++
	}
	return size
}

// generatorString returns lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid).
// The padding makes DSI and PRS fill the first hash block so that the work
// done on the password does not depend on its length (draft section 8.1).
func generatorString(prs, ci, sid []byte) []byte {
	zpad := hashBlockSize - 1 - (leb128Len(len(prs)) + len(prs)) - (leb128Len(len(dsi)) + len(dsi))
	zpad = max(zpad, 0)
	return lvCat(nil, []byte(dsi), prs, make([]byte, zpad), ci, sid)
}

// calculateGenerator hashes the generator string to 64 bytes and maps them
// to the group with ristretto255's element derivation (one-way map).
func calculateGenerator(prs, ci, sid []byte) *ristretto255.Element {
	gs := generatorString(prs, ci, sid)
	h := sha512.Sum512(gs)
	clear(gs) // it holds the password
	g := ristretto255.NewElement().FromUniformBytes(h[:])
	clear(h[:])
	return g
}

// sampleScalar implements the draft's recommended G.sample_scalar: 32
// random bytes with the bits above group_size_bits (252) cleared, read as a
// little-endian integer. Such a value is always below the group order, so
// no reduction is needed. Zero is resampled: it would make Y the identity,
// which the peer must reject.
func sampleScalar(rand io.Reader) (*ristretto255.Scalar, error) {
	var b [32]byte
	defer clear(b[:])
	zero := ristretto255.NewScalar()
	for range 4 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return nil, fmt.Errorf("cpace: reading randomness: %w", err)
		}
		b[31] &= 0x0f
		y := ristretto255.NewScalar()
		if err := y.Decode(b[:]); err != nil {
			return nil, fmt.Errorf("cpace: decoding scalar: %w", err)
		}
		if y.Equal(zero) == 0 {
			return y, nil
		}
	}
	return nil, errors.New("cpace: random source returned only zero scalars")
}

// scalarMultVfy returns encode(y * decode(x)), or ErrInvalidMessage when x
// does not decode or the product is the identity (G.I).
func scalarMultVfy(y *ristretto255.Scalar, x []byte) ([]byte, error) {
	p := ristretto255.NewElement()
	if err := p.Decode(x); err != nil {
		return nil, fmt.Errorf("%w: not a canonical ristretto255 encoding", ErrInvalidMessage)
	}
	k := ristretto255.NewElement().ScalarMult(y, p).Encode(make([]byte, 0, MessageSize))
	if subtle.ConstantTimeCompare(k, identity[:]) == 1 {
		return nil, fmt.Errorf("%w: identity element", ErrInvalidMessage)
	}
	return k, nil
}

// transcriptIR is the initiator-responder transcript lv_cat(Ya, ADa) ||
// lv_cat(Yb, ADb).
func transcriptIR(ya, ada, yb, adb []byte) []byte {
	return lvCat(nil, ya, ada, yb, adb)
}

// deriveISK returns SHA-512(lv_cat(DSI || "_ISK", sid, K) || transcript).
func deriveISK(sid, k, transcript []byte) []byte {
	buf := lvCat(nil, []byte(dsi+"_ISK"), sid, k)
	buf = append(buf, transcript...)
	sum := sha512.Sum512(buf)
	clear(buf)
	return sum[:]
}
