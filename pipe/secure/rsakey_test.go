package secure

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"math/big"
	"math/bits"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestGenerateKey: keys of every size the package uses are valid, of
// exactly their size, made of two distinct primes as the rules say, and
// work with the standard library's OAEP.
func TestGenerateKey(t *testing.T) {
	sizes := []int{2048, 3072, 4096, 2049} // an odd size: p a bit longer than q
	if testing.Short() {
		sizes = sizes[:1]
	}
	for _, bits := range sizes {
		key, err := GenerateKey(context.Background(), bits)
		if err != nil {
			t.Fatalf("GenerateKey(%d): %v", bits, err)
		}
		if err := key.Validate(); err != nil {
			t.Errorf("%d bits: Validate: %v", bits, err)
		}
		if n := key.N.BitLen(); n != bits {
			t.Errorf("%d bits: a %d-bit modulus", bits, n)
		}
		if key.E != 65537 || len(key.Primes) != 2 {
			t.Fatalf("%d bits: E %d, %d primes", bits, key.E, len(key.Primes))
		}
		p, q := key.Primes[0], key.Primes[1]
		checkPrimeRules(t, p, bits-bits/2)
		checkPrimeRules(t, q, bits/2)
		if diff := new(big.Int).Sub(p, q); diff.Abs(diff).Cmp(new(big.Int).Lsh(bigOne, uint(bits/2-100))) <= 0 {
			t.Errorf("%d bits: |p−q| = %v, too small", bits, diff)
		}
		lambda := lcmMinusOne(p, q)
		if ed := new(big.Int).Mul(key.D, big.NewInt(65537)); ed.Mod(ed, lambda).Cmp(bigOne) != 0 {
			t.Errorf("%d bits: D is not 65537⁻¹ mod lcm(p−1, q−1)", bits)
		}
		secret := []byte("thirty-two bytes of secret_R ...")
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &key.PublicKey, secret, []byte("label"))
		if err != nil {
			t.Fatalf("%d bits: EncryptOAEP: %v", bits, err)
		}
		got, err := rsa.DecryptOAEP(sha256.New(), nil, key, ct, []byte("label"))
		if err != nil || !bytes.Equal(got, secret) {
			t.Errorf("%d bits: DecryptOAEP = %q, %v", bits, got, err)
		}
	}
	if _, err := GenerateKey(context.Background(), 1024); err == nil {
		t.Error("GenerateKey(1024) made a key below MinRSABits")
	}
}

// checkPrimeRules checks one prime of a key: its size and top two bits,
// not 1 mod 65537, and prime by the standard library's own test.
func checkPrimeRules(t *testing.T, p *big.Int, bits int) {
	t.Helper()
	if p.BitLen() != bits || p.Bit(bits-2) != 1 {
		t.Errorf("prime of %d bits, bit %d %d; want %d bits, top two set", p.BitLen(), bits-2, p.Bit(bits-2), bits)
	}
	if new(big.Int).Mod(p, big.NewInt(65537)).Cmp(bigOne) == 0 {
		t.Error("a prime is 1 mod 65537")
	}
	if !p.ProbablyPrime(20) {
		t.Errorf("%v is not prime", p)
	}
}

// TestPrimePairOffer: a prime goes to an empty slot of its size, and not
// when it is too close to the other.
func TestPrimePairOffer(t *testing.T) {
	pp := &primePair{bits: [2]int{1025, 1024}, minDiffBits: 1024/2 - 100}
	q := new(big.Int).Lsh(bigOne, 1023)
	pp.offer(q)
	if pp.found[1] != q || pp.found[0] != nil {
		t.Fatalf("a 1024-bit prime went to %v", pp.found)
	}
	if bits, ok := pp.wanted(1); !ok || bits != 1025 {
		t.Fatalf("wanted(1) = %d, %v; want the 1025 bits of p", bits, ok)
	}
	pp.offer(new(big.Int).Add(q, bigTwo)) // no empty slot of its size
	if pp.found[0] != nil {
		t.Fatal("a 1024-bit prime went to p's slot")
	}
	p := new(big.Int).Lsh(bigOne, 1024)
	pp.offer(p)
	if pp.found[0] != p {
		t.Fatal("p was not taken")
	}
	if _, ok := pp.wanted(0); ok {
		t.Fatal("a complete pair wants more")
	}

	pp = &primePair{bits: [2]int{1024, 1024}, minDiffBits: 1024/2 - 100}
	pp.offer(q)
	for _, shift := range []uint{1024/2 - 101, 1024/2 - 100} {
		pp.offer(new(big.Int).Add(q, new(big.Int).Lsh(bigOne, shift)))
		if pp.found[1] != nil {
			t.Fatalf("a prime 2^%d from the other was taken", shift)
		}
	}
	far := new(big.Int).Add(q, new(big.Int).Lsh(bigOne, 1024/2-99))
	pp.offer(far)
	if pp.found[1] != far {
		t.Fatal("a prime far enough from the other was not taken")
	}
}

