package wire

// Register and RegisterResp: reserving a session for the holders of a
// session key.

import "encoding/binary"

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

func (*Register) Type() Type     { return TypeRegister }
func (*RegisterResp) Type() Type { return TypeRegisterResp }

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

func readRegister(r *reader) *Register {
	v := &Register{ReqID: r.u64("request id")}
	v.Cookie = r.bytes(MaxCookieLen, "cookie")
	v.Session = r.name("session")
	r.array(v.Verifier[:], "verifier")
	v.TTLSeconds = r.u32("ttl")
	r.array(v.Signature[:], "signature")
	r.padding()
	return v
}

func readRegisterResp(r *reader) *RegisterResp {
	v := &RegisterResp{ReqID: r.u64("request id")}
	v.Status = RegisterStatus(r.u8("status"))
	v.Expires = r.u64("expiry")
	if v.Status > RegisterRefreshed {
		r.fail("register status")
	}
	r.end()
	return v
}
