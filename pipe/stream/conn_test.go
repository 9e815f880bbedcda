package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testDeadline = 30 * time.Second // bound on any wait in these tests

// checkGoroutines fails the test if goroutines started during it outlive
// it. Call it first; it registers a cleanup that runs last.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Errorf("goroutines leaked: %d > %d\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
				return
			}
			runtime.Gosched()
			time.Sleep(time.Millisecond) // polling, not synchronisation
		}
	})
}

func newConnPair(t testing.TB, ta, tb Transport, cfg Config) (a, b *Conn) {
	a, b = New(ta, cfg), New(tb, cfg)
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// pump writes data to c in uneven chunks, then half-closes.
func pump(c *Conn, data []byte, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 7))
	for len(data) > 0 {
		n := min(len(data), 1+r.IntN(200_000))
		if _, err := c.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return c.CloseWrite()
}

// drain reads c to EOF and returns the sha256 of what it read.
func drain(c *Conn) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, c, make([]byte, 37_000))
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

// exchange sends aData a→b and bData b→a concurrently, checks both arrive
// intact, then shuts both ends down and checks both Shutdowns return nil.
func exchange(t *testing.T, a, b *Conn, aData, bData []byte) {
	t.Helper()
	exchangeData(t, a, b, aData, bData, true)
}

// exchangeData sends aData a→b and bData b→a and checks what arrives;
// with shutdown it then shuts both down and checks they end cleanly.
func exchangeData(t *testing.T, a, b *Conn, aData, bData []byte, shutdown bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	gotAtB, gotAtA := make(chan result, 1), make(chan result, 1)
	for _, side := range []struct {
		w    *Conn
		data []byte
		r    *Conn
		got  chan result
	}{{a, aData, b, gotAtB}, {b, bData, a, gotAtA}} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs <- pump(side.w, side.data, uint64(len(side.data)))
		}()
		go func() {
			defer wg.Done()
			sum, n, err := drain(side.r)
			side.got <- result{sum, n, err}
		}()
	}
	for i, c := range []struct {
		got  chan result
		want []byte
	}{{gotAtB, aData}, {gotAtA, bData}} {
		select {
		case r := <-c.got:
			if r.err != nil {
				t.Fatalf("stream %d: read: %v", i, r.err)
			}
			if r.n != int64(len(c.want)) || r.sum != sha256.Sum256(c.want) {
				t.Fatalf("stream %d: got %d bytes, want %d; sha256 equal: %v", i, r.n, len(c.want), r.sum == sha256.Sum256(c.want))
			}
		case <-ctx.Done():
			t.Fatalf("stream %d: timed out; stats a=%+v b=%+v", i, a.Stats(), b.Stats())
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if shutdown {
		shutdownBoth(t, a, b)
	}
}

func shutdownBoth(t *testing.T, a, b *Conn) {
	t.Helper()
	errA, errB := shutdownResults(a, b)
	if errB != nil {
		t.Fatalf("b.Shutdown: %v (stats %+v)", errB, b.Stats())
	}
	if errA != nil {
		t.Fatalf("a.Shutdown: %v (stats %+v)", errA, a.Stats())
	}
}

// shutdownResults shuts a and b down at once and returns how each ended.
func shutdownResults(a, b *Conn) (errA, errB error) {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	ca := make(chan error, 1)
	go func() { ca <- a.Shutdown(ctx) }()
	errB = b.Shutdown(ctx)
	return <-ca, errB
}

func TestTransferClean(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, randomBytes(16<<20, 1), randomBytes(3<<20, 2))
	t.Logf("a: %+v", a.Stats())
}

func TestTransferLossy(t *testing.T) {
	checkGoroutines(t)
	link := func(seed uint64) linkConfig {
		return linkConfig{loss: 0.05, dup: 0.02, reorder: 0.05, jitter: 3 * time.Millisecond,
			delay: 2 * time.Millisecond, seed: seed}
	}
	ta, tb, _, _ := newMemPair(link(3), link(4))
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, randomBytes(16<<20, 3), randomBytes(2<<20, 4))
	sa, sb := a.Stats(), b.Stats()
	t.Logf("a: %+v", sa)
	t.Logf("b: %+v", sb)
	if sa.LostPackets == 0 || sa.Retransmits == 0 || sb.DupPackets == 0 {
		t.Errorf("the lossy link did not exercise recovery: a=%+v b=%+v", sa, sb)
	}
}

func TestTransferUDP(t *testing.T) {
	checkGoroutines(t)
	ta, tb := newUDPPair(t)
	a, b := newConnPair(t, ta, tb, Config{})
	exchange(t, a, b, randomBytes(16<<20, 5), randomBytes(16<<20, 6))
	t.Logf("a: %+v", a.Stats())
}

