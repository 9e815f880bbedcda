package stream

import (
	"bytes"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// largeTransport is a memTransport that accepts payloads up to limit but
// whose path silently drops those above pathMax, like a path with a
// smaller MTU and the don't-fragment bit set.
type largeTransport struct {
	*memTransport
	limit, pathMax int
	largestSent    int
	// shrinkAfter > 0: after that many large datagrams got through, the
	// path's MTU drops to the base size (a route change mid-session).
	shrinkAfter, largeSent int

	mu      sync.Mutex          // Send runs on both loops of a Conn
	sizedAt map[int][]time.Time // with record: when datagrams of each size were sent
	record  bool
}

// sentAt returns when datagrams of size bytes were sent (with record).
func (t *largeTransport) sentAt(size int) []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Time(nil), t.sizedAt[size]...)
}

func (t *largeTransport) PayloadLimit() int { return t.limit }

func (t *largeTransport) Send(p []byte) error {
	if len(p) > t.limit {
		return errTooLarge
	}
	if t.record {
		t.mu.Lock()
		if t.sizedAt == nil {
			t.sizedAt = map[int][]time.Time{}
		}
		t.sizedAt[len(p)] = append(t.sizedAt[len(p)], time.Now())
		t.mu.Unlock()
	}
	if len(p) > t.pathMax {
		return nil // lost on the way
	}
	if len(p) > 2000 {
		t.largeSent++
		if t.shrinkAfter > 0 && t.largeSent >= t.shrinkAfter {
			t.pathMax = t.MaxPayload()
		}
	}
	t.largestSent = max(t.largestSent, len(p))
	t.out.send(p)
	return nil
}

var errTooLarge = errorString("largeTransport: datagram too large")

type errorString string

func (e errorString) Error() string { return string(e) }

// TestPMTUProbe: the sender probes down from the transport's limit to the
// largest candidate the path carries, loses no byte on the way, and then
// sends packets of that size.
func TestPMTUProbe(t *testing.T) {
	checkGoroutines(t)
	ma, mb, _, _ := newMemPair(linkConfig{seed: 11}, linkConfig{seed: 12})
	ta := &largeTransport{memTransport: ma, limit: 65000, pathMax: 9000}
	tb := &largeTransport{memTransport: mb, limit: 65000, pathMax: 9000}
	a, b := newConnPair(t, ta, tb, Config{})
	// Both sides send enough for their probing to finish even on a loaded
	// machine.
	exchange(t, a, b, randomBytes(8<<20, 21), randomBytes(8<<20, 22))
	for name, c := range map[string]*Conn{"a": a, "b": b} {
		c.mu.Lock()
		got := c.maxPayload
		c.mu.Unlock()
		if got != 8<<10 {
			t.Errorf("%s: packet size %d after probing, want %d (the largest candidate under the path's 9000)", name, got, 8<<10)
		}
	}
	if ta.largestSent != 8<<10 {
		t.Errorf("largest datagram delivered %d, want %d", ta.largestSent, 8<<10)
	}
	t.Logf("a: %+v", a.Stats())
}

// TestPMTUBlackHole: the path's MTU shrinks to the base size in the middle
// of a transfer; every large packet is lost from then on. The sender falls
// back to the base size and every byte still arrives.
func TestPMTUBlackHole(t *testing.T) {
	checkGoroutines(t)
	ma, mb, _, _ := newMemPair(linkConfig{seed: 31}, linkConfig{seed: 32})
	ta := &largeTransport{memTransport: ma, limit: 65000, pathMax: 65000, shrinkAfter: 40}
	tb := &largeTransport{memTransport: mb, limit: 65000, pathMax: 65000}
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, randomBytes(8<<20, 33), randomBytes(64<<10, 34))
	a.mu.Lock()
	got := a.maxPayload
	a.mu.Unlock()
	if got != a.baseMaxPayload {
		t.Fatalf("a's packet size after the MTU shrank: %d, want the base %d", got, a.baseMaxPayload)
	}
	t.Logf("a: %+v", a.Stats())
}

