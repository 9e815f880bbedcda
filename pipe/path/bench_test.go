package path

import (
	"net/netip"
	"testing"
)

// BenchmarkBatchLoopback measures the path layer alone over loopback: a
// batch of datagrams sent with SendBatch and read back one by one with
// Recv. The cases: GSO and GRO; the plain path (no offload: sendmmsg and
// recvmmsg); the plain path one datagram per system call (the last
// resort, as where the system has no sendmmsg/recvmmsg); and the plain
// path with 64 KiB datagrams (loopback after path MTU probing). With
// -benchmem it shows the allocations per batch in steady state.
//
//	go test -run XXX -bench BatchLoopback -benchmem ./pipe/path/
func BenchmarkBatchLoopback(b *testing.B) {
	for _, tc := range []struct {
		name          string
		offload, each bool
		n, size       int
	}{
		{"gso-gro", true, false, 16, 1200},
		{"plain", false, false, 16, 1200},
		{"plain-each", false, true, 16, 1200},
		{"plain-64K", false, false, 4, 65000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ua, aAddr := listenB(b)
			ub, bAddr := listenB(b)
			id := [16]byte{7}
			a := New(ua, netip.AddrPort{}, id, []netip.AddrPort{bAddr}, nil, Options{NoOffload: !tc.offload})
			bb := New(ub, netip.AddrPort{}, id, []netip.AddrPort{aAddr}, nil, Options{NoOffload: !tc.offload})
			defer a.Close()
			defer bb.Close()
			if tc.each {
				a.testOnlyOneByOne()
				bb.testOnlyOneByOne()
			}
			a.Confirm(bAddr)
			bb.Confirm(aAddr)
			arena := make([]byte, tc.n*tc.size)
			batch := make([][]byte, tc.n)
			for i := range batch {
				batch[i] = arena[i*tc.size : (i+1)*tc.size]
			}
			buf := make([]byte, 65536)
			round := func() {
				if err := a.SendBatch(batch); err != nil {
					b.Fatal(err)
				}
				for range tc.n {
					if _, _, err := bb.Recv(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
			round() // sets up the batch buffers, once per Conn
			b.SetBytes(int64(tc.n * tc.size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				round()
			}
		})
	}
}
