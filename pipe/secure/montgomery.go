package secure

// Miller–Rabin's exponentiations in Montgomery form, on fixed-size word
// slices, for the key search of rsakey.go. math/big's Exp takes about
// 0.8 ms for a 1024-bit candidate here, these 0.45 ms; almost all of a key's time is
// those exponentiations (one per composite candidate). Two things make
// them faster:
//
//   - Base 2, which rejects nearly every composite, needs no
//     multiplication at all: left to right, each bit of the exponent is a
//     squaring and, for a one bit, a doubling (a shift and at most one
//     subtraction), in Montgomery form as in normal form.
//   - The squarings and products interleave multiplication and
//     reduction row by row (as math/big does), in assembly for the sizes
//     of the key's primes (16, 24 and 32 words) on amd64 processors with
//     MULX, ADCX and ADOX: unrolled rows with two carry chains that run
//     side by side (_asm/gen.go writes it). Elsewhere Miller–Rabin uses
//     math/big, which is faster than the same rows in Go; montRowsGo is
//     the reference the assembly is tested against.
//
// Like math/big, none of this is constant-time; PROTOCOL.md 3.3 says why
// that is acceptable for the session's ephemeral key. The results are
// checked against math/big in montgomery_test.go.

import (
	"math/big"
	"math/bits"
)

// montgomery is the arithmetic modulo an odd n of s words, with R = 2^(64s).
type montgomery struct {
	montImpl
	nBig *big.Int
	n    []uint64 // little-endian words
	n0   uint64   // −n⁻¹ mod 2^64
	one  []uint64 // R mod n: 1 in Montgomery form
	rr   []uint64 // R² mod n: converts into Montgomery form (toMont)
	t    []uint64 // scratch of 2s words for mul and sqr
}

// montImpl is an implementation of montgomery's loops: rows, mul's loop
// (montRowsGo, or the same in assembly), and sqrRows, which squares x
// into t and reduces it, or is nil (sqr is then mul).
type montImpl struct {
	rows    func(t, x, y, n []uint64, n0 uint64) uint64
	sqrRows func(t, x, n []uint64, n0 uint64) uint64
}

// goMont is the implementation in Go, the reference for the others.
var goMont = montImpl{rows: montRowsGo}

// fastMont returns the assembly implementation for s words, if this
// processor runs one.
func fastMont(s int) (montImpl, bool) {
	rows, sqr := fastMontRows(s), fastMontSqr(s)
	return montImpl{rows, sqr}, rows != nil && sqr != nil
}

// newMontgomery returns the arithmetic modulo n, which must be odd and
// above 1, with impl's loops.
func newMontgomery(n *big.Int, impl montImpl) *montgomery {
	s := (n.BitLen() + 63) / 64
	m := &montgomery{montImpl: impl, nBig: n, n: toWords(n, s), t: make([]uint64, 2*s)}
	// n0 = −n⁻¹ mod 2^64 by Newton's iteration: each step doubles the
	// correct low bits of inv (n·n ≡ 1 mod 8 gives 3 to start from).
	inv := m.n[0]
	for range 5 {
		inv *= 2 - m.n[0]*inv
	}
	m.n0 = -inv
	r := new(big.Int).Lsh(bigOne, uint(64*s))
	m.one = toWords(r.Mod(r, n), s)
	return m
}

// toMont sets z to a·R mod n, for 0 ≤ a < n. R² mod n is computed at the
// first call: base 2, which rejects nearly every candidate, never needs it.
func (m *montgomery) toMont(z []uint64, a *big.Int) {
	s := len(m.n)
	if m.rr == nil {
		r := new(big.Int).Lsh(bigOne, uint(64*s))
		m.rr = toWords(r.Mod(r.Mul(r, r), m.nBig), s)
	}
	m.mul(z, toWords(a, s), m.rr)
}

// toWords returns x (0 ≤ x < 2^(64s)) as s little-endian words.
func toWords(x *big.Int, s int) []uint64 {
	w := make([]uint64, s)
	b := x.Bytes()
	for i, c := range b {
		pos := len(b) - 1 - i // byte position from the least significant
		w[pos/8] |= uint64(c) << (8 * (pos % 8))
	}
	return w
}

