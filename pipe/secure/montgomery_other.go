//go:build !amd64 || purego

package secure

// fastMontRows: no assembly on this platform.
func fastMontRows(int) func(t, x, y, n []uint64, n0 uint64) uint64 { return nil }

// fastMontSqr: no assembly on this platform.
func fastMontSqr(int) func(t, x, n []uint64, n0 uint64) uint64 { return nil }
