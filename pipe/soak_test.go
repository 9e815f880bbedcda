package pipe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// The client library's soak test: many full sessions (Run against a real
// rendezvous server, real UDP on loopback, a megabyte each way through
// pipes) in one process, one after another and several at once, ending in
// every way a session ends. After each batch the process must be back
// where it started: goroutines, heap and open file descriptors.
//
//	SOAK_SESSIONS=300 go test -run Soak -v -count=1 ./pipe/

const (
	soakBatch    = 4       // sessions per batch
	soakPayload  = 1 << 20 // bytes each way
	soakIdle     = 2 * time.Second
	soakSettle   = 5 * time.Second // for sockets and goroutines to go after a batch
	soakHeapSlop = 4 << 20         // heap in use may exceed the baseline by this much
)

// soakKind is the way a soak session ends.
type soakKind int

const (
	soakDirect        soakKind = iota // both ways complete, direct path
	soakRelay                         // both ways complete, --relay only
	soakWrongPassword                 // the handshake fails: secure.ErrAuth on both sides
	soakPeerDies                      // bob's path is closed mid-transfer: alice fails at her idle timeout
	soakInterrupted                   // bob is interrupted mid-transfer: alice is told at once
	soakPeerLeaves                    // bob's stdin never ends; he ends when alice leaves (EndOnPeerEOF)
	soakKinds
)

func (k soakKind) String() string {
	return [...]string{"direct", "relay", "wrong-password", "peer-dies", "interrupted", "peer-leaves"}[k]
}

// TestSoak runs SOAK_SESSIONS sessions (default 12) in batches of four,
// alternately one after another and all at once. The kinds of ending take
// turns; those that can end either way go direct and through the relay in
// turn.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test: not in -short")
	}
	sessions := 12
	if s := os.Getenv("SOAK_SESSIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("SOAK_SESSIONS=%q: want a positive number", s)
		}
		sessions = n
	}
	srv := rendezvoustest.Start(t, server.Config{RatePerIP: -1})
	payloads := [2][]byte{soakText("alice", soakPayload), soakText("bob", soakPayload)}

	// One session first: it sets up what a process sets up once (the
	// runtime's poller, crypto tables, the server's first pairing).
	if _, err := runSoakSession(srv, -1, soakDirect, payloads, true); err != nil {
		t.Fatalf("warm-up session: %v", err)
	}
	var peak peakSampler
	peak.start()
	defer peak.stop()
	base := sampleResources(t, nil)
	t.Logf("baseline: goroutines %d, heap %.1f MiB, fds %d", base.goroutines, mib(base.heap), base.fds)

	start := time.Now()
	maxAfter := base
	done := 0
	var (
		deaths, interrupts, untold int
		maxNoticed                 time.Duration
	)
	for b := 0; done < sessions; b++ {
		n := min(soakBatch, sessions-done)
		together := b%2 == 1
		var kinds []string
		errs := make([]error, n)
		outs := make([]soakOutcome, n)
		var wg sync.WaitGroup
		bstart := time.Now()
		for j := range n {
			i := done + j
			k := soakKind(i % int(soakKinds))
			kinds = append(kinds, k.String())
			run := func() { outs[j], errs[j] = runSoakSession(srv, i, k, payloads, !together) }
			if together {
				wg.Go(run)
			} else {
				run()
			}
		}
		wg.Wait()
		took := time.Since(bstart)
		for j, err := range errs {
			if err != nil {
				t.Errorf("session %d (%s): %v", done+j, kinds[j], err)
			}
			o := outs[j]
			if o.noticed > 0 {
				deaths++
				maxNoticed = max(maxNoticed, o.noticed)
			}
			if kinds[j] == soakInterrupted.String() {
				interrupts++
			}
			if o.untold {
				untold++
				t.Logf("session %d (%s): the close notices were lost; alice noticed by her idle timeout", done+j, kinds[j])
			}
		}
		done += n
		mode := "one after another"
		if together {
			mode = "at once"
		}
		got := sampleResources(t, &base)
		maxAfter.goroutines = max(maxAfter.goroutines, got.goroutines)
		maxAfter.heap = max(maxAfter.heap, got.heap)
		maxAfter.fds = max(maxAfter.fds, got.fds)
		t.Logf("batch %2d (%d sessions %s: %s) in %s: goroutines %d, heap %.1f MiB, fds %d",
			b+1, n, mode, strings.Join(kinds, " "), took.Round(time.Millisecond), got.goroutines, mib(got.heap), got.fds)
		if t.Failed() {
			t.FailNow()
		}
	}
	p := peak.stop()
	t.Logf("%d sessions in %s; after each batch at most: goroutines %d, heap %.1f MiB, fds %d (baseline %d, %.1f MiB, %d); peak during the batches: goroutines %d, heap %.1f MiB, fds %d",
		sessions, time.Since(start).Round(time.Millisecond), maxAfter.goroutines, mib(maxAfter.heap), maxAfter.fds,
		base.goroutines, mib(base.heap), base.fds, p.goroutines, mib(p.heap), p.fds)
	t.Logf("%d peers died: the other side gave up after %s at most (idle timeout %s); %d of %d interrupts reached the peer only by its idle timeout (close notices lost)",
		deaths, maxNoticed.Round(time.Millisecond), soakIdle, untold, interrupts)
}

