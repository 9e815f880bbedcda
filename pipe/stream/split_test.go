package stream

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// splitMemTransport is a memTransport that takes packets in two parts,
// like pipe/secure's DataHead packets: a split packet travels as
// 1 | head length | head | body and is delivered through RecvPlaced, which
// shows the head to place and copies the body where it says. To check that
// place only offers free room, a share of placed packets (failRate) then
// "fails to authenticate": garbage is written where place said and the
// packet is dropped, as a forged DataHead packet would leave it.
type splitMemTransport struct {
	*memTransport
	failRate float64

	mu      sync.Mutex // SendSplitBatch may race Send (acks from the receive loop)
	scratch []byte
	rbuf    []byte
	rng     *rand.Rand
	placed  int // bodies placed (only the receive loop touches these)
	refused int
	faked   int
}

var _ SplitTransport = (*splitMemTransport)(nil)

func newSplitPair(ab, ba linkConfig, failRate float64) (a, b *splitMemTransport) {
	ta, tb, _, _ := newMemPair(ab, ba)
	mk := func(t *memTransport, seed uint64) *splitMemTransport {
		return &splitMemTransport{memTransport: t, failRate: failRate, rbuf: make([]byte, 70000), rng: rand.New(rand.NewPCG(seed, 1))}
	}
	return mk(ta, ab.seed), mk(tb, ba.seed)
}

func (t *splitMemTransport) Send(p []byte) error { return t.SendSplitBatch([][]byte{p}, nil) }

func (t *splitMemTransport) SendBatch(ps [][]byte) error { return t.SendSplitBatch(ps, nil) }

func (t *splitMemTransport) SendSplitBatch(heads, bodies [][]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, h := range heads {
		var body []byte
		if bodies != nil {
			body = bodies[i]
		}
		limit := t.maxPayload
		if body != nil {
			limit-- // the split costs a byte, as in pipe/secure
		}
		if len(h)+len(body) > limit {
			return errSplitTooLarge
		}
		if body == nil {
			t.scratch = append(append(t.scratch[:0], 0), h...)
		} else {
			t.scratch = append(append(append(t.scratch[:0], 1, byte(len(h))), h...), body...)
		}
		t.out.send(t.scratch)
	}
	return nil
}

func (t *splitMemTransport) Recv(buf []byte) (int, error) {
	n, _, err := t.RecvPlaced(buf, nil)
	return n, err
}

func (t *splitMemTransport) RecvPlaced(buf []byte, place func([]byte, int) []byte) (int, []byte, error) {
	for {
		n, err := t.in.recv(t.rbuf)
		if err != nil {
			return 0, nil, err
		}
		p := t.rbuf[:n]
		if p[0] == 0 {
			return copy(buf, p[1:]), nil, nil
		}
		h := int(p[1])
		head, body := p[2:2+h], p[2+h:]
		if place != nil {
			if dst := place(head, len(body)); dst != nil {
				if len(dst) != len(body) {
					panic("place returned the wrong length")
				}
				t.placed++
				if t.rng.Float64() < t.failRate {
					t.faked++
					for i := range dst {
						dst[i] = 0xEE // what a failed open leaves
					}
					continue
				}
				copy(dst, body)
				return copy(buf, head), dst, nil
			}
			t.refused++
		}
		return copy(buf[copy(buf, head):], body) + h, nil, nil
	}
}

var errSplitTooLarge = bytes.ErrTooLarge

// TestSplitTransfer: over a SplitTransport the DATA bytes travel as bodies
// (sealed straight from the send buffer, placed straight into the receive
// buffer) through loss, duplication and reordering, with failed opens
// scribbling on the room they were given; both streams arrive intact.
func TestSplitTransfer(t *testing.T) {
	checkGoroutines(t)
	link := func(seed uint64) linkConfig {
		return linkConfig{loss: 0.03, dup: 0.03, reorder: 0.05, jitter: 3 * time.Millisecond,
			delay: 2 * time.Millisecond, seed: seed}
	}
	ta, tb := newSplitPair(link(11), link(12), 0.02)
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, randomBytes(8<<20, 11), randomBytes(2<<20, 12))
	sa, sb := a.Stats(), b.Stats()
	t.Logf("a: %+v", sa)
	t.Logf("b: placed %d, refused %d, faked failures %d", tb.placed, tb.refused, tb.faked)
	if tb.placed < 1000 || tb.faked == 0 || tb.refused == 0 || sa.Retransmits == 0 || sb.DupPackets == 0 {
		t.Errorf("the run did not exercise placement, refusal, failed opens and recovery: placed %d refused %d faked %d, a=%+v b=%+v",
			tb.placed, tb.refused, tb.faked, sa, sb)
	}
}

// TestSplitSmallBuffers: with small buffers the send buffer wraps and the
// writer waits for room often, so sealed-in-place bodies and the pin that
// keeps the writer off them are exercised; the bytes arrive intact.
func TestSplitSmallBuffers(t *testing.T) {
	checkGoroutines(t)
	ta, tb := newSplitPair(linkConfig{seed: 13, loss: 0.01, delay: time.Millisecond}, linkConfig{seed: 14, delay: time.Millisecond}, 0)
	a, b := newConnPair(t, ta, tb, Config{SendBuffer: 64 << 10, RecvBuffer: 64 << 10})
	data := randomBytes(4<<20, 13)
	exchange(t, a, b, data, nil)
	if tb.placed == 0 {
		t.Fatal("no body was placed")
	}
}
