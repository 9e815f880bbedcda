package stream

import "testing"

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
}

func (t *largeTransport) PayloadLimit() int { return t.limit }

func (t *largeTransport) Send(p []byte) error {
	if len(p) > t.limit {
		return errTooLarge
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
	// machine (six probes are lost before 8 KiB gets through).
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
