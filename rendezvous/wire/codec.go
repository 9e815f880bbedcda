package wire

// The encoding's building blocks: append functions for the field types
// (string, bytes, address, candidate list) and the reader that decodes
// them, whose first failure sticks.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

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

// nameOrEmpty reads a string field that is empty or satisfies ValidName:
// the peer of a find for any peer is empty.
func (r *reader) nameOrEmpty(what string) string {
	if r.err == nil && len(r.b) > 0 && r.b[0] == 0 {
		r.b = r.b[1:]
		return ""
	}
	return r.name(what)
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
