package path

import (
	"net/netip"
	"testing"
)

// BenchmarkBatchLoopback measures the path layer alone over loopback: a
// batch of 16 datagrams of 1200 bytes sent with SendBatch (GSO where the
// kernel has it) and read back one by one with Recv (GRO). With -benchmem
// it shows the allocations per batch in steady state.
//
//	go test -run XXX -bench BatchLoopback -benchmem ./pipe/path/
func BenchmarkBatchLoopback(b *testing.B) {
	for _, offload := range []bool{true, false} {
		name := "gso-gro"
		if !offload {
			name = "plain"
		}
		b.Run(name, func(b *testing.B) {
			ua, aAddr := listenB(b)
			ub, bAddr := listenB(b)
			id := [16]byte{7}
			a := New(ua, netip.AddrPort{}, id, []netip.AddrPort{bAddr}, nil, Options{NoOffload: !offload})
			bb := New(ub, netip.AddrPort{}, id, []netip.AddrPort{aAddr}, nil, Options{NoOffload: !offload})
			defer a.Close()
			defer bb.Close()
			a.Confirm(bAddr)
			bb.Confirm(aAddr)
			const n = 16
			arena := make([]byte, n*1200)
			batch := make([][]byte, n)
			for i := range batch {
				batch[i] = arena[i*1200 : (i+1)*1200]
			}
			buf := make([]byte, 65536)
			b.SetBytes(n * 1200)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := a.SendBatch(batch); err != nil {
					b.Fatal(err)
				}
				for range n {
					if _, _, err := bb.Recv(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