func TestHalfClose(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1, delay: time.Millisecond}, linkConfig{seed: 2, delay: time.Millisecond})
	a, b := newConnPair(t, ta, tb, Config{})
	msg := []byte("hello\n")
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := a.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write(msg); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("Write after CloseWrite: %v, want ErrWriteClosed", err)
	}
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("b read %q, %v; want %q, nil (EOF)", got, err, msg)
	}
	// b can still send after a's half-close, and a can read it.
	for i := 0; i < 3; i++ {
		line := []byte{'l', 'i', 'n', 'e', byte('0' + i), '\n'}
		if _, err := b.Write(line); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := io.ReadFull(a, buf[:len(line)])
		if err != nil || !bytes.Equal(buf[:n], line) {
			t.Fatalf("a read %q, %v; want %q", buf[:n], err, line)
		}
	}
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("second read at EOF: %d, %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, a)
		done <- err
	}()
	shutdownBoth(t, a, b)
	if err := <-done; err != nil {
		t.Fatalf("a's reader: %v", err)
	}
	for _, c := range []*Conn{a, b} {
		select {
		case <-c.Done():
		default:
			t.Fatal("Done not closed after Shutdown")
		}
		if c.Err() != nil {
			t.Fatalf("Err after clean end: %v", c.Err())
		}
	}
}

func TestAbort(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1, loss: 0.3}, linkConfig{seed: 2})
	a, b := newConnPair(t, ta, tb, Config{})
	if _, err := a.Write([]byte("some data")); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, b)
		readErr <- err
	}()
	if err := a.Abort(AbortInterrupted, "user pressed ^C\x1b[2J"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Done():
	case <-time.After(testDeadline):
		t.Fatal("peer did not notice the abort")
	}
	if !errors.Is(b.Err(), ErrPeerAborted) {
		t.Fatalf("peer Err = %v, want ErrPeerAborted", b.Err())
	}
	var pa *PeerAbortError
	if !errors.As(b.Err(), &pa) || pa.Code != AbortInterrupted {
		t.Fatalf("peer Err = %#v, want a PeerAbortError with code AbortInterrupted", b.Err())
	}
	if bytes.Contains([]byte(b.Err().Error()), []byte("\x1b")) {
		t.Fatalf("escape sequence leaked into the error: %q", b.Err())
	}
	if err := <-readErr; !errors.Is(err, ErrPeerAborted) {
		t.Fatalf("peer Read error = %v, want ErrPeerAborted", err)
	}
	if !errors.Is(a.Err(), ErrAborted) {
		t.Fatalf("local Err = %v, want ErrAborted", a.Err())
	}
}

func TestIdleTimeout(t *testing.T) {
	checkGoroutines(t)
	var silent atomic.Bool
	blackhole := func([]byte) bool { return silent.Load() }
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1, drop: blackhole}, linkConfig{seed: 2, drop: blackhole})
	cfg := Config{IdleTimeout: 300 * time.Millisecond, KeepaliveInterval: 50 * time.Millisecond}
	a, b := newConnPair(t, ta, tb, cfg)

	// Keepalives keep an idle session up for several idle timeouts.
	select {
	case <-a.Done():
		t.Fatalf("idle session with keepalives died: %v\na=%+v\nb=%+v", a.Err(), a.Stats(), b.Stats())
	case <-b.Done():
		t.Fatalf("idle session with keepalives died: %v", b.Err())
	case <-time.After(4 * cfg.IdleTimeout):
	}

	silent.Store(true)
	start := time.Now()
	for _, c := range []*Conn{a, b} {
		select {
		case <-c.Done():
		case <-time.After(testDeadline):
			t.Fatal("no idle timeout")
		}
		if !errors.Is(c.Err(), ErrIdleTimeout) {
			t.Fatalf("Err = %v, want ErrIdleTimeout", c.Err())
		}
	}
	// The last packet got through up to a keepalive interval (plus ack
	// delay and scheduling) before the link went silent.
	if d := time.Since(start); d < cfg.IdleTimeout/2 {
		t.Fatalf("timed out after %v, before the idle timeout %v", d, cfg.IdleTimeout)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("Write after idle timeout: %v", err)
	}
}

func TestFlowControl(t *testing.T) {
	checkGoroutines(t)
	ta, tb, _, _ := newMemPair(linkConfig{seed: 1}, linkConfig{seed: 2})
	const bufSize = 256 << 10
	cfg := Config{SendBuffer: bufSize, RecvBuffer: bufSize}
	a, b := newConnPair(t, ta, tb, cfg)
	data := randomBytes(16<<20, 9)
	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); off += 64 << 10 {
			n, err := a.Write(data[off : off+64<<10])
			written.Add(int64(n))
			if err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- a.CloseWrite()
	}()

	// b never reads: both buffers fill up and the writer blocks.
	deadline := time.Now().Add(testDeadline)
	for {
		sa, sb := a.Stats(), b.Stats()
		if sa.SendBuffered > bufSize || sb.RecvBuffered > bufSize {
			t.Fatalf("buffers exceed their bound: send %d, recv %d", sa.SendBuffered, sb.RecvBuffered)
		}
		if sa.SendBuffered == bufSize && sb.RecvBuffered == bufSize {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("buffers never filled: a=%+v b=%+v", sa, sb)
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by deadline
	}
	if w := written.Load(); w > 2*bufSize {
		t.Fatalf("writer got %d bytes accepted with a non-reading peer (bound %d)", w, 2*bufSize)
	}
	select {
	case err := <-writeErr:
		t.Fatalf("writer finished against a non-reading peer: %v", err)
	default:
	}

	// Now read: everything arrives and the writer completes.
	sum, n, err := drain(b)
	if err != nil || n != int64(len(data)) || sum != sha256.Sum256(data) {
		t.Fatalf("read %d bytes, err %v; sha256 equal %v", n, err, sum == sha256.Sum256(data))
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, a)
		done <- err
	}()
	shutdownBoth(t, a, b)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// frameTypes lists the frame types of a packet (nil if malformed).
