package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests of p2pcat --listen, --keep-open and --exec (listen_cmd.go,
// listen_exec.go) with the real binary and a real `p2pcat serve`.

// startListener starts `p2pcat --listen --name NAME -v` with args, the
// password "pw".
func startListener(t *testing.T, server, name string, stdin io.Reader, args ...string) *proc {
	t.Helper()
	return startP2pcat(t, stdin, peerEnv(server, "pw"), append([]string{"--listen", "--name", name, "-v"}, args...)...)
}

// hexLines is n lines "prefix-i-<random hex>\n".
func hexLines(t *testing.T, prefix string, n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, "%s-%d-%s\n", prefix, i, hex.EncodeToString(randomBytes(t, 40)))
	}
	return b.Bytes()
}

// linesWith is the lines of out that start with prefix+"-", in order.
func linesWith(out []byte, prefix string) []byte {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(out, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(prefix+"-")) {
			b.Write(l)
		}
	}
	return b.Bytes()
}

// countStderr is how many stderr lines so far contain substr.
func (p *proc) countStderr(substr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.stderr {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// waitCount waits until n stderr lines contain substr.
func (p *proc) waitCount(ctx context.Context, substr string, n int) {
	p.t.Helper()
	for p.countStderr(substr) < n {
		select {
		case <-p.done:
			p.t.Fatalf("exited (%v) before %d lines with %q:\n%s", p.err, n, substr, p.Stderr())
		case <-ctx.Done():
			p.t.Fatalf("no %d lines with %q:\n%s", n, substr, p.Stderr())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// mustExit waits for p and fails unless it exits with want.
func mustExit(t *testing.T, ctx context.Context, p *proc, name string, want int) {
	t.Helper()
	if code := p.wait(ctx); code != want {
		t.Fatalf("%s exited %d, want %d:\n%s", name, code, want, p.Stderr())
	}
}

// heldPeer is a peer whose stdin the test writes: the first part at once,
// the rest on release, so that the test decides when it can finish.
type heldPeer struct {
	*proc
	w    *io.PipeWriter
	rest []byte
	once sync.Once
}

func startHeldPeer(t *testing.T, server, name, listener string, data []byte) *heldPeer {
	t.Helper()
	r, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	hp := &heldPeer{proc: startP2pcat(t, r, peerEnv(server, "pw"), "--name", name, "--find", listener, "-v"), w: w, rest: data[len(data)/2:]}
	go w.Write(data[:len(data)/2])
	return hp
}

func (hp *heldPeer) release() {
	hp.once.Do(func() {
		go func() {
			hp.w.Write(hp.rest)
			hp.w.Close()
		}()
	})
}

// TestListenKeepOpen: a listener without --exec serves three peers one
// after another and two at once; every peer's bytes reach its stdout
// exactly, whole lines never mixed, and the peers receive nothing.
func TestListenKeepOpen(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	_, server := startServe(t, ctx)
	l := startListener(t, server, "homebox", nil, "-k")

	var sent []byte
	for _, name := range []string{"alice", "bob", "carol"} {
		data := hexLines(t, name, 3000)
		p := startP2pcat(t, bytes.NewReader(data), peerEnv(server, "pw"), "--name", name, "--find", "homebox")
		mustExit(t, ctx, p, name, exitOK)
		if p.stdout.Len() != 0 {
			t.Fatalf("%s received %d bytes from a listener that sends nothing", name, p.stdout.Len())
		}
		sent = append(sent, data...)
	}
	if got := l.stdout.Bytes(); sha256.Sum256(got) != sha256.Sum256(sent) {
		t.Fatalf("the listener wrote %d bytes, not the %d the three peers sent in turn", len(got), len(sent))
	}
	for _, name := range []string{"alice", "bob", "carol"} {
		if !l.sawStderr(`msg="peer found"`) || !l.sawStderr("peer="+name) {
			t.Fatalf("no -v line names peer %s:\n%s", name, l.Stderr())
		}
	}

	// Two at once: both send half, the rest only once both are
	// authenticated, so their sessions overlap.
	before := l.stdout.Len()
	authBefore := l.countStderr("msg=authenticated")
	dave, erin := hexLines(t, "dave", 5000), hexLines(t, "erin", 5000)
	pd := startHeldPeer(t, server, "dave", "homebox", dave)
	pe := startHeldPeer(t, server, "erin", "homebox", erin)
	l.waitCount(ctx, "msg=authenticated", authBefore+2)
	if l.countStderr(`msg="session ended"`) != 3 {
		t.Fatalf("a session ended before both were authenticated:\n%s", l.Stderr())
	}
	pd.release()
	pe.release()
	mustExit(t, ctx, pd.proc, "dave", exitOK)
	mustExit(t, ctx, pe.proc, "erin", exitOK)
	out := l.stdout.Bytes()[before:]
	for name, data := range map[string][]byte{"dave": dave, "erin": erin} {
		if got := linesWith(out, name); !bytes.Equal(got, data) {
			t.Fatalf("%s: the listener wrote %d bytes of its lines, not the %d sent", name, len(got), len(data))
		}
	}
	if len(out) != len(dave)+len(erin) {
		t.Fatalf("the listener wrote %d bytes for two peers that sent %d: lines were broken or mixed", len(out), len(dave)+len(erin))
	}
	l.signal(syscall.SIGTERM)
	mustExit(t, ctx, l, "listener", exitSignal)
}

// TestListenOnce: without --keep-open a listener is one session both ways
// and exits as a session does; --timeout, when given, bounds its wait;
// listener flags that make no sense are usage errors.
func TestListenOnce(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	_, server := startServe(t, ctx)

	l := startListener(t, server, "homebox", strings.NewReader("from the listener\n"))
	p := startP2pcat(t, strings.NewReader("from alice\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "homebox")
	mustExit(t, ctx, p, "alice", exitOK)
	mustExit(t, ctx, l, "listener", exitOK)
	if got, want := l.stdout.String(), "from alice\n"; got != want {
		t.Fatalf("listener got %q", got)
	}
	if got, want := p.stdout.String(), "from the listener\n"; got != want {
		t.Fatalf("alice got %q", got)
	}
	if !l.sawStderr("peer=alice") {
		t.Fatalf("the -v log does not name the peer:\n%s", l.Stderr())
	}

	l = startListener(t, server, "homebox", nil, "--timeout", "2s")
	mustExit(t, ctx, l, "listener with --timeout", exitNoPeer)

	for _, args := range [][]string{
		{"--keep-open", "--find", "bob"},
		{"--listen", "-k", "--max-sessions", "0"},
		{"--listen", "-k", "--max-sessions", "1025"},
		{"--listen", "--max-sessions", "4"},
		{"--listen", "--find", "bob"},
		{"--listen", "--peer", "127.0.0.1:9"},
		{"--find", "bob", "--exec", " "},
	} {
		p := startP2pcat(t, nil, peerEnv(server, "pw"), append([]string{"--name", "homebox"}, args...)...)
		mustExit(t, ctx, p, strings.Join(args, " "), exitUsage)
	}
}

// TestListenExec: --exec runs the command for each authenticated session,
// two at once, byte-exact both ways, with the peer's name in its
// environment; a command that fails is logged, and its peer exits 1 told
// why; --exec also works on the finding side.
func TestListenExec(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	_, server := startServe(t, ctx)

	t.Run("echo, two at once", func(t *testing.T) {
		l := startListener(t, server, "echobox", nil, "-k", "--exec", `printf '%s\n' "$P2PCAT_PEER_NAME"; test -z "$P2PCAT_PASSWORD" || echo LEAKED; cat`)
		alice, bob := randomBytes(t, 2<<20), randomBytes(t, 2<<20)
		pa := startHeldPeer(t, server, "alice", "echobox", alice)
		pb := startHeldPeer(t, server, "bob", "echobox", bob)
		l.waitCount(ctx, `msg="command started"`, 2)
		pa.release()
		pb.release()
		mustExit(t, ctx, pa.proc, "alice", exitOK)
		mustExit(t, ctx, pb.proc, "bob", exitOK)
		for name, c := range map[string]struct {
			p    *heldPeer
			data []byte
		}{"alice": {pa, alice}, "bob": {pb, bob}} {
			want := append([]byte(name+"\n"), c.data...)
			if got := c.p.stdout.Bytes(); sha256.Sum256(got) != sha256.Sum256(want) {
				t.Fatalf("%s got %d bytes back (starting %q), want its name line and its %d bytes", name, len(got), got[:min(len(got), 20)], len(c.data))
			}
		}
		l.waitCount(ctx, `msg="command exited" n=`, 2)
		if !l.sawStderr("status=0") {
			t.Fatalf("no exit status logged:\n%s", l.Stderr())
		}
	})

	t.Run("a command that fails", func(t *testing.T) {
		l := startListener(t, server, "failbox", nil, "-k", "--exec", "cat >/dev/null; echo oops from the command >&2; exit 3")
		for range 2 {
			p := startP2pcat(t, strings.NewReader("some input\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "failbox")
			mustExit(t, ctx, p, "alice", exitFailure)
			if e := p.errorLine(); !strings.Contains(e, "its input failed (the command exited with status 3)") {
				t.Fatalf("the peer's error does not name the command's status: %q", e)
			}
		}
		l.waitCount(ctx, `msg="command failed"`, 2)
		if !l.sawStderr("status=3") || !l.sawStderr("oops from the command") {
			t.Fatalf("the listener did not log the status or pass on the command's stderr:\n%s", l.Stderr())
		}
		select {
		case <-l.done:
			t.Fatalf("the listener exited after a failed command:\n%s", l.Stderr())
		default:
		}
	})

	t.Run("on the finding side", func(t *testing.T) {
		a := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "--exec", "tr a-z A-Z")
		b := startP2pcat(t, strings.NewReader("shout this\n"), peerEnv(server, "pw"), "--name", "bob", "--find", "alice")
		mustExit(t, ctx, a, "alice", exitOK)
		mustExit(t, ctx, b, "bob", exitOK)
		if got := b.stdout.String(); got != "SHOUT THIS\n" {
			t.Fatalf("bob got %q", got)
		}
	})
}

// sshStandIn listens on 127.0.0.1 like an sshd behind the listener: it
// greets, echoes lines, and closes after "bye". It returns its port.
func sshStandIn(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				io.WriteString(c, "SSH-2.0-stand-in\r\n")
				for r := bufio.NewReader(c); ; {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, line)
					if line == "bye\n" {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestListenProxyCommand: the ssh pattern, `p2pcat --listen -k --exec 'nc
// 127.0.0.1 PORT'` at home and `p2pcat --find homebox` as ssh's
// ProxyCommand, with a TCP stand-in for sshd; two clients in turn.
func TestListenProxyCommand(t *testing.T) {
	if _, err := exec.LookPath("nc"); err != nil {
		t.Skip("nc is not installed (the test runs the ssh pattern's `nc 127.0.0.1 PORT`; Debian: netcat-openbsd)")
	}
	ctx := testCtx(t, 3*time.Minute)
	_, server := startServe(t, ctx)
	port := sshStandIn(t)
	startListener(t, server, "homebox", nil, "-k", "--exec", fmt.Sprintf("nc 127.0.0.1 %d", port))
	for _, name := range []string{"laptop", "phone"} {
		in := fmt.Sprintf("hello from %s\nbye\n", name)
		p := startP2pcat(t, strings.NewReader(in), peerEnv(server, "pw"), "--name", name, "--find", "homebox")
		mustExit(t, ctx, p, name, exitOK)
		if got, want := p.stdout.String(), "SSH-2.0-stand-in\r\n"+in; got != want {
			t.Fatalf("%s got %q, want %q", name, got, want)
		}
	}
}

// TestListenWrongPassword: a wrong password against a listener is logged
// with the peer's name and address, the listener keeps serving, and the
// delay before its next wait grows (the logged delay, not wall time).
func TestListenWrongPassword(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	_, server := startServe(t, ctx)
	l := startListener(t, server, "homebox", nil, "-k")
	for _, delay := range []string{"1s", "2s", "4s"} {
		m := startP2pcat(t, strings.NewReader("guess\n"), peerEnv(server, "wrong"), "--name", "mallory", "--find", "homebox")
		mustExit(t, ctx, m, "mallory", exitAuth)
		l.waitStderr(ctx, "next_wait_in="+delay)
		if !l.sawStderr("next_wait_in=" + delay) {
			t.Fatalf("no failure logged with the delay %s:\n%s", delay, l.Stderr())
		}
	}
	logged := regexp.MustCompile(`msg="wrong password from mallory at 127\.0\.0\.1:\d+" .*failures=3 next_wait_in=4s`)
	if !logged.MatchString(l.Stderr()) {
		t.Fatalf("the third failure is not logged with the peer's name, address and count:\n%s", l.Stderr())
	}
	if strings.Contains(l.Stderr(), "guess") {
		t.Fatal("a guesser's data reached the listener")
	}
	data := hexLines(t, "alice", 100)
	p := startP2pcat(t, bytes.NewReader(data), peerEnv(server, "pw"), "--name", "alice", "--find", "homebox")
	mustExit(t, ctx, p, "alice", exitOK)
	if got := l.stdout.Bytes(); !bytes.Equal(got, data) {
		t.Fatalf("after the failures the listener wrote %d bytes, not alice's %d", len(got), len(data))
	}
}

// TestListenRefusesPathNames: a peer whose name would be a path (a script
// puts P2PCAT_PEER_NAME in one) is refused before the handshake, logged,
// and the listener serves on.
func TestListenRefusesPathNames(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	_, server := startServe(t, ctx)
	l := startListener(t, server, "homebox", nil, "-k", "--exec", "cat")
	bad := startP2pcat(t, strings.NewReader("x\n"), peerEnv(server, "pw"), "--name", "../etc", "--find", "homebox", "--connect-timeout", "3s")
	l.waitStderr(ctx, "refused peer name")
	if !l.sawStderr(`refused peer name \"../etc\" from 127.0.0.1:`) || !l.sawStderr("not usable as a file name") {
		t.Fatalf("the refusal is not logged with the name and address:\n%s", l.Stderr())
	}
	if code := bad.wait(ctx); code == exitOK {
		t.Fatalf("the refused peer exited 0:\n%s", bad.Stderr())
	}
	if l.sawStderr(`msg="command started"`) {
		t.Fatalf("the command ran for a refused peer:\n%s", l.Stderr())
	}
	p := startP2pcat(t, strings.NewReader("ok\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "homebox")
	mustExit(t, ctx, p, "alice", exitOK)
	if got := p.stdout.String(); got != "ok\n" {
		t.Fatalf("alice got %q", got)
	}
}

// TestListenSurvivesServerRestart: the server goes away under a waiting
// listener, which logs it and waits again with a backoff; the server comes
// back on the same port and a new peer is served.
func TestListenSurvivesServerRestart(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	port := freeUDPPort(t)
	serve := func() *proc {
		p := startP2pcat(t, nil, nil, "serve", "--listen", "127.0.0.1:"+port, "--stun-alternate", "off", "--data", t.TempDir(), "--log-format", "json")
		p.waitJSONLog(ctx, "rendezvous server listening")
		return p
	}
	server := "127.0.0.1:" + port
	srv := serve()
	l := startListener(t, server, "homebox", nil, "-k")
	p := startP2pcat(t, strings.NewReader("before\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "homebox")
	mustExit(t, ctx, p, "alice", exitOK)

	srv.signal(syscall.SIGKILL)
	srv.wait(ctx)
	if !l.waitStderr(ctx, "waiting for a peer failed") {
		t.Fatalf("the listener did not notice the server's loss:\n%s", l.Stderr())
	}
	serve()
	p = startP2pcat(t, strings.NewReader("after\n"), peerEnv(server, "pw"), "--name", "bob", "--find", "homebox", "--timeout", "90s")
	mustExit(t, ctx, p, "bob", exitOK)
	if got := l.stdout.String(); got != "before\nafter\n" {
		t.Fatalf("the listener wrote %q", got)
	}
}

// TestAuthDelay: the pause after failed handshakes doubles from 1 s to
// its cap of 10 minutes, so a guesser gets at most 6 guesses an hour
// once there (README: Listening).
func TestAuthDelay(t *testing.T) {
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for n, d := range want {
		if got := authDelay(n); got != d {
			t.Errorf("authDelay(%d) = %v, want %v", n, got, d)
		}
	}
	for _, n := range []int{11, 12, 40, 1 << 20} {
		if got := authDelay(n); got != maxAuthDelay {
			t.Errorf("authDelay(%d) = %v, want the cap %v", n, got, maxAuthDelay)
		}
	}
	if perHour := int(time.Hour / authDelay(100)); perHour != 6 {
		t.Errorf("%d guesses an hour at the cap, README says 6", perHour)
	}
}

// TestListenChatNamesPeer: a listener in a real terminal (tmux) opens the
// chat before it knows its peer; once bob authenticated, his lines carry
// his name, not "peer".
func TestListenChatNamesPeer(t *testing.T) {
	tm := newTmux(t)
	ctx := testCtx(t, 90*time.Second)
	_, server := startServe(t, ctx)
	bin, err := exec.LookPath("p2pcat")
	if err != nil {
		t.Fatal(err)
	}
	shell := fmt.Sprintf("P2PCAT_SERVER=%s P2PCAT_PASSWORD=pw %s --listen --name homebox --session chat; sleep 60", server, bin)
	tm.run("new-session", "-d", "-s", "chat", "-x", "100", "-y", "20", shell)
	tm.waitFor("waiting for a peer to find homebox", false, 30*time.Second)

	bobIn, bobInW := io.Pipe()
	bob := startP2pcat(t, bobIn, peerEnv(server, "pw"), "--name", "bob", "--find", "homebox", "--session", "chat")
	t.Cleanup(func() { bobInW.Close() }) // before bob's cleanup waits for him (LIFO): his stdin copy ends
	tm.waitFor("connected to bob", false, 30*time.Second)
	fmt.Fprint(bobInW, "hello homebox\n")
	screen := tm.waitFor("bob: hello homebox", false, 10*time.Second)
	if strings.Contains(screen, "peer: hello") {
		t.Fatalf("bob's line is labelled \"peer\":\n%s", screen)
	}
	bobInW.Close()
	tm.waitFor("bob left", false, 10*time.Second)
	mustExit(t, ctx, bob, "bob", exitOK)
}

// TestListenExecKilledWithSession: when the session ends before the
// command (its peer is interrupted or killed, or the listener is
// interrupted), the command's whole process group is stopped: a child it
// started in the background too, and a command that ignores SIGTERM by
// SIGKILL after the grace.
func TestListenExecKilledWithSession(t *testing.T) {
	for _, c := range []struct {
		name, command string
		stopListener  bool           // else the peer gets peerSignal
		peerSignal    syscall.Signal // SIGKILL: the listener learns it from the peer's silence
		signal        string
	}{
		{"peer-interrupted", "echo $$ > PIDFILE; sleep 300; echo done", false, syscall.SIGTERM, "killed by signal 15"},
		{"background-child", "sleep 300 & echo $$ > PIDFILE; wait; echo done", false, syscall.SIGTERM, "killed by signal 15"},
		{"ignores-sigterm", "trap '' TERM; echo $$ > PIDFILE; sleep 300; echo done", false, syscall.SIGTERM, "killed by signal 9"},
		{"peer-killed", "sleep 300 & echo $$ > PIDFILE; wait; echo done", false, syscall.SIGKILL, "killed by signal 15"},
		{"listener-interrupted", "sleep 300 & echo $$ > PIDFILE; wait; echo done", true, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			_, server := startServe(t, ctx)
			pidFile := filepath.Join(t.TempDir(), "pid")
			args := []string{"--exec", strings.ReplaceAll(c.command, "PIDFILE", pidFile)}
			if !c.stopListener {
				args = append(args, "-k")
			}
			var idle []string // both sides: the peer's keepalives come often enough
			if c.peerSignal == syscall.SIGKILL {
				idle = []string{"--idle-timeout", "3s"}
			}
			args = append(args, idle...)
			l := startListener(t, server, "homebox", nil, args...)
			// A real pipe as the peer's stdin, held open: the peer never
			// finishes sending, so only the stop ends the session.
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			p := startP2pcat(t, r, peerEnv(server, "pw"), append([]string{"--name", "alice", "--find", "homebox"}, idle...)...)
			pgid := waitPIDFile(t, ctx, pidFile)
			if c.stopListener {
				l.signal(syscall.SIGTERM)
				mustExit(t, ctx, l, "the listener", exitSignal)
				p.wait(ctx)
			} else {
				p.signal(c.peerSignal)
				if c.peerSignal == syscall.SIGKILL {
					p.wait(ctx)
				} else {
					mustExit(t, ctx, p, "alice", exitSignal)
				}
				if !l.waitStderr(ctx, `msg="command failed"`) || !l.sawStderr(c.signal) {
					t.Fatalf("the command's end is not logged (%s):\n%s", c.signal, l.Stderr())
				}
			}
			// The group is gone once the listener logged the command's
			// end (it waited for it); allow a moment for the kernel.
			deadline := time.Now().Add(10 * time.Second)
			for syscall.Kill(-pgid, 0) != syscall.ESRCH {
				if time.Now().After(deadline) {
					t.Fatalf("the command's process group %d is still there", pgid)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if strings.Contains(p.stdout.String(), "done") {
				t.Fatal("the command ran to its end")
			}
		})
	}
}

// waitPIDFile waits for the command to write its pid (its process group)
// to file.
func waitPIDFile(t *testing.T, ctx context.Context, file string) int {
	t.Helper()
	for {
		if b, err := os.ReadFile(file); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("the command never wrote its pid")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
