// Package wire is the rendezvous protocol, version 2: the binary messages
// that p2pcat clients and `p2pcat serve` exchange over UDP. PROTOCOL.md
// describes the same format for other implementers; keep the two in step.
//
// Every datagram starts with a 6-byte header:
//
//	magic   [4]byte  "P2PC"
//	version uint8    2
//	type    uint8    one of the Type constants
//
// followed by the message body. Integers are big-endian. A "string" is a
// uint8 length followed by that many bytes. An "address" is a family byte (4
// or 6), the IP (4 or 16 bytes) and a uint16 port. Requests (Hello, Register,
// Find, RelayBind, Leave) may carry trailing zero padding, which decoders
// ignore: clients pad requests so that the server's answer to an unproven
// address is never larger than the request (the server is not an
// amplifier). Replies must end exactly at their last field.
//
// Bodies:
//
//	Hello        reqID u64, session string
//	Challenge    reqID u64, cookie string, serverID [16]byte, flags u8 (bit 0: session is registered, Find needs a signature)
//	Register     reqID u64, cookie string, session string, verifier [32]byte (Ed25519 public key),
//	             ttl u32 (seconds), signature [64]byte (Ed25519, see rendezvous/sessionkey.go)
//	RegisterResp reqID u64, status u8 (0 created, 1 refreshed), expires u64 (unix seconds)
//	Find         reqID u64, cookie string, session string, name string, peer string (empty with any-peer),
//	             flags u8 (bit 0 any-peer: pair with whoever finds name; bit 1 again: continues a
//	             pairing, never pairs with an any-peer find; other bits refused),
//	             signature [64]byte (all zero when not required), candidates u8 count (<= 8) × address
//	FindResp     reqID u64, status u8 (0 waiting, 1 matched), observed address (the requester as the server saw it);
//	             when matched: pairingID [16]byte, role u8 (0 initiator, 1 responder),
//	             flags u8 (bit 0: the server relays this pairing, see relay.go),
//	             relayToken [16]byte (only when the relay flag is set: this recipient's end's secret),
//	             peer name string (as the peer gave it in its Find), peer observed address, peer candidates u8 count × address
//	Error        reqID u64, code u8, message string (the same layout in every protocol version)
//	RelayBind    reqID u64, cookie string, pairingID [16]byte, role u8 (the sender's),
//	             mac [32]byte (RelayBindMAC under the sender's relay token)
//	Leave        reqID u64, cookie string, session string, name string, peer string (empty for
//	             an any-peer find; withdraws the pending Find with that reqID; no answer)
//	RelayEnded   pairingID [16]byte, reason string, mac [32]byte (RelayEndedMAC under the
//	             recipient's relay token); server to client, no reqID
//
// Decoders never panic: any malformed, truncated or oversized input is an
// error that wraps ErrMalformed (or ErrVersion / ErrType for those cases).
//
// Files: wire.go the header, the types and Decode; codec.go the field
// encoders and the reader; hello.go, register.go, find.go, errors.go and
// relay.go one message group each (relay.go also the relayed datagrams
// and their MACs).
//
// Imports: only the standard library. Both the client (rendezvous, and the
// pipe through it) and the server (rendezvous/server) import wire.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Magic opens every rendezvous datagram. Its first byte has the top bits 01,
// so it never collides with STUN (00) on the same port.
var Magic = [4]byte{'P', '2', 'P', 'C'}

// Version is the protocol version this package speaks. Version 1 (p2pcat
// before session keys) sent password-derived credentials to the server;
// a server meeting it answers with an Error encoded as version 1
// (AppendErrorVersion), and a client meeting another version's Error
// reads it with DecodeAnyVersionError.
const Version = 2

// HeaderLen is the size of the fixed header.
const HeaderLen = 6

// MaxPacket is the largest datagram either side sends or accepts.
const MaxPacket = 1200

// Field limits.
const (
	MaxNameLen      = 64 // session, own and peer names, in bytes
	MaxCandidates   = 8
	MaxCookieLen    = 64
	MaxErrorMessage = 200
	// MinRequestLen is the size clients pad Hello, Register and Find to, so
	// that a Challenge or Error answer is never larger than the request.
	MinRequestLen = 96
)

// Type identifies a message.
type Type uint8