// sqr sets z = x²·R⁻¹ mod n, for x < n; z may be x. The square's
// products x[i]·x[j], i ≠ j, are the same in pairs: computed once and
// doubled, they make a squaring about a fifth cheaper than mul.
func (m *montgomery) sqr(z, x []uint64) {
	if m.sqrRows == nil {
		m.mul(z, x, x)
		return
	}
	s := len(m.n)
	t := m.t[:2*s]
	carry := m.sqrRows(t, x[:s], m.n, m.n0)
	m.reduceInto(z[:s], t[s:], carry)
}

// mul sets z = x·y·R⁻¹ mod n, for x, y < n; z may be x or y.
func (m *montgomery) mul(z, x, y []uint64) {
	s := len(m.n)
	t := m.t[:2*s]
	clear(t)
	carry := m.rows(t, x[:s], y[:s], m.n, m.n0)
	m.reduceInto(z[:s], t[s:], carry)
}

// montRowsGo is the rows of mul in Go: row i adds x·y[i] and then q·n
// to t[i:i+s], with q making t[i] zero, and the carries to t[i+s]; so
// the result is the top half t[s:2s] with the returned carry, below 2n.
func montRowsGo(t, x, y, n []uint64, n0 uint64) uint64 {
	s := len(n)
	var carry uint64
	for i := range s {
		row := t[i : i+s]
		c1 := addMulGo(row, x, y[i])
		c2 := addMulGo(row, n, row[0]*n0)
		sum, cc := bits.Add64(carry, c1, 0)
		sum, cc2 := bits.Add64(sum, c2, 0)
		t[i+s] = sum
		carry = cc + cc2
	}
	return carry
}

// addMulGo sets z[0:len(x)] += x·y and returns the carry word.
func addMulGo(z, x []uint64, y uint64) uint64 {
	z = z[:len(x)]
	var c uint64
	for j, xj := range x {
		hi, lo := bits.Mul64(xj, y)
		var cc uint64
		lo, cc = bits.Add64(lo, z[j], 0)
		hi += cc
		lo, cc = bits.Add64(lo, c, 0)
		hi += cc
		z[j], c = lo, hi
	}
	return c
}

// reduceInto sets z = t − n when the value top·2^(64s) + t is at least n,
// else z = t; that value must be below 2n.
func (m *montgomery) reduceInto(z, t []uint64, top uint64) {
	n, s := m.n, len(m.n)
	if top == 0 {
		// Compare t with n from the top word down.
		for i := s - 1; i >= 0; i-- {
			if t[i] != n[i] {
				if t[i] < n[i] {
					copy(z, t)
					return
				}
				break
			}
		}
	}
	var b uint64
	for i := range s {
		z[i], b = bits.Sub64(t[i], n[i], b)
	}
}

// double sets z = 2x mod n, for x < n.
func (m *montgomery) double(z, x []uint64) {
	s := len(m.n)
	var c uint64
	for i := range s {
		z[i], c = x[i]<<1|c, x[i]>>63
	}
	m.reduceInto(z, z, c)
}

// exp2 sets z to 2^e in Montgomery form (2^e·R mod n), for e > 0.
func (m *montgomery) exp2(z []uint64, e *big.Int) {
	copy(z, m.one)
	for i := e.BitLen() - 1; i >= 0; i-- {
		m.sqr(z, z)
		if e.Bit(i) == 1 {
			m.double(z, z)
		}
	}
}

// exp sets z to a^e in Montgomery form, for 1 < a < n and e > 0, by a
// left-to-right scan in windows of up to expWindow bits of odd value.
func (m *montgomery) exp(z []uint64, a *big.Int, e *big.Int) {
	const expWindow = 5
	s := len(m.n)
	// odd[k] = a^(2k+1) in Montgomery form
	var odd [1 << (expWindow - 1)][]uint64
	odd[0] = make([]uint64, s)
	m.toMont(odd[0], a)
	sq := make([]uint64, s)
	m.sqr(sq, odd[0])
	for k := 1; k < len(odd); k++ {
		odd[k] = make([]uint64, s)
		m.mul(odd[k], odd[k-1], sq)
	}
	copy(z, m.one)
	for i := e.BitLen() - 1; i >= 0; {
		if e.Bit(i) == 0 {
			m.sqr(z, z)
			i--
			continue
		}
		// The longest window e[i..j] of at most expWindow bits that ends
		// on a one bit.
		j := max(i-expWindow+1, 0)
		for e.Bit(j) == 0 {
			j++
		}
		var w uint
		for k := i; k >= j; k-- {
			m.sqr(z, z)
			w = w<<1 | e.Bit(k)
		}
		m.mul(z, z, odd[w>>1])
		i = j - 1
	}
}
