package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a real p2pcat process started by a test: the test binary copied
// as "p2pcat" into $PATH by testscript.Main, so it runs exactly main.run.
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdout lockedBuffer
	mu     sync.Mutex
	stderr []string
	// the first -v "connected" line and when it came
	connectedLine string
	connectedAt   time.Time
	lines         chan string // stderr lines as they come
	done          chan struct{}
	err           error
}

// startP2pcat starts p2pcat with args; env adds to the test's environment.
// The process is killed when the test ends if it is still running.
func startP2pcat(t testing.TB, stdin io.Reader, env []string, args ...string) *proc {
	t.Helper()
	return startP2pcatIn(t, "", stdin, env, args...)
}

// startP2pcatIn is startP2pcat inside network namespace ns (`ip netns
// exec`); "" is this namespace.
func startP2pcatIn(t testing.TB, ns string, stdin io.Reader, env []string, args ...string) *proc {
	t.Helper()
	return startP2pcatTo(t, ns, stdin, nil, env, args...)
}

// startP2pcatPipedOut is startP2pcat with stdout a real pipe, whose read
// end it returns (proc.stdout stays empty): a test that reads some bytes
// and closes it plays `p2pcat | head -c N`. The read end is closed when
// the test ends.
func startP2pcatPipedOut(t testing.TB, stdin io.Reader, env []string, args ...string) (*proc, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	p := startP2pcatTo(t, "", stdin, w, env, args...)
	w.Close() // the child has its own copy: only the child writes to it
	return p, r
}

// startP2pcatTo is startP2pcatIn with stdout going to stdout (nil:
// proc.stdout).
func startP2pcatTo(t testing.TB, ns string, stdin io.Reader, stdout io.Writer, env []string, args ...string) *proc {
	t.Helper()
	path, err := exec.LookPath("p2pcat")
	if err != nil {
		t.Fatalf("p2pcat not in PATH (testscript.Main sets it up): %v", err)
	}
	p := &proc{t: t, lines: make(chan string, 1024), done: make(chan struct{})}
	if ns == "" {
		p.cmd = exec.Command(path, args...)
	} else {
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, path}, args...)...)
	}
	// Stdin may be an io.Pipe that nobody closes when a test fails: never
	// let Wait hang on copying it after the process is gone.
	p.cmd.WaitDelay = 2 * time.Second
	p.cmd.Env = append(append(os.Environ(), "P2PCAT_PASSWORD=", "P2PCAT_SERVER="), env...)
	p.cmd.Env = dropEmpty(p.cmd.Env)
	p.cmd.Stdin = stdin
	p.cmd.Stdout = &p.stdout
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	errPipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr = append(p.stderr, line)
			if strings.Contains(line, "msg=connected") && p.connectedAt.IsZero() {
				p.connectedAt = time.Now()
				p.connectedLine = line
			}
			p.mu.Unlock()
			select {
			case p.lines <- line:
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// connected returns the path= and peer= fields of the -v "connected" line
// and when it came (zero values if it has not).
func (p *proc) connected() (path, peer string, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range strings.Fields(p.connectedLine) {
		if v, ok := strings.CutPrefix(f, "path="); ok {
			path = v
		}
		if v, ok := strings.CutPrefix(f, "peer="); ok {
			peer = v
		}
	}
	return path, peer, p.connectedAt
}

// dropEmpty removes "NAME=" entries so that a variable can be unset for the
// child by passing it empty.
func dropEmpty(env []string) []string {
	last := map[string]string{}
	var order []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, seen := last[k]; !seen {
			order = append(order, k)
		}
		last[k] = v
	}
	var out []string
	for _, k := range order {
		if last[k] != "" {
			out = append(out, k+"="+last[k])
		}
	}
	return out
}

// waitJSONLog waits for a JSON log line on stderr with msg == want and
// returns its fields.
func (p *proc) waitJSONLog(ctx context.Context, want string) map[string]any {
	p.t.Helper()
	for {
		select {
		case line := <-p.lines:
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == want {
				return m
			}
		case <-p.done:
			p.t.Fatalf("p2pcat exited (%v) before logging %q; stderr:\n%s", p.err, want, p.Stderr())
		case <-ctx.Done():
			p.t.Fatalf("no %q log line; stderr:\n%s", want, p.Stderr())
		}
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(ctx context.Context) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("p2pcat did not exit in time; stderr:\n%s", p.Stderr())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

// exitStatus is the exit status of the exited process as a shell shows it
// in $?: the exit code, or 128 + the signal's number when a signal killed
// it (signaled is then true), as 141 for SIGPIPE.
func (p *proc) exitStatus() (code int, signaled bool) {
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), true
	}
	return p.cmd.ProcessState.ExitCode(), false
}

// waitStderr waits until a stderr line (any since the start) contains
// substr and reports whether one did before ctx ended or the process
// exited. It reads the recorded lines, not p.lines, so it takes nothing
// from other waiters and misses nothing.
func (p *proc) waitStderr(ctx context.Context, substr string) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		exited := false
		select {
		case <-p.done: // every line is recorded by then
			exited = true
		default:
		}
		if p.sawStderr(substr) {
			return true
		}
		if exited {
			return false
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			return p.sawStderr(substr)
		case <-tick.C:
		}
	}
}

// sawStderr reports whether a stderr line so far contains substr.
func (p *proc) sawStderr(substr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.stderr {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// errorLine is the last "p2pcat: error: " line on stderr, "" if none.
func (p *proc) errorLine() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.stderr) - 1; i >= 0; i-- {
		if strings.HasPrefix(p.stderr[i], "p2pcat: error: ") {
			return p.stderr[i]
		}
	}
	return ""
}

// stderrTail is the last n lines of stderr, for failure messages of runs
// with -vv.
func (p *proc) stderrTail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr[max(0, len(p.stderr)-n):], "\n")
}

func (p *proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr, "\n")
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// lockedBuffer is a bytes.Buffer that a test may read while the process
// is still writing to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}
