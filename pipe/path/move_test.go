package path

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// TestMoveToDirectMidTransfer: a session that started on the relay (the
// direct path shut) and carries a steady flow of numbered datagrams moves
// to the direct path when it opens, on both sides, while the flow goes
// on: every datagram sent arrives (through the relay, directly, or both:
// a copy is no loss), the relay carries nothing more once both sides are
// direct, and the move is logged with the time spent on the relay.
func TestMoveToDirectMidTransfer(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { testMoveToDirectMidTransfer(t, offload) })
	}
}

func testMoveToDirectMidTransfer(t *testing.T, offload bool) {
	checkGoroutinesEnd(t)
	srv := rendezvoustest.Start(t, server.Config{})
	ua, ub, ma, mb := pairThroughServer(t, srv)
	g := newGate(t, ua.LocalAddr().(*net.UDPAddr).AddrPort(), ub.LocalAddr().(*net.UDPAddr).AddrPort())
	var logA, logB lockedBuffer
	opt := Options{Relay: true, RelayAfter: time.Millisecond, NoOffload: !offload}
	a := New(ua, srv.Addr, ma.PairingID, []netip.AddrPort{g.addrForA()}, slog.New(slog.NewTextHandler(&logA, nil)), endOf(opt, ma))
	b := New(ub, srv.Addr, mb.PairingID, []netip.AddrPort{g.addrForB()}, slog.New(slog.NewTextHandler(&logB, nil)), endOf(opt, mb))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		a.Close()
		b.Close()
		wg.Wait()
	}()
	got := newSeqSet()
	wg.Go(func() { confirmEvery(a, nil) })
	wg.Go(func() { confirmEvery(b, got) })
	// b answers now and then, as a receiver acknowledges.
	wg.Go(func() {
		for tick := time.Tick(20 * time.Millisecond); ctx.Err() == nil; <-tick {
			b.Send([]byte("ack"))
		}
	})
	sendCtx, stopSending := context.WithCancel(ctx)
	sent := make(chan uint64, 1)
	wg.Go(func() { sent <- sendNumbered(sendCtx, a) })

	waitUntil(t, "both on the relay", 5*time.Second, func() bool { return a.Relayed() && b.Relayed() })
	time.Sleep(200 * time.Millisecond) // the flow, relayed
	g.open.Store(true)
	opened := time.Now()
	waitUntil(t, "both direct after the path opened", 10*time.Second, func() bool {
		return a.Peer() == g.addrForA() && b.Peer() == g.addrForB()
	})
	moved := time.Since(opened)
	time.Sleep(50 * time.Millisecond) // relayed datagrams still in flight arrive
	relayedAtMove := srv.Metric("p2pcat_rendezvous_relayed_packets_total")
	time.Sleep(200 * time.Millisecond) // the flow, direct
	stopSending()
	n := <-sent
	waitUntil(t, "every numbered datagram received", 5*time.Second, func() bool { return got.count() == n })
	if more := srv.Metric("p2pcat_rendezvous_relayed_packets_total") - relayedAtMove; more > 0 {
		t.Errorf("%v datagrams relayed after both sides moved to the direct path", more)
	}
	for side, l := range map[string]*lockedBuffer{"a": &logA, "b": &logB} {
		if s := l.String(); !strings.Contains(s, `msg="moved to a direct path"`) || !strings.Contains(s, "after=") {
			t.Errorf("%s did not log the move with its time on the relay:\n%s", side, s)
		}
	}
	t.Logf("%d datagrams, none lost; both direct %v after the path opened", n, moved.Round(time.Millisecond))
}

// confirmEvery plays the secure layer for c: it confirms the sender of
// every datagram and, when got is set, notes the numbered ones.
func confirmEvery(c *Conn, got *seqSet) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.Recv(buf)
		if err != nil {
			return
		}
		c.Confirm(from)
		if got != nil && n == numberedLen && buf[0] == 'n' {
			got.add(binary.BigEndian.Uint64(buf[1:9]))
		}
	}
}

// numberedLen is the size of sendNumbered's datagrams.
const numberedLen = 1000

// sendNumbered sends numbered datagrams over c, four at a time in one
// SendBatch every 2 ms (a flow well under the relay's rate), until ctx
// ends, and returns how many it sent.
func sendNumbered(ctx context.Context, c *Conn) uint64 {
	var seq uint64
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return seq
		case <-tick.C:
		}
		bufs := make([][]byte, 4)
		for i := range bufs {
			bufs[i] = make([]byte, numberedLen)
			bufs[i][0] = 'n'
			binary.BigEndian.PutUint64(bufs[i][1:9], seq)
			seq++
		}
		if err := c.SendBatch(bufs); err != nil {
			return seq
		}
	}
}

// seqSet is the set of numbers received.
type seqSet struct {
	mu   sync.Mutex
	seen map[uint64]bool
}

func newSeqSet() *seqSet { return &seqSet{seen: map[uint64]bool{}} }

func (s *seqSet) add(n uint64) {
	s.mu.Lock()
	s.seen[n] = true
	s.mu.Unlock()
}

func (s *seqSet) count() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.seen))
}

// lockedBuffer is a log's destination, read while it is written.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
