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
//	Find         reqID u64, cookie string, session string, name string, peer string,
//	             signature [64]byte (all zero when not required), candidates u8 count (<= 8) × address
//	FindResp     reqID u64, status u8 (0 waiting, 1 matched), observed address (the requester as the server saw it);
//	             when matched: pairingID [16]byte, role u8 (0 initiator, 1 responder),
//	             flags u8 (bit 0: the server relays this pairing, see relay.go),
//	             relayToken [16]byte (only when the relay flag is set: this recipient's end's secret),
//	             peer observed address, peer candidates u8 count × address
//	Error        reqID u64, code u8, message string (the same layout in every protocol version)
//	RelayBind    reqID u64, cookie string, pairingID [16]byte, role u8 (the sender's),
//	             mac [32]byte (RelayBindMAC under the sender's relay token)
//	Leave        reqID u64, cookie string, session string, name string, peer string
//	             (withdraws the pending Find with that reqID; no answer)
//	RelayEnded   pairingID [16]byte, reason string, mac [32]byte (RelayEndedMAC under the
//	             recipient's relay token); server to client, no reqID
//
// Decoders never panic: any malformed, truncated or oversized input is an
// error that wraps ErrMalformed (or ErrVersion / ErrType for those cases).
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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

// Hello asks for a cookie; it is the first request of every exchange.
type Hello struct {
	ReqID   uint64
	Session string
}

// RelayBind moves one end of a relayed pairing to the address it comes from:
// a client whose address changed (a new network, a new public IP, a NAT that
// gave it another port) sends it from its session socket. The cookie proves
// that it receives there (without one the server answers with a Challenge);
// the MAC, under the relay token the server gave that end in its FindResp,
// proves that it is that end, which the pairing id alone does not: the id
// travels in clear in every relayed datagram.
type RelayBind struct {
	ReqID     uint64
	Cookie    []byte
	PairingID [16]byte
	Role      Role     // the sender's role in the pairing
	MAC       [32]byte // RelayBindMAC(the sender's relay token, PairingID, Role, Cookie)
}

// Challenge answers Hello (or any request whose cookie is missing or stale).
type Challenge struct {
	ReqID    uint64
	Cookie   []byte
	ServerID [16]byte
	Flags    uint8
}

// ChallengeRegistered is set in Challenge.Flags when the session asked
// about is registered, so Find must carry a session-key signature.
const ChallengeRegistered = 1 << 0

// Register reserves a session for the holders of a session key. Verifier is
// the key's Ed25519 public key, which is all the server stores; Signature
// (by the key, over the server id, the cookie, the session, the ttl and the
// verifier) proves possession, and the cookie in it ties the request to the
// sender's address, so a captured Register cannot be replayed from
// elsewhere.
type Register struct {
	ReqID      uint64
	Cookie     []byte
	Session    string
	Verifier   [32]byte
	TTLSeconds uint32
	Signature  [64]byte
}

// RegisterStatus tells whether a registration was new or refreshed.
type RegisterStatus uint8

const (
	RegisterCreated   RegisterStatus = 0
	RegisterRefreshed RegisterStatus = 1
)

// RegisterResp confirms a registration.
type RegisterResp struct {
	ReqID   uint64
	Status  RegisterStatus
	Expires uint64 // unix seconds
}

// Find asks to be paired with Peer in Session.
type Find struct {
	ReqID      uint64
	Cookie     []byte
	Session    string
	Name       string
	Peer       string
	Signature  [64]byte // by the session key, for registered sessions; all zero otherwise
	Candidates []netip.AddrPort
}

// Leave withdraws a Find that is still waiting for its peer (the client
// was interrupted or gave up), so that the peer, arriving later, is not
// paired with a client that has gone. ReqID is the Find's. The server
// sends no answer.
type Leave struct {
	ReqID   uint64
	Cookie  []byte
	Session string
	Name    string
	Peer    string
}

// FindStatus tells whether the peer has shown up yet.
type FindStatus uint8

const (
	FindWaiting FindStatus = 0
	FindMatched FindStatus = 1
)

// Role tells a matched client which side initiates the handshake.
type Role uint8

const (
	RoleInitiator Role = 0
	RoleResponder Role = 1
)

func (r Role) String() string {
	if r == RoleInitiator {
		return "initiator"
	}
	return "responder"
}

// findRespRelay is the FindResp flag that offers the relay.
const findRespRelay = 1 << 0