// resources is what a batch must give back.
type resources struct {
	goroutines int
	heap       uint64 // bytes in use after a collection
	fds        int    // -1 where they cannot be counted
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// sampleResources measures the process once it settled: with base, it
// waits up to soakSettle for goroutines and fds to come back to it and
// fails t if they, or the heap, do not.
func sampleResources(t *testing.T, base *resources) resources {
	t.Helper()
	var r resources
	deadline := time.Now().Add(soakSettle)
	for {
		r.goroutines = runtime.NumGoroutine()
		n, err := openFDs()
		if err != nil {
			n = -1
		}
		r.fds = n
		runtime.GC()
		runtime.GC() // a second cycle frees what the first one's finalizers (os.File) released
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		r.heap = ms.HeapInuse
		if base == nil {
			return r
		}
		settled := r.goroutines <= base.goroutines && r.fds <= base.fds && r.heap <= base.heap+soakHeapSlop
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r.goroutines > base.goroutines {
		t.Errorf("%d goroutines, baseline %d:\n%s", r.goroutines, base.goroutines, goroutineStacks())
	}
	if r.fds > base.fds {
		t.Errorf("%d open fds, baseline %d:\n%s", r.fds, base.fds, listFDs())
	}
	if r.heap > base.heap+soakHeapSlop {
		t.Errorf("heap in use %.1f MiB, baseline %.1f MiB", mib(r.heap), mib(base.heap))
	}
	return r
}

// listFDs shows what the open file descriptors are (Linux).
func listFDs() string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&b, "%s -> %s\n", e.Name(), l)
	}
	return b.String()
}

// peakSampler records the largest figures seen while the batches run.
type peakSampler struct {
	mu   sync.Mutex
	peak resources
	quit chan struct{}
	wg   sync.WaitGroup
}

func (p *peakSampler) start() {
	quit := make(chan struct{})
	p.quit = quit
	p.wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fds, _ := openFDs()
			p.mu.Lock()
			p.peak.goroutines = max(p.peak.goroutines, runtime.NumGoroutine())
			p.peak.heap = max(p.peak.heap, ms.HeapInuse)
			p.peak.fds = max(p.peak.fds, fds)
			p.mu.Unlock()
		}
	})
}

