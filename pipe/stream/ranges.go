// Containers of the stream's state: spanSet (sorted disjoint ranges:
// packet numbers received, out-of-order stream ranges) and byteRing (a
// window of stream bytes that grows on demand).

package stream

// span is a half-open interval [lo, hi).
type span struct{ lo, hi uint64 }

// spanSet is a sorted set of disjoint, non-adjacent half-open intervals.
// It is a plain slice because the sets it holds (packet numbers still worth
// acknowledging, out-of-order stream ranges) are small and mostly grow at
// the top, where add is O(1).
type spanSet struct{ s []span }

func (ss *spanSet) len() int { return len(ss.s) }

// contains reports whether x is in the set.
func (ss *spanSet) contains(x uint64) bool {
	for i := len(ss.s) - 1; i >= 0; i-- {
		if x >= ss.s[i].hi {
			return false
		}
		if x >= ss.s[i].lo {
			return true
		}
	}
	return false
}

// overlaps reports whether any of [lo, hi) is in the set.
func (ss *spanSet) overlaps(lo, hi uint64) bool {
	for i := len(ss.s) - 1; i >= 0; i-- {
		if ss.s[i].hi <= lo {
			return false
		}
		if ss.s[i].lo < hi {
			return true
		}
	}
	return false
}

// add inserts [lo, hi), merging with neighbours.
func (ss *spanSet) add(lo, hi uint64) {
	if lo >= hi {
		return
	}
	s := ss.s
	n := len(s)
	// Fast path: at or beyond the top.
	if n == 0 || lo > s[n-1].hi {
		ss.s = append(s, span{lo, hi})
		return
	}
	if lo >= s[n-1].lo {
		if hi > s[n-1].hi {
			s[n-1].hi = hi
		}
		return
	}
	// General case: find the first span with hi >= lo.
	i := 0
	for i < n && s[i].hi < lo {
		i++
	}
	// Spans i..j-1 overlap or touch [lo, hi).
	j := i
	for j < n && s[j].lo <= hi {
		if s[j].lo < lo {
			lo = s[j].lo
		}
		if s[j].hi > hi {
			hi = s[j].hi
		}
		j++
	}
	switch {
	case i == j: // insert
		s = append(s, span{})
		copy(s[i+1:], s[i:])
		s[i] = span{lo, hi}
	default:
		s[i] = span{lo, hi}
		s = append(s[:i+1], s[j:]...)
	}
	ss.s = s
}

// dropOldest removes the lowest spans so that at most max remain.
func (ss *spanSet) dropOldest(max int) {
	if extra := len(ss.s) - max; extra > 0 {
		ss.s = append(ss.s[:0], ss.s[extra:]...)
	}
}

// byteRing holds a window of stream bytes: offset x lives at buf[x%len(buf)].
// It starts small and doubles on demand up to max, so an interactive
// session does not pay for the buffers of a bulk transfer.
type byteRing struct {
	buf []byte
	max int
}

func newByteRing(max int) byteRing {
	return byteRing{buf: make([]byte, min(max, minBuffer)), max: max}
}

// fit grows the ring so that offsets [lo, hi) fit, keeping the bytes of
// [lo, lo+len(buf)) in place. hi-lo must not exceed max.
func (r *byteRing) fit(lo, hi uint64) {
	old := r.buf
	if hi-lo <= uint64(len(old)) {
		return
	}
	n := len(old)
	for uint64(n) < hi-lo {
		n *= 4 // few steps: each new buffer costs page faults
	}
	nb := make([]byte, min(n, r.max))
	for x, end := lo, lo+uint64(len(old)); x < end; {
		src := old[x%uint64(len(old)):]
		dst := nb[x%uint64(len(nb)):]
		k := min(len(src), len(dst), int(end-x))
		copy(dst[:k], src)
		x += uint64(k)
	}
	r.buf = nb
}

// write copies p to offset off, which must fit.
func (r *byteRing) write(off uint64, p []byte) {
	pos := off % uint64(len(r.buf))
	k := copy(r.buf[pos:], p)
	copy(r.buf, p[k:])
}

// read copies len(p) bytes from offset off.
// holds reports whether p is the buffer's own storage for offset off
// (bytes opened in place there).
func (r *byteRing) holds(off uint64, p []byte) bool {
	if len(p) == 0 {
		return false
	}
	pos := off % uint64(len(r.buf))
	return &r.buf[pos] == &p[0]
}

func (r *byteRing) read(off uint64, p []byte) {
	pos := off % uint64(len(r.buf))
	k := copy(p, r.buf[pos:])
	copy(p[k:], r.buf)
}

// span returns the contiguous room for up to n bytes at offset off (fewer
// where the ring wraps); [off, off+n) must fit.
func (r *byteRing) span(off uint64, n int) []byte {
	pos := int(off % uint64(len(r.buf)))
	return r.buf[pos:min(pos+n, len(r.buf)):min(pos+n, len(r.buf))]
}

// spans returns the n bytes at offset off in place: a, then b where they
// wrap around.
func (r *byteRing) spans(off uint64, n int) (a, b []byte) {
	if n == 0 {
		return nil, nil
	}
	a = r.span(off, n)
	if len(a) < n {
		b = r.buf[: n-len(a) : n-len(a)]
	}
	return a, b
}

// appendTo appends n bytes from offset off to b.
func (r *byteRing) appendTo(b []byte, off uint64, n int) []byte {
	pos := int(off % uint64(len(r.buf)))
	k := min(n, len(r.buf)-pos)
	b = append(b, r.buf[pos:pos+k]...)
	return append(b, r.buf[:n-k]...)
}
