package wire

// Hello and Challenge: the first round of every exchange, in which the
// client gets a cookie that proves its address and learns whether the
// session is registered.

import "encoding/binary"

// Hello asks for a cookie; it is the first request of every exchange.
type Hello struct {
	ReqID   uint64
	Session string
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

func (*Hello) Type() Type     { return TypeHello }
func (*Challenge) Type() Type { return TypeChallenge }

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

func readHello(r *reader) *Hello {
	v := &Hello{ReqID: r.u64("request id")}
	v.Session = r.name("session")
	r.padding()
	return v
}

func readChallenge(r *reader) *Challenge {
	v := &Challenge{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	r.array(v.ServerID[:], "server id")
	v.Flags = r.u8("flags")
	r.end()
	return v
}