const (
	TypeHello        Type = 0x01
	TypeChallenge    Type = 0x02
	TypeRegister     Type = 0x03
	TypeRegisterResp Type = 0x04
	TypeFind         Type = 0x05
	TypeFindResp     Type = 0x06
	TypeError        Type = 0x07
	TypeRelayBind    Type = 0x08
	TypeLeave        Type = 0x09
	TypeRelayEnded   Type = 0x0A
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeChallenge:
		return "challenge"
	case TypeRegister:
		return "register"
	case TypeRegisterResp:
		return "register_resp"
	case TypeFind:
		return "find"
	case TypeFindResp:
		return "find_resp"
	case TypeError:
		return "error"
	case TypeRelayBind:
		return "relay_bind"
	case TypeLeave:
		return "leave"
	case TypeRelayEnded:
		return "relay_ended"
	}
	return "unknown"
}

var (
	// ErrMalformed marks any datagram that does not decode.
	ErrMalformed = errors.New("malformed rendezvous packet")
	// ErrVersion marks a datagram with our magic but another version.
	ErrVersion = errors.New("unsupported rendezvous protocol version")
	// ErrType marks a datagram with an unknown message type.
	ErrType = errors.New("unknown rendezvous message type")
	// ErrNotRendezvous marks a datagram without our magic (for example a
	// STUN message or a peer's probe).
	ErrNotRendezvous = errors.New("not a rendezvous packet")
)

// Header is the fixed prefix of every message.
type Header struct {
	Version uint8
	Type    Type
}

// ParseHeader checks the magic and returns the header. It returns
// ErrNotRendezvous when the magic is absent, and the header together with
// ErrVersion when the version is not ours, so a server can answer in kind.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen || [4]byte(b[:4]) != Magic {
		return Header{}, ErrNotRendezvous
	}
	h := Header{Version: b[4], Type: Type(b[5])}
	if h.Version != Version {
		return h, fmt.Errorf("%w %d (this side speaks %d)", ErrVersion, h.Version, Version)
	}
	return h, nil
}

// Message is implemented by every message struct.
type Message interface {
	Type() Type
	// AppendTo appends the encoded message, header included.
	AppendTo(b []byte) []byte
}

// Pad extends a request with zeros to MinRequestLen.
func Pad(b []byte) []byte {
	for len(b) < MinRequestLen {
		b = append(b, 0)
	}
	return b
}

// ValidName reports whether s may be a session or peer name: 1 to 64 bytes
// of UTF-8 without control characters or white space, so names print safely
// and cannot smuggle terminal escapes.
func ValidName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("name longer than %d bytes", MaxNameLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("name is not valid UTF-8")
	}
	for _, c := range s {
		if unicode.IsControl(c) || unicode.IsSpace(c) || !unicode.IsPrint(c) {
			return fmt.Errorf("name contains the character %q", c)
		}
	}
	return nil
}

// Decode parses one datagram. The returned message is freshly allocated
// and shares no memory with b.
func Decode(b []byte) (Message, error) {
	if len(b) > MaxPacket {
		return nil, fmt.Errorf("%w: %d bytes is larger than %d", ErrMalformed, len(b), MaxPacket)
	}
	h, err := ParseHeader(b)
	if err != nil {
		return nil, err
	}
	r := &reader{b: b[HeaderLen:]}
	m := readBody(h.Type, r)
	if m == nil {
		return nil, fmt.Errorf("%w 0x%02x", ErrType, uint8(h.Type))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%s: %w", h.Type, r.err)
	}
	return m, nil
}

// readBody reads the body of a message of type t; nil for an unknown type.
// Each read function reads every field and leaves the first failure in
// r.err.
func readBody(t Type, r *reader) Message {
	switch t {
	case TypeHello:
		return readHello(r)
	case TypeRelayBind:
		return readRelayBind(r)
	case TypeChallenge:
		return readChallenge(r)
	case TypeRegister:
		return readRegister(r)
	case TypeRegisterResp:
		return readRegisterResp(r)
	case TypeFind:
		return readFind(r)
	case TypeLeave:
		return readLeave(r)
	case TypeFindResp:
		return readFindResp(r)
	case TypeError:
		return r.errorBody()
	case TypeRelayEnded:
		return readRelayEnded(r)
	}
	return nil
}

// ReqIDOf returns the request id of any message whose body starts with one
// (all but RelayEnded do), without decoding the rest: the server uses it to
// answer a request it cannot otherwise parse. The id sits at the same
// offset in version 1.
func ReqIDOf(b []byte) (uint64, bool) {
	if len(b) < HeaderLen+8 || Type(b[5]) == TypeRelayEnded {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[HeaderLen:]), true
}
