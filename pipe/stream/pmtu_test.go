package stream

import "testing"

// largeTransport is a memTransport that accepts payloads up to limit but
// whose path silently drops those above pathMax, like a path with a
// smaller MTU and the don't-fragment bit set.
type largeTransport struct {
	*memTransport
	limit, pathMax int
	largestSent    int
}

func (t *largeTransport) PayloadLimit() int { return t.limit }

func (t *largeTransport) Send(p []byte) error {
	if len(p) > t.limit {
		return errTooLarge
	}
	if len(p) > t.pathMax {
		return nil // lost on the way
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
	exchange(t, a, b, randomBytes(8<<20, 21), randomBytes(1<<20, 22))
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