// stop ends the sampling (it is idempotent) and returns the peaks.
func (p *peakSampler) stop() resources {
	if p.quit != nil {
		close(p.quit)
		p.quit = nil
		p.wg.Wait()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

// soakText is about n bytes of whole lines that say who sent them (the
// receiver holds a partial line back until its end, or EOF).
func soakText(who string, n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %07d: the quick brown fox jumps over the lazy dog\n", who, i)
	}
	return b.Bytes()
}

// soakSide is one peer's stdin and stdout, both pipes: the test writes the
// payload into stdin and reads stdout, counting and hashing it.
type soakSide struct {
	cfg      Config
	inR, inW *os.File
	outR     *os.File
	outW     *os.File
	wg       sync.WaitGroup
	got      atomic.Int64
	sum      [sha256.Size]byte
	trigger  func() // called once, when a quarter of a payload arrived here
	keepOpen bool   // stdin never ends
	// closeAfter: stdin ends once this many bytes arrived here too (0:
	// once the payload is written).
	closeAfter int64
	// holdHalf: stdin gives half the payload, then nothing until finish,
	// so that the peer still waits for this side's data and FIN.
	holdHalf bool
	release  chan struct{}
	link     atomic.Pointer[path.Conn]
}

func newSoakSide(cfg Config) (*soakSide, error) {
	s := &soakSide{cfg: cfg, release: make(chan struct{})}
	var err error
	if s.inR, s.inW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if s.outR, s.outW, err = os.Pipe(); err != nil {
		s.inR.Close()
		s.inW.Close()
		return nil, err
	}
	s.cfg.Stdin, s.cfg.Stdout = s.inR, s.outW
	s.cfg.testOnlyConnected = func(c *path.Conn) { s.link.Store(c) }
	return s, nil
}

// start feeds payload into stdin and drains stdout.
func (s *soakSide) start(payload []byte) {
	enough := make(chan struct{}) // closeAfter bytes arrived
	s.wg.Go(func() {
		// A session that ended early leaves this write to fail (EPIPE)
		// once the test closes stdin's read end.
		p := payload
		if s.holdHalf {
			if _, err := s.inW.Write(p[:len(p)/2]); err != nil {
				return
			}
			<-s.release
			p = p[len(p)/2:]
		}
		if _, err := s.inW.Write(p); err != nil || s.keepOpen {
			return
		}
		if s.closeAfter > 0 {
			select {
			case <-enough:
			case <-s.release:
				return
			}
		}
		s.inW.Close()
	})
	s.wg.Go(func() {
		h := sha256.New()
		buf := make([]byte, 64<<10)
		var fired bool
		for {
			n, err := s.outR.Read(buf)
			h.Write(buf[:n])
			got := s.got.Add(int64(n))
			if s.trigger != nil && !fired && got >= soakPayload/4 {
				fired = true
				s.trigger()
			}
			if s.closeAfter > 0 && got >= s.closeAfter && got-int64(n) < s.closeAfter {
				close(enough)
			}
			if err != nil {
				break
			}
		}
		copy(s.sum[:], h.Sum(nil))
	})
}

// finish releases the pipes once Run returned and waits for the test's
// goroutines.
func (s *soakSide) finish() {
	s.inR.Close() // the feeder's write fails
	close(s.release)
	s.outW.Close() // the drainer reads EOF
	s.wg.Wait()
	s.inW.Close()
	s.outR.Close()
}

// received checks that the side got exactly want.
func (s *soakSide) received(want []byte) error {
	if n := s.got.Load(); n != int64(len(want)) {
		return fmt.Errorf("%s received %d bytes, want %d", s.cfg.Name, n, len(want))
	}
	if s.sum != sha256.Sum256(want) {
		return fmt.Errorf("%s received other bytes than were sent", s.cfg.Name)
	}
	return nil
}

// soakOutcome is what a session's ending showed.
type soakOutcome struct {
	noticed time.Duration // peer-dies: how long alice took to give bob up
	untold  bool          // interrupted: bob's close notices were all lost
}

// runSoakSession runs session i of kind k between alice and bob and
// checks how it ended. alone: no other session runs meanwhile, so that
// any goroutine of the library's left when both Runs returned is theirs,
// which fails the session (before the test releases stdin and stdout,
// which would end a goroutine left reading or writing them).
func runSoakSession(srv *rendezvoustest.Server, i int, k soakKind, payloads [2][]byte, alone bool) (out soakOutcome, _ error) {
	session := fmt.Sprintf("soak-%d", i)
	if i < 0 {
		session = "soak-warm-up"
	}
	base := Config{
		Server: srv.Addr, Session: session, Password: []byte("soak password"),
		Timeout: 20 * time.Second, ConnectTimeout: 10 * time.Second, IdleTimeout: soakIdle,
	}
	// The endings that do not depend on the path take the relay in turn.
	if k == soakRelay || (k != soakDirect && (i/int(soakKinds))%2 == 1) {
		base.Relay = RelayOnly
	}
	ac, bc := base, base
	ac.Name, ac.Peer = "alice", "bob"
	bc.Name, bc.Peer = "bob", "alice"
	if k == soakWrongPassword {
		bc.Password = []byte("not the soak password")
	}
	alice, err := newSoakSide(ac)
	if err != nil {
		return out, err
	}
	bob, err := newSoakSide(bc)
	if err != nil {
		alice.finish()
		return out, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bctx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	var killedAt atomic.Int64
	switch k {
	case soakPeerDies:
		bob.holdHalf = true
		alice.trigger = func() {
			killedAt.Store(time.Now().UnixNano())
			if l := bob.link.Load(); l != nil {
				l.Close() // bob's socket is gone: he falls silent
			}
		}
	case soakInterrupted:
		bob.holdHalf = true
		alice.trigger = interrupt
	case soakPeerLeaves:
		// Alice leaves once she has all of bob's bytes, which his stdin,
		// still open, can then no longer add to.
		bob.keepOpen, bob.cfg.EndOnPeerEOF = true, true
		alice.closeAfter = int64(len(payloads[1]))
	}
	alice.start(payloads[0])
	bob.start(payloads[1])
	ea, eb := make(chan error, 1), make(chan error, 1)
	var aliceEnded atomic.Int64
	go func() {
		err := Run(ctx, alice.cfg)
		aliceEnded.Store(time.Now().UnixNano())
		ea <- err
	}()
	go func() { eb <- Run(bctx, bob.cfg) }()
	errA, errB := <-ea, <-eb
	var leaked error
	if alone {
		leaked = checkSessionGoroutines()
	}
	alice.finish()
	bob.finish()
	if leaked != nil {
		return out, leaked
	}

	relayed := func(s *soakSide) bool { l := s.link.Load(); return l != nil && l.Relayed() }
	switch k {
	case soakDirect, soakRelay, soakPeerLeaves:
		if errA != nil || errB != nil {
			return out, fmt.Errorf("alice: %v; bob: %v", errA, errB)
		}
		if err := errors.Join(alice.received(payloads[1]), bob.received(payloads[0])); err != nil {
			return out, err
		}
		if want := base.Relay == RelayOnly; relayed(alice) != want || relayed(bob) != want {
			return out, fmt.Errorf("relayed: alice %v, bob %v; want %v", relayed(alice), relayed(bob), want)
		}
	case soakWrongPassword:
		if !errors.Is(errA, secure.ErrAuth) || !errors.Is(errB, secure.ErrAuth) {
			return out, fmt.Errorf("alice: %v; bob: %v; want secure.ErrAuth on both sides", errA, errB)
		}
	case soakPeerDies:
		if errA == nil || errB == nil || !strings.Contains(errA.Error(), "lost the connection") {
			return out, fmt.Errorf("alice: %v; bob: %v; want alice to lose bob", errA, errB)
		}
		out.noticed = time.Duration(aliceEnded.Load() - killedAt.Load())
		if out.noticed > soakIdle+time.Second {
			return out, fmt.Errorf("alice noticed bob's death after %s, idle timeout %s", out.noticed, soakIdle)
		}
	case soakInterrupted:
		// Bob's close notices (stream.Conn.Abort's three copies, back to
		// back) may all be lost when the path is full, as it is mid-transfer
		// (the kernel drops them at a full socket buffer); alice then gives
		// bob up at her idle timeout.
		var pe *PeerEndedError
		told := errors.As(errA, &pe) && pe.Code == stream.AbortInterrupted
		out.untold = errA != nil && strings.Contains(errA.Error(), "lost the connection")
		if !errors.Is(errB, ErrInterrupted) || !told && !out.untold {
			return out, fmt.Errorf("alice: %v; bob: %v; want bob interrupted and alice told", errA, errB)
		}
	}
	return out, nil
}