// FindResp answers Find: still waiting, or matched with the peer's addresses.
type FindResp struct {
	ReqID     uint64
	Status    FindStatus
	Observed  netip.AddrPort // the requester's address as the server saw it
	PairingID [16]byte
	Role      Role
	Relay     bool // the server relays datagrams for this pairing
	// RelayToken is this recipient's secret for its end of the relay
	// (RelayBind, RelayEnded); each end gets its own. Encoded only when
	// Relay is set, and zero otherwise.
	RelayToken     [16]byte
	PeerObserved   netip.AddrPort
	PeerCandidates []netip.AddrPort
}

// ErrorCode classifies an Error reply.
type ErrorCode uint8

const (
	CodeMalformed   ErrorCode = 1
	CodeVersion     ErrorCode = 2
	CodeUnknownType ErrorCode = 3
	CodeAuthFailed  ErrorCode = 4
	CodeTaken       ErrorCode = 5
	CodeRateLimited ErrorCode = 6
	CodeBusy        ErrorCode = 7
	CodeInternal    ErrorCode = 8
	CodeBadArgument ErrorCode = 9
	// Code 10 was relay_ended in version 1; RelayEnded replaced it.
)

func (c ErrorCode) String() string {
	switch c {
	case CodeMalformed:
		return "malformed"
	case CodeVersion:
		return "version"
	case CodeUnknownType:
		return "unknown_type"
	case CodeAuthFailed:
		return "auth_failed"
	case CodeTaken:
		return "taken"
	case CodeRateLimited:
		return "rate_limited"
	case CodeBusy:
		return "busy"
	case CodeInternal:
		return "internal"
	case CodeBadArgument:
		return "bad_argument"
	}
	return fmt.Sprintf("code_%d", uint8(c))
}

// Error is the server's refusal of a request. Its layout is the same in
// every protocol version, so that a client and a server of different
// versions can always tell each other so (AppendErrorVersion,
// DecodeAnyVersionError).
type Error struct {
	ReqID   uint64
	Code    ErrorCode
	Message string
}

// RelayEnded tells one end of a relayed pairing that the server stopped
// relaying it (its byte cap was reached). The MAC, under the recipient's
// relay token, makes it believable: anyone can see the pairing id, only
// the server and that end know the token.
type RelayEnded struct {
	PairingID [16]byte
	Reason    string // human-readable; clients sanitize it before printing
	MAC       [32]byte
}

func (*Hello) Type() Type        { return TypeHello }
func (*Challenge) Type() Type    { return TypeChallenge }
func (*Register) Type() Type     { return TypeRegister }
func (*RegisterResp) Type() Type { return TypeRegisterResp }
func (*Find) Type() Type         { return TypeFind }
func (*FindResp) Type() Type     { return TypeFindResp }
func (*Error) Type() Type        { return TypeError }
func (*RelayBind) Type() Type    { return TypeRelayBind }
func (*Leave) Type() Type        { return TypeLeave }
func (*RelayEnded) Type() Type   { return TypeRelayEnded }

func appendHeader(b []byte, t Type) []byte {
	return appendVersionHeader(b, Version, t)
}

func appendVersionHeader(b []byte, version uint8, t Type) []byte {
	b = append(b, Magic[:]...)
	return append(b, version, byte(t))
}

func appendString(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, s []byte) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		v := ip.As4()
		b = append(b, 4)
		b = append(b, v[:]...)
	} else {
		v := ip.As16()
		b = append(b, 6)
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

func appendAddrs(b []byte, as []netip.AddrPort) []byte {
	n := min(len(as), MaxCandidates)
	b = append(b, byte(n))
	for _, a := range as[:n] {
		b = appendAddr(b, a)
	}
	return b
}

// Pad extends a request with zeros to MinRequestLen.
func Pad(b []byte) []byte {
	for len(b) < MinRequestLen {
		b = append(b, 0)
	}
	return b
}

func (m *RelayBind) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRelayBind)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = append(b, m.PairingID[:]...)
	b = append(b, byte(m.Role))
	return append(b, m.MAC[:]...)
}

func (m *Hello) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeHello)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	return appendString(b, m.Session)
}

func (m *Challenge) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeChallenge)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = append(b, m.ServerID[:]...)
	return append(b, m.Flags)
}

func (m *Register) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRegister)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = appendString(b, m.Session)
	b = append(b, m.Verifier[:]...)
	b = binary.BigEndian.AppendUint32(b, m.TTLSeconds)
	return append(b, m.Signature[:]...)
}

func (m *RegisterResp) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRegisterResp)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = append(b, byte(m.Status))
	return binary.BigEndian.AppendUint64(b, m.Expires)
}

