//go:build amd64 && !purego

package secure

import "golang.org/x/sys/cpu"

//go:generate sh -c "go run _asm/gen.go > montgomery_amd64.s"

// montRowsADX<s> runs the rows of montgomery.mul for s words on t (2s
// words, zero) and returns the carry out of t[2s−1] (see _asm/gen.go).
//
//go:noescape
func montRowsADX16(t, x, y, n *uint64, n0 uint64) (carry uint64)

//go:noescape
func montRowsADX24(t, x, y, n *uint64, n0 uint64) (carry uint64)

//go:noescape
func montRowsADX32(t, x, y, n *uint64, n0 uint64) (carry uint64)

// montSqrADX<s> sets t (2s words) to x² and reduces it as mul's rows do,
// returning the carry out of t[2s−1] (see _asm/gen.go).
//
//go:noescape
func montSqrADX16(t, x, n *uint64, n0 uint64) (carry uint64)

//go:noescape
func montSqrADX24(t, x, n *uint64, n0 uint64) (carry uint64)

//go:noescape
func montSqrADX32(t, x, n *uint64, n0 uint64) (carry uint64)

// fastMontSqr returns the assembly squaring for s words where this
// processor has it, or nil.
func fastMontSqr(s int) func(t, x, n []uint64, n0 uint64) uint64 {
	if !cpu.X86.HasADX || !cpu.X86.HasBMI2 {
		return nil
	}
	var sqr func(t, x, n *uint64, n0 uint64) uint64
	switch s {
	case 16:
		sqr = montSqrADX16
	case 24:
		sqr = montSqrADX24
	case 32:
		sqr = montSqrADX32
	default:
		return nil
	}
	return func(t, x, n []uint64, n0 uint64) uint64 {
		// The routine reads s words of x and n and writes 2s of t.
		_, _, _ = t[2*s-1], x[s-1], n[s-1]
		return sqr(&t[0], &x[0], &n[0], n0)
	}
}

// fastMontRows returns the assembly rows for s words where this processor
// has them (MULX, ADCX and ADOX), or nil.
func fastMontRows(s int) func(t, x, y, n []uint64, n0 uint64) uint64 {
	if !cpu.X86.HasADX || !cpu.X86.HasBMI2 {
		return nil
	}
	var rows func(t, x, y, n *uint64, n0 uint64) uint64
	switch s {
	case 16:
		rows = montRowsADX16
	case 24:
		rows = montRowsADX24
	case 32:
		rows = montRowsADX32
	default:
		return nil
	}
	return func(t, x, y, n []uint64, n0 uint64) uint64 {
		// The routine reads s words of x, y and n and writes 2s of t.
		_, _, _, _ = t[2*s-1], x[s-1], y[s-1], n[s-1]
		return rows(&t[0], &x[0], &y[0], &n[0], n0)
	}
}
