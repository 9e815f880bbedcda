package secure

// The session's ephemeral RSA key, made faster than rsa.GenerateKey
// without weakening it. The rules (FIPS 186-5, A.1.3 and B.3; the checks
// that matter for a key that lives for one handshake):
//
//   - p has bits−bits/2 bits and q bits/2, each with its top two bits set,
//     so N = p·q has exactly bits bits; both odd, drawn from crypto/rand.
//   - p mod 65537 ≠ 1 and q mod 65537 ≠ 1, so e = 65537 is prime to
//     p−1 and q−1; |p−q| > 2^(bits/2−100); D = e⁻¹ mod lcm(p−1, q−1) and
//     D > 2^(bits/2).
//   - Each prime passes Miller–Rabin with base 2 (which rejects almost
//     every composite at the cost of one modular exponentiation), then
//     millerRabinRounds rounds with bases from crypto/rand, the count of
//     FIPS 186-5 Table B.1 (Miller–Rabin only) for that prime size.
//
// Where the time goes, and what makes it shorter:
//
//   - Almost all of it is the one exponentiation that rejects each
//     composite candidate. A sieve by the odd primes below sieveBound
//     leaves only the candidates without a small factor (about 1 in 10 of
//     the odd numbers), so a 1024-bit prime takes some 34 exponentiations
//     on composites instead of about 355.
//   - The candidates are the odd numbers from one random start upwards
//     (incremental search, as OpenSSL before 3.0 did): the sieve is then
//     a few additions per small prime for a whole window of candidates,
//     where fresh random candidates pay a trial division by every small
//     prime for each survivor. It does not weaken the key: the start is
//     uniform, so each prime of the size can come out, with a chance in
//     proportion to the gap below it instead of exactly uniform; that
//     costs a few bits of the ~1000 bits of entropy of a 1024-bit prime
//     (Brandt and Damgård, "On generation of probable primes by
//     incremental search", CRYPTO '92), and gives p no structure (no
//     chosen residues; p and q from independent starts).
//   - p and q are searched at once, one goroutine each, and the first
//     done joins the other's search: the wall time is less than that of
//     the slower search, and far less than that of both.
//
//   - Each exponentiation is Montgomery arithmetic in assembly where the
//     processor allows (montgomery.go), about twice as fast as math/big,
//     and base 2 needs no multiplications.
//
// The arithmetic (math/big's, and montgomery.go's) is not constant-time;
// PROTOCOL.md 3.3 says why that is acceptable for this key.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"runtime"
	"slices"
	"sync"
)

// sieveBound bounds the small primes of the sieve.
const sieveBound = 1 << 16

// sieveWindow is how many odd candidates one sieve covers: about six
// primes of 1024 bits lie among them, so one window is nearly always
// enough.
const sieveWindow = 2048

// GenerateKey returns a fresh RSA key of bits bits (2048 to 4096:
// CheckRSABits) with public exponent 65537, precomputed and validated.
// It returns ctx's error, promptly, when ctx ends first, and leaves no
// goroutine behind.
func GenerateKey(ctx context.Context, bits int) (*rsa.PrivateKey, error) {
	if err := CheckRSABits(bits); err != nil {
		return nil, err
	}
	for {
		p, q, err := searchPrimes(ctx, bits)
		if err != nil {
			return nil, err
		}
		key, err := assembleKey(p, q, bits)
		if !errors.Is(err, errOtherPrimes) {
			return key, err
		}
		// D too small: so unlikely (about 2^-1000) that only a broken
		// random source gets here.
	}
}

// errOtherPrimes: these primes do not make a key; draw others.
var errOtherPrimes = errors.New("secure: draw other primes")

// searchPrimes returns p and q for a key of bits bits, found by two
// searches at once: each starts on one of them, and the first done joins
// the other's (a search is memoryless: two at once halve the wait for
// the prime that is left), so both cores work until the pair is complete.
// It returns once both searches have stopped.
func searchPrimes(parent context.Context, bits int) (p, q *big.Int, err error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	pair := &primePair{bits: [2]int{bits - bits/2, bits / 2}, minDiffBits: bits/2 - 100}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pair.search(ctx, cancel, 0)
	}()
	pair.search(ctx, cancel, 1)
	<-done
	if err := parent.Err(); err != nil {
		return nil, nil, err
	}
	return pair.found[0], pair.found[1], pair.err
}