func lcmMinusOne(p, q *big.Int) *big.Int {
	pm1, qm1 := new(big.Int).Sub(p, bigOne), new(big.Int).Sub(q, bigOne)
	l := new(big.Int).Mul(pm1, qm1)
	return l.Quo(l, new(big.Int).GCD(nil, nil, pm1, qm1))
}

// TestProbablyPrime: the Miller–Rabin test accepts primes and rejects
// composites that fool weaker tests: strong pseudoprimes to base 2 (which
// only the random bases catch) and Carmichael numbers (which fool
// Fermat's test for every base prime to them).
func TestProbablyPrime(t *testing.T) {
	primes := []string{
		"5", "7", "65537", "2147483647", "2305843009213693951", // 2^61−1
		"170141183460469231731687303715884105727", // 2^127−1
	}
	for _, s := range primes {
		n, _ := new(big.Int).SetString(s, 10)
		if ok, err := probablyPrime(n, 40); !ok || err != nil {
			t.Errorf("the prime %s: probablyPrime = %v, %v", s, ok, err)
		}
	}
	// The Mersenne prime 2^1279 − 1 with the rounds of its size.
	m := new(big.Int).Sub(new(big.Int).Lsh(bigOne, 1279), bigOne)
	if ok, err := probablyPrime(m, millerRabinRounds(1279)); !ok || err != nil {
		t.Errorf("2^1279−1: probablyPrime = %v, %v", ok, err)
	}

	strongBase2 := []string{
		"2047", "3215031751", // the smallest to base 2; to bases 2, 3, 5, 7
		"3825123056546413051",       // to every prime base up to 23
		"318665857834031151167461",  // up to 37
		"3317044064679887385961981", // up to 41
	}
	carmichael := []string{"561", "41041", "825265", "321197185", "5394826801"}
	carmichael = append(carmichael, chernickCarmichael(t).String())
	for _, s := range append(strongBase2, carmichael...) {
		n, _ := new(big.Int).SetString(s, 10)
		if n.ProbablyPrime(0) {
			t.Fatalf("%s is prime: not a test case", s)
		}
		// Some of these have strong liars for up to a quarter of the
		// bases, the worst case: 64 rounds make a false pass 2^-128.
		if ok, err := probablyPrime(n, 64); ok || err != nil {
			t.Errorf("the composite %s: probablyPrime = %v, %v", s, ok, err)
		}
	}
	for _, s := range strongBase2 {
		n, _ := new(big.Int).SetString(s, 10)
		if !newMillerRabin(n).passes(bigTwo) {
			t.Errorf("%s is not a strong pseudoprime to base 2: not a test case", s)
		}
	}
}

// chernickCarmichael returns a Carmichael number of some 200 bits,
// (6k+1)(12k+1)(18k+1) with all three factors prime (Chernick, 1939).
func chernickCarmichael(t *testing.T) *big.Int {
	k := new(big.Int).Lsh(bigOne, 64)
	for range 1_000_000 {
		k.Add(k, bigOne)
		n := big.NewInt(1)
		allPrime := true
		for _, m := range []int64{6, 12, 18} {
			f := new(big.Int).Mul(k, big.NewInt(m))
			f.Add(f, bigOne)
			if !f.ProbablyPrime(10) {
				allPrime = false
				break
			}
			n.Mul(n, f)
		}
		if allPrime {
			return n
		}
	}
	t.Fatal("no Chernick Carmichael number found")
	return nil
}

