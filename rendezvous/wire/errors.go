package wire

// Error: the server's refusal of a request, in a layout that every
// protocol version shares.

import (
	"encoding/binary"
	"fmt"
)

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

func (*Error) Type() Type { return TypeError }

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
