package secure

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"testing"
)

// fromWordsBig is toWords' inverse.
func fromWordsBig(w []uint64) *big.Int {
	x := new(big.Int)
	for i := len(w) - 1; i >= 0; i-- {
		x.Lsh(x, 64).Or(x, new(big.Int).SetUint64(w[i]))
	}
	return x
}

// randomOdd returns a random odd number of exactly bits bits (bits ≥ 2).
func randomOdd(t testing.TB, bits int) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(bigOne, uint(bits-1)))
	if err != nil {
		t.Fatal(err)
	}
	return n.SetBit(n, bits-1, 1).SetBit(n, 0, 1)
}

// randomBelow returns a random number in [0, n).
func randomBelow(t testing.TB, n *big.Int) *big.Int {
	x, err := rand.Int(rand.Reader, n)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

var montgomerySizes = []int{2, 3, 17, 63, 64, 65, 127, 128, 129, 511, 1023, 1024, 1025, 1535, 1536, 2047, 2048}

// implementations are montgomery's loops for s words to test: the Go
// ones, and the assembly where this machine runs it.
func implementations(s int) map[string]montImpl {
	impls := map[string]montImpl{"go": goMont}
	if impl, ok := fastMont(s); ok {
		impls["asm"] = impl
	}
	return impls
}

// TestMontgomeryArithmetic checks mul, sqr, double, exp2 and exp against
// math/big on random odd moduli of many sizes (full and partial top
// words; the assembly's sizes among them), with operands at the edges
// (0, 1, n−1), for each implementation of mul's rows.
func TestMontgomeryArithmetic(t *testing.T) {
	if _, ok := implementations(16)["asm"]; !ok {
		t.Log("no assembly on this machine: testing the Go rows only")
	}
	for _, bits := range montgomerySizes {
		for name, impl := range implementations((bits + 63) / 64) {
			t.Run(fmt.Sprintf("%d-bits/%s", bits, name), func(t *testing.T) {
				testMontgomery(t, bits, impl)
			})
		}
	}
}

func testMontgomery(t *testing.T, bits int, impl montImpl) {
	for k := range 7 {
		n := randomOdd(t, bits)
		if k == 0 {
			// All ones: the operands near n carry through every word.
			n = new(big.Int).Sub(new(big.Int).Lsh(bigOne, uint(bits)), bigOne)
		}
		if n.Cmp(bigOne) == 0 {
			continue
		}
		m := newMontgomery(n, impl)
		s := len(m.n)
		r := new(big.Int).Lsh(bigOne, uint(64*s))
		rInv := new(big.Int).ModInverse(r, n)
		if got := fromWordsBig(m.one); got.Cmp(new(big.Int).Mod(r, n)) != 0 {
			t.Fatalf("n=%x: one = %x", n, got)
		}
		operands := []*big.Int{big.NewInt(0), big.NewInt(1), new(big.Int).Sub(n, bigOne)}
		for range 5 {
			operands = append(operands, randomBelow(t, n))
		}
		z := make([]uint64, s)
		for _, x := range operands {
			for _, y := range operands {
				m.mul(z, toWords(x, s), toWords(y, s))
				want := new(big.Int).Mul(x, y)
				want.Mul(want, rInv).Mod(want, n)
				if got := fromWordsBig(z); got.Cmp(want) != 0 {
					t.Fatalf("n=%x: mul(%x, %x) = %x, want %x", n, x, y, got, want)
				}
			}
			// z aliasing an operand
			copy(z, toWords(x, s))
			m.mul(z, z, z)
			want := new(big.Int).Mul(x, x)
			want.Mul(want, rInv).Mod(want, n)
			if got := fromWordsBig(z); got.Cmp(want) != 0 {
				t.Fatalf("n=%x: mul(z, z, z) for %x = %x, want %x", n, x, got, want)
			}
			copy(z, toWords(x, s))
			m.sqr(z, z)
			if got := fromWordsBig(z); got.Cmp(want) != 0 {
				t.Fatalf("n=%x: sqr(z, z) for %x = %x, want %x", n, x, got, want)
			}
			copy(z, toWords(x, s))
			m.double(z, z)
			want = new(big.Int).Lsh(x, 1)
			if want.Mod(want, n); fromWordsBig(z).Cmp(want) != 0 {
				t.Fatalf("n=%x: double(%x) = %x, want %x", n, x, fromWordsBig(z), want)
			}
		}
		for range 3 {
			e := randomBelow(t, new(big.Int).Lsh(bigOne, uint(bits+3)))
			e.SetBit(e, 0, 1) // e > 0
			wantOf := func(a *big.Int) *big.Int {
				w := new(big.Int).Exp(a, e, n)
				return w.Mul(w, r).Mod(w, n)
			}
			m.exp2(z, e)
			if got, want := fromWordsBig(z), wantOf(bigTwo); got.Cmp(want) != 0 {
				t.Fatalf("n=%x: exp2(%x) = %x, want %x", n, e, got, want)
			}
			if n.Cmp(big.NewInt(3)) <= 0 {
				continue
			}
			a := new(big.Int).Add(randomBelow(t, new(big.Int).Sub(n, bigTwo)), bigTwo) // 2 ≤ a < n
			if a.Cmp(n) >= 0 {
				continue
			}
			m.exp(z, a, e)
			if got, want := fromWordsBig(z), wantOf(a); got.Cmp(want) != 0 {
				t.Fatalf("n=%x: exp(%x, %x) = %x, want %x", n, a, e, got, want)
			}
		}
	}
}

// referencePasses is Miller–Rabin to base a with math/big only: what
// millerRabin.passes must agree with.
func referencePasses(n, a *big.Int) bool {
	nm1 := new(big.Int).Sub(n, bigOne)
	s := nm1.TrailingZeroBits()
	d := new(big.Int).Rsh(nm1, s)
	y := new(big.Int).Exp(a, d, n)
	if y.Cmp(bigOne) == 0 || y.Cmp(nm1) == 0 {
		return true
	}
	for range s - 1 {
		y.Mul(y, y).Mod(y, n)
		if y.Cmp(nm1) == 0 {
			return true
		}
		if y.Cmp(bigOne) == 0 {
			return false
		}
	}
	return false
}

// TestMillerRabinAgrees: the Montgomery rounds give math/big's answer on
// random odd numbers (nearly all composite), on primes, and on numbers
// that pass base 2 without being prime.
func TestMillerRabinAgrees(t *testing.T) {
	var ns []*big.Int
	for _, bits := range []int{5, 64, 130, 1024, 1536, 2048} {
		for range 10 {
			ns = append(ns, randomOdd(t, bits))
		}
		if bits > 1024 {
			continue // a prime of 1024 bits is enough, and a bigger one slow to find
		}
		p, err := rand.Prime(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		ns = append(ns, p)
	}
	for _, s := range []string{"2047", "3215031751", "3825123056546413051", "561", "41041"} {
		n, _ := new(big.Int).SetString(s, 10)
		ns = append(ns, n)
	}
	ns = append(ns, chernickCarmichael(t))
	for _, n := range ns {
		// Each way newMillerRabin may take for n: math/big, the Go rows,
		// and the assembly where it has n's size.
		ways := map[string]*millerRabin{"math/big": newMillerRabin(n)}
		ways["math/big"].m = nil
		for name, impl := range implementations((n.BitLen() + 63) / 64) {
			mr := newMillerRabin(n)
			mr.useMontgomery(impl)
			ways[name] = mr
		}
		bases := []*big.Int{bigTwo, new(big.Int).Sub(n, bigTwo)}
		for range 3 {
			bases = append(bases, new(big.Int).Add(randomBelow(t, new(big.Int).Sub(n, big.NewInt(3))), bigTwo))
		}
		for _, a := range bases {
			want := referencePasses(n, a)
			for name, mr := range ways {
				if got := mr.passes(a); got != want {
					t.Fatalf("n=%s, base %s: passes (%s) = %v, the reference says %v", n, a, name, got, want)
				}
			}
		}
	}
}

// BenchmarkMillerRabin1024: one base-2 round on a 1024-bit odd number,
// Montgomery form against math/big's Exp.
func BenchmarkMillerRabin1024(b *testing.B) {
	n := randomOdd(b, 1024)
	if _, ok := fastMont(16); !ok {
		b.Skip("no assembly on this machine")
	}
	b.Run("montgomery", func(b *testing.B) {
		mr := newMillerRabin(n)
		for b.Loop() {
			mr.passes(bigTwo)
		}
	})
	b.Run("montgomery/base3", func(b *testing.B) {
		mr := newMillerRabin(n)
		three := big.NewInt(3)
		for b.Loop() {
			mr.passes(three)
		}
	})
	b.Run("math-big", func(b *testing.B) {
		for b.Loop() {
			referencePasses(n, bigTwo)
		}
	})
}

// TestAssemblyGenerated: montgomery_amd64.s is what _asm/gen.go writes
// (go generate ./pipe/secure rewrites it).
func TestAssemblyGenerated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	out, err := exec.Command("go", "run", "_asm/gen.go").Output()
	if err != nil {
		t.Skipf("cannot run the generator here: %v", err)
	}
	have, err := os.ReadFile("montgomery_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, have) {
		t.Fatal("montgomery_amd64.s differs from what _asm/gen.go writes: run go generate ./pipe/secure")
	}
}