// TestSieve: every candidate the sieve yields has no small factor, is
// not 1 mod 65537, is odd and of its size; and the sieve skips no number
// that has none of those properties.
func TestSieve(t *testing.T) {
	s, err := newSieve(1024)
	if err != nil {
		t.Fatal(err)
	}
	prev := new(big.Int).Sub(s.base, bigTwo)
	for range 300 { // about 200 per window: into the second
		c := s.next()
		if c == nil {
			t.Fatal("the sieve ended within two windows of a random start")
		}
		for x := new(big.Int).Add(prev, bigTwo); x.Cmp(c) < 0; x.Add(x, bigTwo) {
			if !hasSmallFactor(x) {
				t.Fatalf("the sieve skipped %v, which has no small factor", x)
			}
		}
		if hasSmallFactor(c) || c.BitLen() != 1024 || c.Bit(0) != 1 {
			t.Fatalf("the sieve yielded %v", c)
		}
		prev = c
	}
}

// hasSmallFactor is the sieve's rule by trial division.
func hasSmallFactor(x *big.Int) bool {
	m := new(big.Int)
	for _, p := range smallPrimes() {
		if m.Mod(x, big.NewInt(int64(p))).Sign() == 0 {
			return true
		}
	}
	return m.Mod(x, big.NewInt(65537)).Cmp(bigOne) == 0
}

// TestGenerateKeyCancel: a generation whose context ends stops at once,
// with the context's error, and leaves no goroutine.
func TestGenerateKeyCancel(t *testing.T) {
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := GenerateKey(ctx, 4096) // seconds of work under -race
		done <- err
	}()
	// Cancel once both searches run.
	for deadline := time.Now().Add(time.Minute); strings.Count(allStacks(), "secure.randomPrime(") < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the two searches never ran at once:\n%s", allStacks())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("GenerateKey = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("GenerateKey went on for 10 s after its context was cancelled")
	}
	for deadline := time.Now().Add(time.Second); runtime.NumGoroutine() > base && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if strings.Contains(allStacks(), "secure.randomPrime(") || runtime.NumGoroutine() > base {
		t.Fatalf("goroutines left after GenerateKey:\n%s", allStacks())
	}

	ctx, cancel = context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if _, err := GenerateKey(ctx, 2048); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GenerateKey with an expired context = %v", err)
	}
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// BenchmarkGenerateKey2048 compares GenerateKey with the standard
// library's rsa.GenerateKey, and the incremental search with fresh
// candidates (one goroutine, one prime of 1024 bits).
func BenchmarkGenerateKey2048(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		for b.Loop() {
			if _, err := GenerateKey(context.Background(), 2048); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		for b.Loop() {
			if _, err := rsa.GenerateKey(rand.Reader, 2048); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prime/incremental", func(b *testing.B) {
		for b.Loop() {
			if _, err := randomPrime(context.Background(), 1024); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("prime/fresh", func(b *testing.B) {
		for b.Loop() {
			freshPrime(b, 1024)
		}
	})
}

// freshPrime is the alternative to the incremental search that the
// benchmark measures: a fresh random candidate each time, trial-divided
// by the same small primes (stopping at the first factor), then the same
// Miller–Rabin test.
func freshPrime(b *testing.B, bits int) *big.Int {
	groups, primes := primeGroups(), smallPrimes()
	buf := make([]byte, bits/8)
	for {
		rand.Read(buf)
		buf[0] |= 0xc0
		buf[len(buf)-1] |= 1
		c := new(big.Int).SetBytes(buf)
		if sieveRejects(c, groups, primes) {
			continue
		}
		ok, err := probablyPrime(c, millerRabinRounds(bits))
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			return c
		}
	}
}

func sieveRejects(c *big.Int, groups []primeGroup, primes []uint32) bool {
	words := c.Bits()
	for _, g := range groups {
		var r uint
		for i := len(words) - 1; i >= 0; i-- {
			r = bits.Rem(r, uint(words[i]), g.product)
		}
		for i := g.first; i < g.end; i++ {
			if r%uint(primes[i]) == 0 {
				return true
			}
		}
	}
	return new(big.Int).Mod(c, big.NewInt(65537)).Cmp(bigOne) == 0
}