func (m *Find) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeFind)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = appendString(b, m.Session)
	b = appendString(b, m.Name)
	b = appendString(b, m.Peer)
	b = append(b, m.Signature[:]...)
	return appendAddrs(b, m.Candidates)
}

func (m *Leave) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeLeave)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = appendBytes(b, m.Cookie)
	b = appendString(b, m.Session)
	b = appendString(b, m.Name)
	return appendString(b, m.Peer)
}

func (m *FindResp) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeFindResp)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = append(b, byte(m.Status))
	b = appendAddr(b, m.Observed)
	if m.Status != FindMatched {
		return b
	}
	b = append(b, m.PairingID[:]...)
	b = append(b, byte(m.Role))
	var flags byte
	if m.Relay {
		flags |= findRespRelay
	}
	b = append(b, flags)
	if m.Relay {
		b = append(b, m.RelayToken[:]...)
	}
	b = appendAddr(b, m.PeerObserved)
	return appendAddrs(b, m.PeerCandidates)
}

func (m *Error) AppendTo(b []byte) []byte {
	return AppendErrorVersion(b, Version, m)
}

// AppendErrorVersion appends m encoded with another version in its header.
// A server answers a client of another version in that client's version,
// which the older client can decode (version 1's Error layout is this
// one), so that it prints why it failed instead of timing out.
func AppendErrorVersion(b []byte, version uint8, m *Error) []byte {
	b = appendVersionHeader(b, version, TypeError)
	b = binary.BigEndian.AppendUint64(b, m.ReqID)
	b = append(b, byte(m.Code))
	msg := m.Message
	if len(msg) > MaxErrorMessage {
		msg = msg[:MaxErrorMessage]
	}
	return appendString(b, msg)
}

func (m *RelayEnded) AppendTo(b []byte) []byte {
	b = appendHeader(b, TypeRelayEnded)
	b = append(b, m.PairingID[:]...)
	reason := m.Reason
	if len(reason) > MaxErrorMessage {
		reason = reason[:MaxErrorMessage]
	}
	b = appendString(b, reason)
	return append(b, m.MAC[:]...)
}

