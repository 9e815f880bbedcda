package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// chunkReader returns data in reads of random sizes, as a pipe does.
type chunkReader struct {
	data []byte
	rng  *rand.Rand
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1+r.rng.IntN(100_000))], r.data)
	r.data = r.data[n:]
	return n, nil
}

// peekAll reads c to EOF with Peek and Consume, asking for more than it
// holds each time and consuming a random part, and checks that the two
// slices continue each other.
func peekAll(c *Conn, seed uint64) ([]byte, int, error) {
	rng := rand.New(rand.NewPCG(seed, 3))
	var got []byte
	wraps, held := 0, 0
	for {
		a, b, err := c.Peek(held + 1 + rng.IntN(3000))
		if err != nil && err != io.EOF {
			return got, wraps, err
		}
		if len(b) > 0 {
			wraps++
			if len(a) == 0 {
				return got, wraps, errors.New("Peek returned b without a")
			}
		}
		all := append(append([]byte(nil), a...), b...)
		n := len(all)
		if err == nil && rng.IntN(2) == 0 {
			n = rng.IntN(len(all) + 1) // leave some for the next Peek
		}
		got = append(got, all[:n]...)
		c.Consume(n)
		held = len(all) - n
		if err == io.EOF && held == 0 {
			return got, wraps, nil
		}
	}
}

// TestReadFromPeek moves data with the zero-copy calls, ReadFrom on one
// side and Peek/Consume on the other, across a lossy, reordering link and
// a small receive buffer, so the data wraps around both rings many times.
func TestReadFromPeek(t *testing.T) {
	checkGoroutines(t)
	link := linkConfig{loss: 0.02, reorder: 0.05, jitter: time.Millisecond, delay: time.Millisecond}
	la, lb := link, link
	la.seed, lb.seed = 11, 12
	ta, tb, _, _ := newMemPair(la, lb)
	a, b := newConnPair(t, ta, tb, Config{SendBuffer: 96 << 10, RecvBuffer: 80 << 10})
	data := randomBytes(3<<20, 5)

	sent := make(chan error, 1)
	go func() {
		n, err := a.ReadFrom(&chunkReader{data: data, rng: rand.New(rand.NewPCG(1, 1))})
		if err == nil && n != int64(len(data)) {
			err = errors.New("ReadFrom returned a short count")
		}
		if err == nil {
			err = a.CloseWrite()
		}
		sent <- err
	}()
	got, wraps, err := peekAll(b, 9)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("sending: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes that differ from the %d sent", len(got), len(data))
	}
	if wraps == 0 {
		t.Fatalf("Peek never returned wrapped data: the test does not cover the ring's end")
	}
	shutdownBoth(t, a, b)
}

// TestReadFromErrors: ReadFrom passes the reader's error on, keeping what
// was read before it, and refuses to write after CloseWrite.
func TestReadFromErrors(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	a, b := newConnPair(t, ta, tb, Config{})
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader([]byte("before the error\n")), iotest.ErrReader(boom))
	if n, err := a.ReadFrom(r); !errors.Is(err, boom) || n != 17 {
		t.Fatalf("ReadFrom = %d, %v; want 17, boom", n, err)
	}
	a.CloseWrite()
	if _, err := a.ReadFrom(bytes.NewReader([]byte("x"))); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("ReadFrom after CloseWrite: %v", err)
	}
	got, _, err := peekAll(b, 1)
	if err != nil || string(got) != "before the error\n" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	shutdownBoth(t, a, b)
}

// TestPeekWaits: Peek returns only once the bytes asked for arrived (or the
// stream ended), and Consume frees the window so the sender can go on.
func TestPeekWaits(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	a, b := newConnPair(t, ta, tb, Config{RecvBuffer: 64 << 10})
	type peeked struct {
		n   int
		err error
	}
	res := make(chan peeked, 1)
	go func() {
		x, y, err := b.Peek(10)
		res <- peeked{len(x) + len(y), err}
	}()
	if _, err := a.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	// The first five bytes arrive; Peek(10) must still be waiting. The
	// peer's ack proves they arrived (SendBuffered drops to zero).
	waitFor(t, func() bool { return a.Stats().SendBuffered == 0 })
	select {
	case r := <-res:
		t.Fatalf("Peek(10) returned %d bytes, %v with 5 readable", r.n, r.err)
	default:
	}
	if _, err := a.Write([]byte("67890abc")); err != nil {
		t.Fatal(err)
	}
	if r := <-res; r.err != nil || r.n < 10 {
		t.Fatalf("Peek(10) = %d bytes, %v", r.n, r.err)
	}
	// More than the buffer holds goes through only as the reader consumes.
	big := randomBytes(1<<20, 3)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Write(big)
		a.CloseWrite()
	}()
	got, _, err := peekAll(b, 2)
	wg.Wait()
	if err != nil || !bytes.Equal(got, append([]byte("1234567890abc"), big...)) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	shutdownBoth(t, a, b)
}

