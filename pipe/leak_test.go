package pipe

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Goroutine-leak checks around single Runs: nothing Run starts may outlive
// it (Config.Stdin), whatever way the session ends.

// exitGrace is how long a goroutine may take to disappear after it
// signalled its end (wg.Done, a channel send): it is returning, not
// blocked. A goroutine blocked in a read outlasts it.
const exitGrace = 200 * time.Millisecond

// checkGoroutines fails tb unless the number of goroutines comes down to
// want within exitGrace, and lists them then.
func checkGoroutines(tb testing.TB, want int) {
	tb.Helper()
	deadline := time.Now().Add(exitGrace)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > want {
		tb.Errorf("%d goroutines outlived Run (%d, want %d):\n%s", n-want, n, want, goroutineStacks())
	}
}

// blockedIn reports whether a goroutine's stack has all of frames.
func blockedIn(frames ...string) bool {
	for _, g := range strings.Split(goroutineStacks(), "\n\n") {
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}

// sessionGoroutines returns the stacks of the goroutines that a Run
// started, directly or not: those created by the library's own code in
// pipe/..., and the wake-ups (context.AfterFunc) of the handshake and of
// the rendezvous client.
func sessionGoroutines() []string {
	var found []string
	for _, g := range strings.Split(goroutineStacks(), "\n\n") {
		_, creator, ok := strings.Cut(g, "\ncreated by ")
		fn, file, _ := strings.Cut(creator, "\n")
		ours := ok && strings.HasPrefix(fn, "github.com/p2pcat/p2pcat/pipe") && !strings.Contains(file, "_test.go")
		wakeUp := strings.Contains(g, "secure.(*Handshaker).Run.func") || strings.Contains(g, "rendezvous.(*exchange).receive.func") || strings.Contains(g, "rendezvous.stunRoundTrip.func")
		if ours || wakeUp {
			found = append(found, g)
		}
	}
	return found
}

// checkSessionGoroutines fails unless the goroutines that Runs started
// are gone within exitGrace.
func checkSessionGoroutines() error {
	deadline := time.Now().Add(exitGrace)
	for {
		left := sessionGoroutines()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d goroutines outlived Run:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(time.Millisecond)
	}
}

func goroutineStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// lockedBuffer is a stdout that two goroutines may look at.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// closeOnWrite is a stdout that closes its side's stdin once the peer's
// first bytes arrived: the peer says its piece before this side's EOF can
// end its session (EndOnPeerEOF).
type closeOnWrite struct {
	lockedBuffer
	stdin *os.File
	after <-chan struct{} // if set, closes stdin only once this is closed (or 10 s passed)
}

func (c *closeOnWrite) Write(p []byte) (int, error) {
	n, err := c.lockedBuffer.Write(p)
	if c.after != nil {
		select {
		case <-c.after:
		case <-time.After(10 * time.Second):
		}
	}
	c.stdin.Close()
	return n, err
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// directPair returns the configurations of two peers that meet directly
// on loopback (no server), with short timeouts.
func directPair(t *testing.T, session string) (alice, bob Config) {
	t.Helper()
	pa, pb := freePort(t), freePort(t)
	lo := netip.MustParseAddr("127.0.0.1")
	base := Config{Session: session, Password: []byte("leak-test"), ConnectTimeout: 10 * time.Second, IdleTimeout: 5 * time.Second}
	alice, bob = base, base
	alice.Name, alice.Peer, alice.Port, alice.PeerAddr = "alice", "bob", pa, netip.AddrPortFrom(lo, uint16(pb))
	bob.Name, bob.Peer, bob.Port, bob.PeerAddr = "bob", "alice", pb, netip.AddrPortFrom(lo, uint16(pa))
	return alice, bob
}

// openStdin returns the read end of a pipe that holds text, and its write
// end, left open: a stdin that has no more to say and no end yet, like a
// terminal nobody types into.
func openStdin(t *testing.T, text string) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	if _, err := io.WriteString(w, text); err != nil {
		t.Fatal(err)
	}
	return r, w
}

// runPair runs both sessions and returns their errors.
func runPair(ctxA, ctxB context.Context, alice, bob Config) (errA, errB error) {
	ea, eb := make(chan error, 1), make(chan error, 1)
	go func() { ea <- Run(ctxA, alice) }()
	go func() { eb <- Run(ctxB, bob) }()
	return <-ea, <-eb
}

// TestRunLeavesNoGoroutine: after Run returns, every goroutine it started
// has ended (the path's, the handshake's, the stream's and the pipe's; the
// RSA key's once the key is done), also when stdin is still open and
// blocked in a read, and when stdout blocks.
func TestRunLeavesNoGoroutine(t *testing.T) {
	t.Run("stdin held open", func(t *testing.T) {
		// Bob ends when alice's EOF arrives (as a chat does) while his
		// stdin, a pipe, still waits for input: Run unblocks that read.
		base := runtime.NumGoroutine()
		alice, bob := directPair(t, "leak-open")
		ain, aw := openStdin(t, "from alice\n")
		bin, _ := openStdin(t, "from bob\n")
		aout, bout := &closeOnWrite{stdin: aw}, &lockedBuffer{}
		alice.Stdin, alice.Stdout = ain, aout
		bob.Stdin, bob.Stdout, bob.EndOnPeerEOF = bin, bout, true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errA, errB := runPair(ctx, ctx, alice, bob)
		if errA != nil || errB != nil {
			t.Fatalf("Run: alice %v, bob %v", errA, errB)
		}
		checkGoroutines(t, base)
		if aout.String() != "from bob\n" || bout.String() != "from alice\n" {
			t.Errorf("alice got %q, bob got %q", aout.String(), bout.String())
		}
		// Stdin is usable again: no deadline was left on it.
		if err := bin.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("interrupted while stdin and stdout block", func(t *testing.T) {
		// Neither stdin ends; bob's stdout is a pipe nobody reads, so his
		// downlink blocks writing it once alice's megabyte has arrived.
		base := runtime.NumGoroutine()
		alice, bob := directPair(t, "leak-intr")
		ain, aw := openStdin(t, "")
		bin, _ := openStdin(t, "")
		_, bout := openStdin(t, "") // bob writes the pipe's write end
		alice.Stdin, alice.Stdout = ain, &lockedBuffer{}
		bob.Stdin, bob.Stdout = bin, bout
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		bctx, interrupt := context.WithCancel(ctx)
		fed := make(chan error, 1)
		go func() {
			_, err := aw.Write(bytes.Repeat([]byte("0123456789abcde\n"), 1<<16))
			fed <- err // alice read all but a pipe's buffer of it
		}()
		ea, eb := make(chan error, 1), make(chan error, 1)
		go func() { ea <- Run(ctx, alice) }()
		go func() { eb <- Run(bctx, bob) }()
		if err := <-fed; err != nil {
			t.Fatal(err)
		}
		// Interrupt once bob's downlink blocks writing his full stdout.
		for deadline := time.Now().Add(20 * time.Second); !blockedIn("(*sinkWriter).Write", "waitWrite"); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("bob's stdout never blocked:\n%s", goroutineStacks())
			}
		}
		interrupt()
		errA, errB := <-ea, <-eb
		var pe *PeerEndedError
		if !errors.Is(errB, ErrInterrupted) || !errors.As(errA, &pe) {
			t.Fatalf("Run: alice %v, bob %v; want alice told of bob's interrupt", errA, errB)
		}
		checkGoroutines(t, base)
	})

	t.Run("interrupted before the key is ready", func(t *testing.T) {
		// Run does not wait for the key: it returns while the generation
		// is held back, and stops it on its way out, so nothing is left.
		base := runtime.NumGoroutine()
		alice, _ := directPair(t, "leak-key")
		alice.RSABits = 4096
		alice.Stdin, alice.Stdout = strings.NewReader(""), io.Discard
		stopped := make(chan error, 1)
		alice.testOnlyGenerateKey = func(ctx context.Context, bits int) (*rsa.PrivateKey, error) {
			<-ctx.Done() // held until Run stops it
			stopped <- ctx.Err()
			return nil, ctx.Err()
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := Run(ctx, alice); !errors.Is(err, ErrInterrupted) {
			t.Fatalf("Run = %v, want ErrInterrupted", err)
		}
		select {
		case err := <-stopped:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the generation ended with %v", err)
			}
		default:
			t.Error("Run returned before it stopped the key's generation")
		}
		checkGoroutines(t, base)
		if blockedIn("pipe.startGenerating.func") {
			t.Errorf("the key's generation outlived Run:\n%s", goroutineStacks())
		}
	})

	t.Run("stdin without deadlines", func(t *testing.T) {
		// A reader that cannot be unblocked: its goroutine is the only one
		// left, ends at its next return, and drops what it read.
		base := runtime.NumGoroutine()
		alice, bob := directPair(t, "leak-block")
		ain, aw := openStdin(t, "from alice\n")
		in := &stuckReader{first: "from bob\n", release: make(chan struct{}), blocked: make(chan struct{})}
		// Alice ends only once bob's reader is stuck: else bob's Run may
		// end before it reads again, and nothing is stuck.
		alice.Stdin, alice.Stdout = ain, &closeOnWrite{stdin: aw, after: in.blocked}
		bout := &lockedBuffer{}
		bob.Stdin, bob.Stdout, bob.EndOnPeerEOF = in, bout, true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errA, errB := runPair(ctx, ctx, alice, bob)
		if errA != nil || errB != nil {
			t.Fatalf("Run: alice %v, bob %v", errA, errB)
		}
		checkGoroutines(t, base+1)
		if s := goroutineStacks(); !strings.Contains(s, "(*stuckReader).Read") {
			t.Errorf("the goroutine left is not the one reading stdin:\n%s", s)
		}
		close(in.release)
		checkGoroutines(t, base)
		if got := bout.String(); got != "from alice\n" {
			t.Errorf("bob got %q", got)
		}
	})
}

// stuckReader returns first, then blocks in its next Read until release,
// which returns bytes nobody may see any more.
type stuckReader struct {
	first   string
	release chan struct{}
	blocked chan struct{} // closed when the second Read blocks
	reads   int
}

func (r *stuckReader) Read(p []byte) (int, error) {
	r.reads++
	if r.reads == 1 {
		return copy(p, r.first), nil
	}
	if r.reads == 2 {
		close(r.blocked)
	}
	<-r.release
	return copy(p, "too late\n"), nil
}
