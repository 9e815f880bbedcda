package attacker

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// The handshake's wire format, version 2 (pipe/secure/messages.go), as an
// attacker in the middle reads and rewrites it:
//
//	Hello      = 0xE8 | hsid (16) | len (2) | pk_I | Ya (32)
//	Reply      = 0xE9 | hsid (16) | ref(Hello) (16) | len (2) | pk_R | Yb (32) | len (2) | ct_R | early tag (32)
//	Finish     = 0xEA | hsid (16) | ref(Reply) (16) | len (2) | ct_I | confirm_I (32)
//	Finished   = 0xEB | hsid (16) | ref(Finish) (16) | confirm_R (32)
//	AuthFailed = 0xEC | hsid (16) | ref(Hello) (16) | ref(failed) (16)
//	Cancel     = 0xED | hsid (16) | ref(Hello) (16) | tag (32)
//
// ref(m) is the first 16 bytes of SHA-256 of the whole datagram m.

// Ref is ref(m).
func Ref(m []byte) [16]byte {
	s := sha256.Sum256(m)
	return [16]byte(s[:16])
}

// refFields returns the offsets of the ref fields of a handshake message.
func refFields(m []byte) []int {
	if len(m) < 33 {
		return nil
	}
	switch m[0] {
	case TypeReply, TypeFinish, TypeFinished, TypeCancel:
		return []int{17}
	case TypeAuthFailed:
		if len(m) >= 49 {
			return []int{17, 33}
		}
	}
	return nil
}

var errShort = errors.New("attacker: truncated handshake message")

// field is a variable field of a message: its bytes start at off, n long.
type field struct{ off, n int }

func varField(m []byte, off int) (field, error) {
	if len(m) < off+2 {
		return field{}, errShort
	}
	n := int(binary.BigEndian.Uint16(m[off:]))
	if len(m) < off+2+n {
		return field{}, errShort
	}
	return field{off + 2, n}, nil
}

// HelloParts returns the offsets of a Hello's pk_I and Ya.
func HelloParts(m []byte) (pk, ya field, err error) {
	if len(m) < 17 || m[0] != TypeHello {
		return pk, ya, errShort
	}
	if pk, err = varField(m, 17); err != nil {
		return pk, ya, err
	}
	ya = field{pk.off + pk.n, 32}
	if len(m) != ya.off+32 {
		return pk, ya, errShort
	}
	return pk, ya, nil
}

// ReplyParts returns the offsets of a Reply's pk_R, Yb and ct_R.
func ReplyParts(m []byte) (pk, yb, ct field, err error) {
	if len(m) < 33 || m[0] != TypeReply {
		return pk, yb, ct, errShort
	}
	if pk, err = varField(m, 33); err != nil {
		return
	}
	yb = field{pk.off + pk.n, 32}
	if ct, err = varField(m, yb.off+32); err != nil {
		return
	}
	if len(m) != ct.off+ct.n+32 {
		err = errShort
	}
	return
}

// FinishParts returns the offsets of a Finish's ct_I.
func FinishParts(m []byte) (ct field, err error) {
	if len(m) < 33 || m[0] != TypeFinish {
		return ct, errShort
	}
	if ct, err = varField(m, 33); err != nil {
		return ct, err
	}
	if len(m) != ct.off+ct.n+32 {
		return ct, errShort
	}
	return ct, nil
}

// Get returns a field's bytes.
func Get(m []byte, f field) []byte { return m[f.off : f.off+f.n] }

// Replace returns m with field f replaced by v, whose length is written
// into f's length prefix when f is a variable field (hasLen).
func Replace(m []byte, f field, v []byte, hasLen bool) []byte {
	out := append([]byte(nil), m[:f.off]...)
	if hasLen {
		binary.BigEndian.PutUint16(out[f.off-2:], uint16(len(v)))
	}
	out = append(out, v...)
	return append(out, m[f.off+f.n:]...)
}

// IsHandshake reports a v2 handshake message.
func IsHandshake(m []byte) bool { return len(m) > 0 && m[0] >= TypeHello && m[0] <= TypeCancel }

// IsData reports a Data, Keepalive or DataHead packet.
func IsData(m []byte) bool { return len(m) > 0 && m[0] >= 0xD0 && m[0] <= 0xD2 }