// primePair is what the two searches of searchPrimes share.
type primePair struct {
	bits        [2]int // of p and q
	minDiffBits int    // |p−q| must be above 2^minDiffBits

	mu    sync.Mutex
	found [2]*big.Int
	err   error // the first search's failure, if any
}

// search finds primes for the pair, starting with slot's, until the pair
// is complete (then it stops the other search) or the search fails.
func (pp *primePair) search(ctx context.Context, cancel context.CancelFunc, slot int) {
	for {
		bits, ok := pp.wanted(slot)
		if !ok {
			cancel() // the other search, if still running, is for nothing
			return
		}
		prime, err := randomPrime(ctx, bits)
		if ctx.Err() != nil {
			return // the pair is complete, the other search failed, or the caller gave up
		}
		if err != nil {
			pp.fail(err)
			cancel()
			return
		}
		pp.offer(prime)
	}
}

// wanted returns the size of a prime the pair still lacks, slot's first.
func (pp *primePair) wanted(slot int) (bits int, ok bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for _, i := range []int{slot, 1 - slot} {
		if pp.found[i] == nil && pp.err == nil {
			return pp.bits[i], true
		}
	}
	return 0, false
}

// offer puts prime in an empty slot of its size, unless it is too close
// to the other prime (|p−q| ≤ 2^minDiffBits: 2^-97 for random primes).
func (pp *primePair) offer(prime *big.Int) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for i := range pp.found {
		if pp.found[i] != nil || pp.bits[i] != prime.BitLen() {
			continue
		}
		if other := pp.found[1-i]; other != nil {
			diff := new(big.Int).Sub(prime, other)
			if diff.Abs(diff).Cmp(new(big.Int).Lsh(bigOne, uint(pp.minDiffBits))) <= 0 {
				return
			}
		}
		pp.found[i] = prime
		return
	}
}

// fail records the first failure of the random source.
func (pp *primePair) fail(err error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.err == nil {
		pp.err = err
	}
}

// assembleKey makes the key of p and q, or errOtherPrimes.
func assembleKey(p, q *big.Int, bits int) (*rsa.PrivateKey, error) {
	n := new(big.Int).Mul(p, q)
	if n.BitLen() != bits {
		return nil, fmt.Errorf("secure: internal error: a %d-bit modulus, want %d", n.BitLen(), bits)
	}
	pm1 := new(big.Int).Sub(p, bigOne)
	qm1 := new(big.Int).Sub(q, bigOne)
	lambda := new(big.Int).Mul(pm1, qm1)
	lambda.Quo(lambda, new(big.Int).GCD(nil, nil, pm1, qm1))
	d := new(big.Int).ModInverse(big.NewInt(rsaExponent), lambda)
	if d == nil {
		// p, q ≢ 1 mod 65537 (the sieve), and 65537 is prime.
		return nil, errors.New("secure: internal error: 65537 divides p−1 or q−1")
	}
	if d.BitLen() <= bits/2 {
		return nil, errOtherPrimes
	}
	key := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: n, E: rsaExponent},
		D:         d,
		Primes:    []*big.Int{p, q},
	}
	key.Precompute()
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("secure: the generated RSA key is invalid: %w", err)
	}
	return key, nil
}

var (
	bigOne = big.NewInt(1)
	bigTwo = big.NewInt(2)
)

// randomPrime returns a prime of bits bits with its top two bits set, not
// 1 mod 65537, or ctx's error. It checks ctx before each exponentiation.
func randomPrime(ctx context.Context, bits int) (*big.Int, error) {
	rounds := millerRabinRounds(bits)
	for {
		s, err := newSieve(bits)
		if err != nil {
			return nil, err
		}
		for c := s.next(); c != nil; c = s.next() {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// The session's other runnable goroutines run between two
			// exponentiations: with both searches on the process's Ps they
			// would wait for a preemption, up to 10 ms. (One woken by the
			// network can still wait up to that long, for the runtime's
			// background poll, while both searches keep the Ps busy.)
			runtime.Gosched()
			ok, err := probablyPrime(c, rounds)
			if err != nil {
				return nil, err
			}
			if ok {
				return c, nil
			}
		}
		// The search ran past the top of the size: a fresh start.
	}
}

