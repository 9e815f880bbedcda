package udpio

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
)

func TestUnmap(t *testing.T) {
	for in, want := range map[string]string{
		"[::ffff:192.0.2.1]:7": "192.0.2.1:7",
		"192.0.2.1:7":          "192.0.2.1:7",
		"[2001:db8::1]:7":      "[2001:db8::1]:7",
	} {
		if got := Unmap(netip.MustParseAddrPort(in)); got.String() != want {
			t.Errorf("Unmap(%s) = %s, want %s", in, got, want)
		}
	}
	if got := Unmap(netip.AddrPort{}); got.IsValid() {
		t.Errorf("Unmap(invalid) = %s, want invalid", got)
	}
}

// TestBatchRoundTrip sends a batch over loopback in each family and reads it
// back in one batch read.
func TestBatchRoundTrip(t *testing.T) {
	for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(network, func(t *testing.T) {
			a, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(network)))
			if err != nil {
				t.Skipf("no %s: %v", network, err)
			}
			defer a.Close()
			b, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(network)))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			out := make([]ipv4.Message, 3)
			for i := range out {
				out[i] = ipv4.Message{Buffers: [][]byte{{byte(i)}}, Addr: b.LocalAddr()}
			}
			if n, err := NewBatchConn(a).WriteBatch(out, 0); err != nil || n != len(out) {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			in := make([]ipv4.Message, 3)
			for i := range in {
				in[i].Buffers = [][]byte{make([]byte, 16)}
			}
			got := 0
			for got < len(in) {
				n, err := NewBatchConn(b).ReadBatch(in[got:], 0)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
			for i, m := range in {
				if m.N != 1 || m.Buffers[0][0] != byte(i) {
					t.Errorf("datagram %d: %d bytes %v", i, m.N, m.Buffers[0][:m.N])
				}
			}
		})
	}
}