// TestPeekAfterAbort: a reader blocked in Peek learns why the stream ended.
func TestPeekAfterAbort(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	a, b := newConnPair(t, ta, tb, Config{})
	res := make(chan error, 1)
	go func() {
		_, _, err := b.Peek(1)
		res <- err
	}()
	a.Abort(AbortError, "test over")
	select {
	case err := <-res:
		if !errors.Is(err, ErrPeerAborted) {
			t.Fatalf("Peek: %v, want ErrPeerAborted", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("Peek still blocked after the peer aborted")
	}
}

// waitFor polls cond, which reads the Conn's state, for up to testDeadline.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
}

// batchRecorder is a memTransport that also takes batches (BatchTransport)
// and records the size of each.
type batchRecorder struct {
	*memTransport
	mu      sync.Mutex
	batches []int // bytes per SendBatch call
	conn    *Conn
	rates   []float64 // the sender's pacing rate at each batch
}

func (r *batchRecorder) SendBatch(ps [][]byte) error {
	size := 0
	for _, p := range ps {
		size += len(p)
		if err := r.Send(p); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, size)
	if r.conn != nil {
		r.rates = append(r.rates, r.conn.Stats().PacingRate)
	}
	return nil
}

// TestBurstsFollowPacing: on a 10 MB/s path with 40 ms RTT, the sender's
// bursts (one SendBatch, one GSO send below) hold about a millisecond of
// data at the pacing rate, never a whole window.
func TestBurstsFollowPacing(t *testing.T) {
	checkGoroutines(t)
	link := func(seed uint64) linkConfig {
		return linkConfig{delay: 20 * time.Millisecond, rate: 10e6, queue: 40 * time.Millisecond, seed: seed}
	}
	ta, tb, _, _ := newMemPair(link(1), link(2))
	rec := &batchRecorder{memTransport: ta}
	a, b := New(rec, Config{}), New(tb, Config{})
	rec.mu.Lock()
	rec.conn = a
	rec.mu.Unlock()
	defer a.Close()
	defer b.Close()
	data := randomBytes(8<<20, 4)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	go func() {
		a.Write(data)
		a.CloseWrite()
	}()
	sum, n, err := drain(b)
	if err != nil || n != int64(len(data)) || sum != sha256.Sum256(data) {
		t.Fatalf("received %d bytes, %v", n, err)
	}
	if err := ctx.Err(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	mss := ta.MaxPayload()
	largest, over := 0, 0
	for i, size := range rec.batches {
		largest = max(largest, size)
		// A burst is at most 1 ms at the pacing rate of its time (the
		// quantum, at least two packets). That rate was set between the
		// previous record and this one (a phase change, such as the
		// drain after startup, may lower it 3-fold), so the larger of the
		// two bounds it, with a margin for a second change.
		rate := max(rec.rates[i], rec.rates[max(i-1, 0)])
		if limit := 3 * max(int(rate/1000), 2*mss) / 2; size > limit {
			over++
			t.Logf("batch %d of %d: %d bytes at %.0f B/s (previous %.0f B/s)", i, len(rec.batches), size, rec.rates[i], rec.rates[max(i-1, 0)])
		}
	}
	t.Logf("%d batches, largest %d bytes; %d over the quantum", len(rec.batches), largest, over)
	if len(rec.batches) < 100 {
		t.Fatalf("only %d batches: the sender did not batch", len(rec.batches))
	}
	if over > 0 {
		t.Fatalf("%d bursts were larger than the pacing quantum", over)
	}
	if largest > 40<<10 {
		t.Fatalf("a burst of %d bytes on a 10 MB/s path (1 ms is 10 kB)", largest)
	}
}