func frameTypes(p []byte) (types []byte, f *frame) {
	f = new(frame)
	_, rest, err := parsePacketNumber(p)
	if err != nil {
		return nil, nil
	}
	var ack frame
	for len(rest) > 0 {
		if rest, err = parseFrame(rest, f); err != nil {
			return nil, nil
		}
		if f.typ == frameAck {
			ack = *f
		}
		types = append(types, f.typ)
	}
	return types, &ack
}

// TestCloseHandshakeLosses drops the packets that end a session (acks of
// the FIN, DONE) in various ways. Both ends must still end cleanly.
func TestCloseHandshakeLosses(t *testing.T) {
	const aLen, bLen = 100_000, 50_000
	// Acks a→b acknowledge b's stream, whose FIN is at bLen (+1: the FIN
	// takes one position); acks b→a acknowledge a's.
	const many = 1 << 30
	for _, tc := range []struct {
		name           string
		dropAB, dropBA func(types []byte, ack *frame) bool
		// Without the peer's DONE a side cannot say the peer wrote
		// everything out: when a path loses every DONE one way, the side
		// that never gets one ends with ErrUnconfirmedEnd, at its idle
		// timeout; the other, which got one, ends cleanly.
		failA, failB bool
	}{
		{name: "all DONE lost both ways", dropAB: dropFirst(many, isDone), dropBA: dropFirst(many, isDone), failA: true, failB: true},
		{name: "DONE lost b to a", dropBA: dropFirst(many, isDone), failA: true},
		{name: "all FIN acks lost b to a", dropBA: dropFirst(many, acksFin(aLen))},
		{name: "all FIN acks lost a to b", dropAB: dropFirst(many, acksFin(bLen))},
		{name: "first FIN acks and DONEs lost both ways",
			dropAB: either(dropFirst(3, acksFin(bLen)), dropFirst(2, isDone)),
			dropBA: either(dropFirst(3, acksFin(aLen)), dropFirst(1, isDone))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			hook := func(f func([]byte, *frame) bool) func([]byte) bool {
				if f == nil {
					return nil
				}
				return func(p []byte) bool {
					types, ack := frameTypes(p)
					return f(types, ack)
				}
			}
			ta, tb, _, _ := newMemPair(
				linkConfig{seed: 1, delay: time.Millisecond, drop: hook(tc.dropAB)},
				linkConfig{seed: 2, delay: time.Millisecond, drop: hook(tc.dropBA)})
			cfg := Config{}
			if tc.failA || tc.failB {
				cfg.IdleTimeout = time.Second
			}
			a, b := newConnPair(t, ta, tb, cfg)
			start := time.Now()
			exchangeData(t, a, b, randomBytes(aLen, 1), randomBytes(bLen, 2), false)
			errA, errB := shutdownResults(a, b)
			for _, side := range []struct {
				name string
				err  error
				fail bool
			}{{"a", errA, tc.failA}, {"b", errB, tc.failB}} {
				switch {
				case side.fail && !errors.Is(side.err, ErrUnconfirmedEnd):
					t.Errorf("%s: %v, want ErrUnconfirmedEnd", side.name, side.err)
				case !side.fail && side.err != nil:
					t.Errorf("%s: %v, want a clean end", side.name, side.err)
				}
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("ending took %v", d)
			}
		})
	}
}

func isDone(types []byte, _ *frame) bool { return bytes.IndexByte(types, frameDone) >= 0 }

// acksFin selects packets whose ACK acknowledges the FIN of a stream of
// length n, except those that carry DONE (which also acknowledges it).
func acksFin(n uint64) func([]byte, *frame) bool {
	return func(types []byte, ack *frame) bool {
		return bytes.IndexByte(types, frameAck) >= 0 && ack.stream == n+1 && !isDone(types, ack)
	}
}

func either(f, g func([]byte, *frame) bool) func([]byte, *frame) bool {
	return func(types []byte, ack *frame) bool { return f(types, ack) || g(types, ack) }
}

// dropFirst selects the first n packets that f selects.
func dropFirst(n int, f func([]byte, *frame) bool) func([]byte, *frame) bool {
	var mu sync.Mutex
	return func(types []byte, ack *frame) bool {
		mu.Lock()
		defer mu.Unlock()
		if n > 0 && f(types, ack) {
			n--
			return true
		}
		return false
	}
}
