package stream

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"
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

// TestPlaceBodyRefusesHeldRoom feeds placeBody heads as a forger would
// write them: room is offered only for bytes not yet received, inside the
// window, clear of out-of-order ranges, and contiguous in the buffer.
func TestPlaceBodyRefusesHeldRoom(t *testing.T) {
	ta, tb := newSplitPair(linkConfig{seed: 21}, linkConfig{seed: 22}, 0)
	_, b := newConnPair(t, ta, tb, Config{RecvBuffer: 256 << 10})
	b.mu.Lock()
	r := &b.rcv
	r.buf.fit(r.readOff, 64<<10)
	r.readOff, r.nxt = 1000, 5000     // 4000 bytes held, unread
	r.buf.fit(r.readOff, 6000)        // the ring's size is now 64 KiB
	r.ooo.add(20000, 30000)           // an out-of-order range held
	ringLen := uint64(len(r.buf.buf)) // 64 KiB
	window := r.window()              // readOff + 256 KiB
	b.mu.Unlock()
	head := func(off uint64, n int) []byte {
		return appendDataHeader(binary.AppendUvarint(nil, 7), false, off, n)
	}
	for _, tc := range []struct {
		name string
		off  uint64
		n    int
		ok   bool
	}{
		{"new bytes at nxt", 5000, 1000, true},
		{"new bytes after a hole", 10000, 1000, true},
		{"below nxt: received, unread", 4000, 500, false},
		{"straddling nxt", 4900, 500, false},
		{"into the out-of-order range", 19000, 2000, false},
		{"inside the out-of-order range", 21000, 100, false},
		{"past the window", window - 100, 200, false},
		{"wrapping the ring's end", 1000 + ringLen - 50, 100, false}, // grows the ring instead: offered only if contiguous
	} {
		b.mu.Lock()
		before := len(b.rcv.buf.buf)
		b.mu.Unlock()
		room := b.placeBody(head(tc.off, tc.n), tc.n)
		b.mu.Lock()
		contiguous := room != nil && b.rcv.buf.holds(tc.off, room)
		after := len(b.rcv.buf.buf)
		b.mu.Unlock()
		if tc.name == "wrapping the ring's end" {
			// Either refused, or the ring grew and the room is contiguous there.
			if room != nil && (!contiguous || after == before) {
				t.Errorf("%s: offered room that wraps", tc.name)
			}
			continue
		}
		if (room != nil) != tc.ok || room != nil && (len(room) != tc.n || !contiguous) {
			t.Errorf("%s: offered %v (len %d, in place %v), want %v", tc.name, room != nil, len(room), contiguous, tc.ok)
		}
	}
	// Heads a forger could send: garbage, a body no DATA frame claims, a
	// length that does not match the body's.
	for _, h := range [][]byte{{}, {0xff, 0xff}, binary.AppendUvarint(nil, 7), append(binary.AppendUvarint(nil, 7), framePing), head(6000, 99)} {
		if room := b.placeBody(h, 100); room != nil {
			t.Errorf("head %x: offered room", h)
		}
	}
}

// sealDelay makes a splitMemTransport slow to seal: it holds the bodies
// it was given for a moment before copying them, as sealing 64 KiB does.
type slowSplit struct {
	*splitMemTransport
	delay time.Duration
}

func (t *slowSplit) SendSplitBatch(heads, bodies [][]byte) error {
	if bodies != nil {
		time.Sleep(t.delay)
	}
	return t.splitMemTransport.SendSplitBatch(heads, bodies)
}

// TestSplitPinKeepsWriterOff: bodies are sealed from the send buffer
// outside the lock while the writer fills it and acks free it; under -race
// a writer reaching room still being sealed is reported. The send buffer
// may grow (1 MiB from 64 KiB), so the pin must hold across growth too.
func TestSplitPinKeepsWriterOff(t *testing.T) {
	checkGoroutines(t)
	// Reordering makes spurious retransmissions: the original's ack can
	// arrive while its resend is being sealed, which is when the pin counts.
	link := func(seed uint64) linkConfig {
		return linkConfig{seed: seed, loss: 0.02, reorder: 0.3, jitter: 2 * time.Millisecond, delay: 200 * time.Microsecond}
	}
	ta, tb := newSplitPair(link(23), link(24), 0)
	a, b := newConnPair(t, &slowSplit{ta, 50 * time.Microsecond}, tb, Config{SendBuffer: 1 << 20, RecvBuffer: 1 << 20})
	exchange(t, a, b, randomBytes(6<<20, 23), nil)
	if tb.placed == 0 {
		t.Fatal("no body was placed")
	}
}

// TestReserveWriteKeepsPinnedRoom: whatever the send buffer's state, the
// room reserveWrite hands the writer never shares storage with pinned
// bytes (being sealed by a SplitTransport), even when an ack moved una past
// the pin and the ring is smaller than its maximum.
func TestReserveWriteKeepsPinnedRoom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 3000; i++ {
		c := &Conn{}
		c.writable.L = &c.mu
		max := 64<<10 + rng.IntN(1<<20) // any size: a ring grows by 4x, capped at max
		c.snd.buf = newByteRing(max)
		s := &c.snd
		s.buf.fit(0, uint64(64<<10<<(2*rng.IntN(3)))) // grown to some size
		ringLen := len(s.buf.buf)
		pin := uint64(rng.IntN(1 << 20))
		una := pin + uint64(rng.IntN(ringLen))
		used := uint64(rng.IntN(ringLen - int(una-pin) + 1))
		if rng.IntN(2) == 0 {
			used = uint64(ringLen) - (una - pin) // full from the pin on: the case that matters
		}
		s.una, s.end, s.nxt = una, una+used, una
		s.pin, s.pinned = pin, true
		if s.end-s.held() >= uint64(s.buf.max) {
			continue // full: reserveWrite would wait
		}
		old := s.buf.buf
		pinned := s.buf.span(pin, int(una-pin))
		room, err := c.reserveWrite(maxReadChunk)
		if err != nil {
			t.Fatal(err)
		}
		if len(room) == 0 || &s.buf.buf[0] != &old[0] || len(pinned) == 0 {
			continue // grown: the pinned bytes are in the old storage, untouched
		}
		lo, hi := uintptr(unsafe.Pointer(&room[0])), uintptr(unsafe.Pointer(&room[0]))+uintptr(len(room))
		for k := pin; k < una; k++ {
			p := uintptr(unsafe.Pointer(&old[k%uint64(len(old))]))
			if p >= lo && p < hi {
				t.Fatalf("state una=%d pin=%d end=%d ring=%d max=%d: writer room covers pinned offset %d", una, pin, s.end, ringLen, max, k)
			}
		}
	}
}