// TestPMTUFirstRoundTrip pins how soon the packets grow: the probes go out
// with the first data, every candidate size at once, so data goes out at
// the largest size the path carries one round trip after the start,
// instead of a round trip (or a loss detection) per size tried after the
// first ack. A side with no data to send does not probe.
func TestPMTUFirstRoundTrip(t *testing.T) {
	checkGoroutines(t)
	const delay = 50 * time.Millisecond // one way: a round trip is 100 ms
	link := func(seed uint64) linkConfig { return linkConfig{delay: delay, seed: seed} }
	ma, mb, _, _ := newMemPair(link(41), link(42))
	ta := &largeTransport{memTransport: ma, limit: 65000, pathMax: 9000, record: true}
	tb := &largeTransport{memTransport: mb, limit: 65000, pathMax: 9000, record: true}
	aData, bData := randomBytes(4<<20, 43), []byte(nil) // b only acknowledges, and sends its FIN
	start := time.Now()
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, aData, bData)
	for _, size := range []int{65000, 16 << 10, 8 << 10, 1400} {
		if at := ta.sentAt(size); len(at) == 0 || at[0].Sub(start) > delay/2 {
			t.Errorf("no probe of %d bytes at once (sent at %v)", size, at)
		}
	}
	if at := tb.sentAt(1400); len(at) > 0 {
		t.Errorf("b, with no data to send, sent %d probes of 1400 bytes", len(at))
	}
	// Of the datagrams above 1400 bytes that the path carries, the first
	// is the 8 KiB probe; the next ones carry data.
	var first time.Time
	for size := 1401; size <= 8<<10 && first.IsZero(); size++ {
		for _, at := range ta.sentAt(size) {
			if size != 8<<10 || !at.Equal(ta.sentAt(size)[0]) {
				first = at
				break
			}
		}
	}
	if first.IsZero() {
		t.Fatal("no data packet above 1400 bytes")
	}
	if d := first.Sub(start); d > 3*delay {
		t.Errorf("the first large data packet went out %v after the start, want within 1.5 round trips (%v)", d, 3*delay)
	}
	t.Logf("first large data packet after %v; a: %+v", first.Sub(start).Round(time.Millisecond), a.Stats())
}

// switchTransport is a largeTransport whose path can change.
type switchTransport struct {
	*largeTransport
	switches atomic.Uint64
}

var _ PathTransport = (*switchTransport)(nil)

func (t *switchTransport) PathSwitches() uint64 { return t.switches.Load() }

// TestPathChangeStartsOver: when the Transport's path changes mid-transfer
// (the move from the relay to a direct path), the Conn goes back to the
// base packet size and probes again, and congestion control and the RTT
// estimate start over, as on a new session; no byte is lost, and the
// packets grow again on the new path.
func TestPathChangeStartsOver(t *testing.T) {
	checkGoroutines(t)
	ma, mb, _, _ := newMemPair(linkConfig{seed: 51}, linkConfig{seed: 52})
	ta := &switchTransport{largeTransport: &largeTransport{memTransport: ma, limit: 65000, pathMax: 65000}}
	tb := &largeTransport{memTransport: mb, limit: 65000, pathMax: 65000}
	a, b := newConnPair(t, ta, tb, Config{})
	data := randomBytes(8<<20, 53)
	half := len(data) / 2
	got := make(chan []byte, 1)
	halfRead := make(chan struct{})
	go func() {
		buf := make([]byte, half)
		n, _ := io.ReadFull(b, buf)
		close(halfRead)
		rest, _ := io.ReadAll(b)
		got <- append(buf[:n], rest...)
	}()
	if _, err := a.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-halfRead:
	case <-time.After(testDeadline):
		t.Fatal("the first half never arrived")
	}
	a.mu.Lock()
	grown, rounds := a.maxPayload, a.snd.cc.round
	ta.switches.Add(1)
	a.checkPathLocked()
	st := a.snd
	a.mu.Unlock()
	if grown != 65000 || rounds == 0 {
		t.Fatalf("before the change: packet size %d, %d rounds; want 65000 and some", grown, rounds)
	}
	if st.cc.round != 0 || st.cc.mss != a.baseMaxPayload || st.rtt.has || st.pathPN != st.nextPN {
		t.Errorf("after the change: %d rounds, mss %d, RTT sampled %v, path from pn %d (next %d); want a new controller and estimate",
			st.cc.round, st.cc.mss, st.rtt.has, st.pathPN, st.nextPN)
	}
	if _, err := a.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	go b.Shutdown(ctx)
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if out := <-got; !bytes.Equal(out, data) {
		t.Fatalf("received %d bytes that differ from the %d sent", len(out), len(data))
	}
	a.mu.Lock()
	regrown := a.maxPayload
	a.mu.Unlock()
	if regrown != 65000 {
		t.Errorf("packet size %d after the change, want 65000 again", regrown)
	}
}
