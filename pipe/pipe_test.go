package pipe

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// procsRecorder records GOMAXPROCS at every write of the peer's data.
type procsRecorder struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	procs []int
}

func (r *procsRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.procs = append(r.procs, runtime.GOMAXPROCS(0))
	return r.buf.Write(p)
}

// freePort returns a UDP port that was free a moment ago on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestTransferProcs runs a real session over loopback (direct mode, no
// server) in which bob asks for one P during the transfer: bob's output is
// written while GOMAXPROCS is 1, and Run puts the old value back.
func TestTransferProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	pa, pb := freePort(t), freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := Config{Session: "procs", Password: []byte("procs-test"), ConnectTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}

	alice := base
	alice.Name, alice.Peer, alice.Port = "alice", "bob", pa
	alice.PeerAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(pb))
	alice.Stdin, alice.Stdout = strings.NewReader("one line\n"), &procsRecorder{}

	bob := base
	bob.Name, bob.Peer, bob.Port = "bob", "alice", pb
	bob.PeerAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(pa))
	out := &procsRecorder{}
	bob.Stdin, bob.Stdout, bob.TransferProcs = strings.NewReader(""), out, 1

	errs := make(chan error, 2)
	go func() { errs <- Run(ctx, alice) }()
	go func() { errs <- Run(ctx, bob) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	if got := out.buf.String(); got != "one line\n" {
		t.Fatalf("bob received %q", got)
	}
	for _, n := range out.procs {
		if n != 1 {
			t.Errorf("GOMAXPROCS during bob's transfer = %d, want 1", n)
		}
	}
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Errorf("GOMAXPROCS after Run = %d, want 2 restored", n)
	}
}