// millerRabinRounds is the number of random-base Miller–Rabin rounds for
// a random candidate of bits bits: FIPS 186-5 Table B.1 (Miller–Rabin
// only: 5 rounds for 1024-bit primes, error probability 2^-112; 4 for
// 1536 bits, 2^-128; 4 for 2048 bits, 2^-144), with the thresholds between
// and below those sizes that the standard library's key generation uses
// (crypto/internal/fips140/rsa, from BoringSSL's formula).
func millerRabinRounds(bits int) int {
	switch {
	case bits >= 3747:
		return 3
	case bits >= 1345:
		return 4
	case bits >= 476:
		return 5
	case bits >= 400:
		return 6
	case bits >= 347:
		return 7
	case bits >= 308:
		return 8
	case bits >= 55:
		return 27
	}
	return 34
}

// probablyPrime runs Miller–Rabin on n, an odd number above 3: base 2,
// then rounds bases drawn from crypto/rand in [2, n−2]. A prime always
// passes; a random composite passes with the probability of Table B.1.
func probablyPrime(n *big.Int, rounds int) (bool, error) {
	mr := newMillerRabin(n)
	if !mr.passes(bigTwo) {
		return false, nil
	}
	span := new(big.Int).Sub(n, big.NewInt(3)) // bases 2 .. n−2
	for range rounds {
		a, err := rand.Int(rand.Reader, span)
		if err != nil {
			return false, fmt.Errorf("secure: reading random bytes: %w", err)
		}
		if !mr.passes(a.Add(a, bigTwo)) {
			return false, nil
		}
	}
	return true, nil
}

// millerRabin holds n − 1 = d·2^s and n's Montgomery arithmetic for the
// rounds on n; m is nil where there is no assembly for n's size, and
// then the rounds use math/big.
type millerRabin struct {
	n, nm1, d *big.Int
	s         uint
	m         *montgomery
	minus     []uint64 // n − 1 in Montgomery form
	y         []uint64
}

func newMillerRabin(n *big.Int) *millerRabin {
	nm1 := new(big.Int).Sub(n, bigOne)
	s := nm1.TrailingZeroBits()
	mr := &millerRabin{n: n, nm1: nm1, d: new(big.Int).Rsh(nm1, s), s: s}
	if impl, ok := fastMont((n.BitLen() + 63) / 64); ok {
		mr.useMontgomery(impl)
	}
	return mr
}

// useMontgomery makes the rounds use Montgomery arithmetic with impl.
func (mr *millerRabin) useMontgomery(impl montImpl) {
	m := newMontgomery(mr.n, impl)
	mr.m, mr.minus, mr.y = m, make([]uint64, len(m.n)), make([]uint64, len(m.n))
	var b uint64
	for i := range m.n {
		mr.minus[i], b = bits.Sub64(m.n[i], m.one[i], b)
	}
}

// passes reports whether n is a strong probable prime to base a
// (1 < a < n − 1).
func (mr *millerRabin) passes(a *big.Int) bool {
	if mr.m == nil {
		return mr.passesBig(a)
	}
	y := mr.y
	if a.Cmp(bigTwo) == 0 {
		mr.m.exp2(y, mr.d)
	} else {
		mr.m.exp(y, a, mr.d)
	}
	if slices.Equal(y, mr.m.one) || slices.Equal(y, mr.minus) {
		return true
	}
	for range mr.s - 1 {
		mr.m.sqr(y, y)
		switch {
		case slices.Equal(y, mr.minus):
			return true
		case slices.Equal(y, mr.m.one):
			return false // a non-trivial square root of 1
		}
	}
	return false
}

// passesBig is passes with math/big.
func (mr *millerRabin) passesBig(a *big.Int) bool {
	y := new(big.Int).Exp(a, mr.d, mr.n)
	if y.Cmp(bigOne) == 0 || y.Cmp(mr.nm1) == 0 {
		return true
	}
	for range mr.s - 1 {
		y.Mul(y, y).Mod(y, mr.n)
		switch {
		case y.Cmp(mr.nm1) == 0:
			return true
		case y.Cmp(bigOne) == 0:
			return false // a non-trivial square root of 1
		}
	}
	return false
}