// reader consumes a body; the first failure sticks, so decoders read every
// field and check err once.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, what)
	}
	r.b = nil
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil || len(r.b) < n {
		r.fail("truncated " + what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) uint8 {
	v := r.take(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16(what string) uint16 {
	v := r.take(2, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (r *reader) u32(what string) uint32 {
	v := r.take(4, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (r *reader) u64(what string) uint64 {
	v := r.take(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (r *reader) array(dst []byte, what string) {
	copy(dst, r.take(len(dst), what))
}

func (r *reader) bytes(limit int, what string) []byte {
	n := int(r.u8(what + " length"))
	if n > limit {
		r.fail(what + " too long")
		return nil
	}
	v := r.take(n, what)
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// name reads a string field that must satisfy ValidName.
func (r *reader) name(what string) string {
	n := int(r.u8(what + " length"))
	v := r.take(n, what)
	if r.err != nil {
		return ""
	}
	s := string(v)
	if err := ValidName(s); err != nil {
		r.fail(what + ": " + err.Error())
		return ""
	}
	return s
}

func (r *reader) text(limit int, what string) string {
	n := int(r.u8(what + " length"))
	if n > limit {
		r.fail(what + " too long")
		return ""
	}
	v := r.take(n, what)
	if v == nil {
		return ""
	}
	return string(v)
}

func (r *reader) addr(what string) netip.AddrPort {
	var ip netip.Addr
	switch r.u8(what + " family") {
	case 4:
		if v := r.take(4, what); v != nil {
			ip = netip.AddrFrom4([4]byte(v))
		}
	case 6:
		if v := r.take(16, what); v != nil {
			// A v4-mapped address is the v4 address: one form per address.
			ip = netip.AddrFrom16([16]byte(v)).Unmap()
		}
	default:
		r.fail(what + " family")
		return netip.AddrPort{}
	}
	port := r.u16(what + " port")
	if r.err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, port)
}

func (r *reader) addrs(what string) []netip.AddrPort {
	n := int(r.u8(what + " count"))
	if n > MaxCandidates {
		r.fail("too many " + what)
		return nil
	}
	var out []netip.AddrPort
	if n > 0 {
		out = make([]netip.AddrPort, 0, n)
	}
	for range n {
		a := r.addr(what)
		if r.err != nil {
			return nil
		}
		out = append(out, a)
	}
	return out
}

// padding accepts only zero bytes after a request, so nothing can hide in
// the tail of a datagram.
func (r *reader) padding() {
	for _, c := range r.b {
		if c != 0 {
			r.fail("trailing bytes")
			return
		}
	}
	r.b = nil
}

// end rejects trailing bytes after a reply.
func (r *reader) end() {
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
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
	var m Message
	switch h.Type {
	case TypeHello:
		v := &Hello{ReqID: r.u64("request id")}
		v.Session = r.name("session")
		r.padding()
		m = v
	case TypeRelayBind:
		v := &RelayBind{ReqID: r.u64("request id")}
		v.Cookie = r.bytes(MaxCookieLen, "cookie")
		r.array(v.PairingID[:], "pairing id")
		v.Role = Role(r.u8("role"))
		if v.Role > RoleResponder {
			r.fail("role")
		}
		r.array(v.MAC[:], "mac")
		r.padding()
		m = v
	case TypeChallenge:
		v := &Challenge{ReqID: r.u64("request id")}
		v.Cookie = r.bytes(MaxCookieLen, "cookie")
		r.array(v.ServerID[:], "server id")
		v.Flags = r.u8("flags")
		r.end()
		m = v
	case TypeRegister:
		v := &Register{ReqID: r.u64("request id")}
		v.Cookie = r.bytes(MaxCookieLen, "cookie")
		v.Session = r.name("session")
		r.array(v.Verifier[:], "verifier")
		v.TTLSeconds = r.u32("ttl")
		r.array(v.Signature[:], "signature")
		r.padding()
		m = v
	case TypeRegisterResp:
		v := &RegisterResp{ReqID: r.u64("request id")}
		v.Status = RegisterStatus(r.u8("status"))
		v.Expires = r.u64("expiry")
		if v.Status > RegisterRefreshed {
			r.fail("register status")
		}
		r.end()
		m = v
	case TypeFind:
		v := &Find{ReqID: r.u64("request id")}
		v.Cookie = r.bytes(MaxCookieLen, "cookie")
		v.Session = r.name("session")
		v.Name = r.name("name")
		v.Peer = r.name("peer")
		r.array(v.Signature[:], "signature")
		v.Candidates = r.addrs("candidates")
		r.padding()
		m = v
	case TypeLeave:
		v := &Leave{ReqID: r.u64("request id")}
		v.Cookie = r.bytes(MaxCookieLen, "cookie")
		v.Session = r.name("session")
		v.Name = r.name("name")
		v.Peer = r.name("peer")
		r.padding()
		m = v
	case TypeFindResp:
		v := &FindResp{ReqID: r.u64("request id")}
		v.Status = FindStatus(r.u8("status"))
		v.Observed = r.addr("observed address")
		switch v.Status {
		case FindWaiting:
		case FindMatched:
			r.array(v.PairingID[:], "pairing id")
			v.Role = Role(r.u8("role"))
			if v.Role > RoleResponder {
				r.fail("role")
			}
			flags := r.u8("flags")
			if flags&^findRespRelay != 0 {
				r.fail("flags")
			}
			v.Relay = flags&findRespRelay != 0
			if v.Relay {
				r.array(v.RelayToken[:], "relay token")
			}
			v.PeerObserved = r.addr("peer address")
			v.PeerCandidates = r.addrs("peer candidates")
		default:
			r.fail("find status")
		}
		r.end()
		m = v
	case TypeError:
		m = r.errorBody()
	case TypeRelayEnded:
		v := &RelayEnded{}
		r.array(v.PairingID[:], "pairing id")
		v.Reason = r.text(MaxErrorMessage, "reason")
		r.array(v.MAC[:], "mac")
		r.end()
		m = v
	default:
		return nil, fmt.Errorf("%w 0x%02x", ErrType, uint8(h.Type))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%s: %w", h.Type, r.err)
	}
	return m, nil
}

func (r *reader) errorBody() *Error {
	v := &Error{ReqID: r.u64("request id")}
	v.Code = ErrorCode(r.u8("code"))
	v.Message = r.text(MaxErrorMessage, "message")
	r.end()
	return v
}

// DecodeAnyVersionError decodes an Error whatever the version byte of its
// header says (the Error layout is the same in every version), and returns
// that version. ok is false for anything else, an Error that does not
// decode included. A client uses it to tell "this server speaks another
// version" at once, instead of ignoring answers it cannot decode until it
// times out.
func DecodeAnyVersionError(b []byte) (e *Error, version uint8, ok bool) {
	if len(b) > MaxPacket || len(b) < HeaderLen || [4]byte(b[:4]) != Magic || Type(b[5]) != TypeError {
		return nil, 0, false
	}
	r := &reader{b: b[HeaderLen:]}
	e = r.errorBody()
	if r.err != nil {
		return nil, 0, false
	}
	return e, b[4], true
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