// sieve walks the odd numbers from a random start of bits bits up,
// window by window, and yields those with no odd prime factor below
// sieveBound that are not 1 mod 65537.
type sieve struct {
	bits     int
	base     *big.Int // the window's first candidate (odd)
	residues []uint32 // base mod smallPrimes()[i]
	r65537   uint32   // base mod 65537
	marked   [sieveWindow]bool
	k        int // the next offset to look at: candidate base + 2k
}

func newSieve(bits int) (*sieve, error) {
	b := make([]byte, (bits+7)/8)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("secure: reading random bytes: %w", err)
	}
	start := new(big.Int).SetBytes(b)
	start.SetBit(start, bits-1, 1).SetBit(start, bits-2, 1).SetBit(start, 0, 1)
	for i := len(b) * 8; i >= bits; i-- {
		start.SetBit(start, i, 0)
	}
	s := &sieve{bits: bits, base: start, residues: make([]uint32, len(smallPrimes()))}
	s.setResidues()
	s.mark()
	return s, nil
}

// next returns the next candidate without a small factor, or nil once the
// candidates reach bits+1 bits.
func (s *sieve) next() *big.Int {
	for {
		for ; s.k < sieveWindow; s.k++ {
			if s.marked[s.k] {
				continue
			}
			c := new(big.Int).Add(s.base, big.NewInt(2*int64(s.k)))
			s.k++
			if c.BitLen() != s.bits {
				return nil
			}
			return c
		}
		s.advance()
	}
}

// advance moves to the next window.
func (s *sieve) advance() {
	const step = 2 * sieveWindow
	s.base.Add(s.base, big.NewInt(step))
	primes := smallPrimes()
	for i, p := range primes {
		s.residues[i] = uint32((uint64(s.residues[i]) + step) % uint64(p))
	}
	s.r65537 = uint32((uint64(s.r65537) + step) % 65537)
	s.marked = [sieveWindow]bool{}
	s.k = 0
	s.mark()
}

// mark marks the window's candidates base + 2k that a small prime divides
// or that are 1 mod 65537: base + 2k ≡ t (mod p) for k ≡ (t − r)·2⁻¹.
func (s *sieve) mark() {
	markWhere := func(p, r, t uint64) {
		k := (t + p - r) % p * ((p + 1) / 2) % p
		for ; k < sieveWindow; k += p {
			s.marked[k] = true
		}
	}
	for i, p := range smallPrimes() {
		markWhere(uint64(p), uint64(s.residues[i]), 0)
	}
	markWhere(65537, uint64(s.r65537), 1)
}

// setResidues computes base mod every small prime, a word-sized product
// of primes at a time.
func (s *sieve) setResidues() {
	words := s.base.Bits()
	rem := func(m uint) uint {
		var r uint
		for i := len(words) - 1; i >= 0; i-- {
			r = bits.Rem(r, uint(words[i]), m)
		}
		return r
	}
	primes := smallPrimes()
	for _, g := range primeGroups() {
		r := rem(g.product)
		for i := g.first; i < g.end; i++ {
			s.residues[i] = uint32(r % uint(primes[i]))
		}
	}
	s.r65537 = uint32(rem(65537))
}

// primeGroup is the product of smallPrimes()[first:end], which fits a word.
type primeGroup struct {
	product    uint
	first, end int
}

// smallPrimes are the odd primes below sieveBound.
var smallPrimes = sync.OnceValue(func() []uint32 {
	composite := make([]bool, sieveBound)
	primes := make([]uint32, 0, sieveBound/10)
	for n := 3; n < sieveBound; n += 2 {
		if composite[n] {
			continue
		}
		primes = append(primes, uint32(n))
		for m := n * n; m < sieveBound; m += 2 * n {
			composite[m] = true
		}
	}
	return primes
})

var primeGroups = sync.OnceValue(func() []primeGroup {
	primes := smallPrimes()
	var groups []primeGroup
	for i := 0; i < len(primes); {
		g := primeGroup{product: 1, first: i}
		for ; i < len(primes); i++ {
			hi, lo := bits.Mul(g.product, uint(primes[i]))
			if hi != 0 {
				break
			}
			g.product = lo
		}
		g.end = i
		groups = append(groups, g)
	}
	return groups
})
