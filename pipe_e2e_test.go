package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
	"github.com/p2pcat/p2pcat/rendezvous"
)

// startServe runs the real `p2pcat serve` on 127.0.0.1 and returns its
// address.
func startServe(t *testing.T, ctx context.Context) (*proc, string) {
	t.Helper()
	p := startP2pcat(t, nil, nil, "serve", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--log-format", "json")
	addr := p.waitJSONLog(ctx, "rendezvous server listening")["addr"].(string)
	return p, addr
}

// peerEnv is the environment of one peer.
func peerEnv(server, password string) []string {
	return []string{"P2PCAT_SERVER=" + server, "P2PCAT_PASSWORD=" + password}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// connectedPath waits for the -v "connected" line and returns its path= and
// peer= fields.
func (p *proc) connectedPath(ctx context.Context) (path, peer string) {
	p.t.Helper()
	for {
		select {
		case line := <-p.lines:
			if strings.Contains(line, "msg=connected") {
				for _, f := range strings.Fields(line) {
					if v, ok := strings.CutPrefix(f, "path="); ok {
						path = v
					}
					if v, ok := strings.CutPrefix(f, "peer="); ok {
						peer = v
					}
				}
				return path, peer
			}
		case <-p.done:
			p.t.Fatalf("exited before connecting (%v):\n%s", p.err, p.Stderr())
		case <-ctx.Done():
			p.t.Fatalf("never connected:\n%s", p.Stderr())
		}
	}
}

// TestPipeEndToEnd: a line each way, then a 16 MiB random file alice→bob
// with binary data (NUL bytes, a final line without newline) bob→alice;
// both exit 0 and every byte arrives.
func TestPipeEndToEnd(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	_, server := startServe(t, ctx)

	t.Run("a line each way", func(t *testing.T) {
		alice := startP2pcat(t, strings.NewReader("hi bob\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "-v")
		bob := startP2pcat(t, strings.NewReader("hi alice\n"), peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "-v")
		if path, _ := alice.connectedPath(ctx); path != "direct" {
			t.Fatalf("path=%q", path)
		}
		if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
			t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
		}
		if got := alice.stdout.String(); got != "hi alice\n" {
			t.Fatalf("alice got %q", got)
		}
		if got := bob.stdout.String(); got != "hi bob\n" {
			t.Fatalf("bob got %q", got)
		}
	})

	for _, offload := range []bool{true, false} {
		name := "16 MiB file and binary data"
		extra := []string{}
		if !offload {
			name += ", without UDP offload"
			extra = append(extra, "--no-offload")
		}
		t.Run(name, func(t *testing.T) {
			file := randomBytes(t, 16<<20)
			binary := append(bytes.Repeat([]byte("nul\x00byte\x00\n"), 1000), []byte("\x00\xff last line without newline")...)
			start := time.Now()
			session := fmt.Sprintf("file-%v", offload)
			alice := startP2pcat(t, bytes.NewReader(file), peerEnv(server, "pw"), append([]string{"--name", "alice", "--find", "bob", "--session", session}, extra...)...)
			bob := startP2pcat(t, bytes.NewReader(binary), peerEnv(server, "pw"), append([]string{"--name", "bob", "--find", "alice", "--session", session}, extra...)...)
			if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
				t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
			}
			t.Logf("16 MiB + %d bytes exchanged in %v", len(binary), time.Since(start))
			if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
				t.Fatalf("bob received %d bytes, not the %d-byte file", bob.stdout.Len(), len(file))
			}
			if !bytes.Equal(alice.stdout.Bytes(), binary) {
				t.Fatalf("alice received %d bytes that differ from the %d sent", alice.stdout.Len(), len(binary))
			}
		})
	}
}

// TestPipeLossyPath runs the 16 MiB transfer through a relay that drops 5%,
// duplicates 2%, reorders and delays, in both directions; the peers are
// told each other's address directly (--peer), so all their traffic crosses
// the relay. The relay's capture proves that the wire carries neither the
// payload nor the password.
func TestPipeLossyPath(t *testing.T) {
	// With 1200-byte datagrams (thousands of losses to recover from) and
	// with path MTU probing (large datagrams on loopback).
	for _, probe := range []bool{false, true} {
		t.Run(fmt.Sprintf("mtu-probe=%v", probe), func(t *testing.T) { testPipeLossyPath(t, probe) })
	}
}

func testPipeLossyPath(t *testing.T, probe bool) {
	ctx := testCtx(t, 3*time.Minute)
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	lossy := netem.Impairment{Loss: 0.05, Duplicate: 0.02, Reorder: 0.05, Delay: 5 * time.Millisecond, Jitter: 2 * time.Millisecond}
	const password = "lossy-path-password"
	marker := []byte("PAYLOAD-MARKER-7f3a9c")
	var captured struct {
		sync.Mutex
		leaks   int
		packets int
		bytes   int
	}
	proxy, err := netem.Start(ctx, netem.Config{
		A: netip.MustParseAddrPort("127.0.0.1:" + portA), B: netip.MustParseAddrPort("127.0.0.1:" + portB),
		AtoB: lossy, BtoA: lossy, Seed: 42,
		Capture: func(_ netem.Direction, d []byte) {
			captured.Lock()
			defer captured.Unlock()
			captured.packets++
			captured.bytes += len(d)
			if bytes.Contains(d, marker) || bytes.Contains(d, []byte(password)) {
				captured.leaks++
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	file := randomBytes(t, 16<<20)
	copy(file[1000:], marker) // a recognisable plaintext, also at the start of a line
	copy(file[5<<20:], marker)
	env := []string{"P2PCAT_PASSWORD=" + password}
	if !probe {
		env = append(env, "P2PCAT_NO_MTU_PROBE=1")
	}
	start := time.Now()
	alice := startP2pcat(t, bytes.NewReader(file), env, "--name", "alice", "--find", "bob", "--port", portA, "--peer", proxy.FaceA().String(), "-v")
	bob := startP2pcat(t, strings.NewReader(string(marker)+" back\n"), env, "--name", "bob", "--find", "alice", "--port", portB, "--peer", proxy.FaceB().String(), "-v")
	if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
		t.Fatalf("exit codes %d %d\nalice:\n%s\nbob:\n%s\nrelay: %v", ca, cb, alice.Stderr(), bob.Stderr(), proxy.Stats())
	}
	el := time.Since(start)
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(file) {
		t.Fatalf("bob received %d bytes, not the file", bob.stdout.Len())
	}
	if alice.stdout.String() != string(marker)+" back\n" {
		t.Fatalf("alice got %q", alice.stdout.String())
	}
	st := proxy.Stats()
	if st.AtoB.DroppedLoss == 0 || st.AtoB.Duplicated == 0 {
		t.Fatalf("the relay did not impair anything: %v", st)
	}
	t.Logf("16 MiB over 5%% loss, 2%% duplication, reordering, 5±2 ms delay each way: %v (%.1f MB/s); relay: %v", el, float64(len(file))/el.Seconds()/1e6, st)
	captured.Lock()
	defer captured.Unlock()
	if captured.bytes < len(file) {
		t.Fatalf("captured only %d bytes in %d datagrams: the capture missed traffic", captured.bytes, captured.packets)
	}
	if captured.leaks > 0 {
		t.Fatalf("%d captured datagrams contain the payload marker or the password", captured.leaks)
	}
}

// freeUDPPort returns a UDP port that is free on every address. It picks
// below Linux's ephemeral range (32768-60999), where the kernel
// never hands out a port by itself: a port found free there stays free
// until the binary binds it, however many sockets other tests open
// meanwhile (birthday punching's tests open hundreds).
func freeUDPPort(t *testing.T) string {
	for range 1000 {
		port := 20000 + mathrand.IntN(12000)
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
		if err != nil {
			continue
		}
		c.Close()
		return strconv.Itoa(port)
	}
	t.Fatal("no free UDP port in 20000-31999")
	return ""
}

// TestPipeExitCodes checks every documented exit code of the pipe.
func TestPipeExitCodes(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	_, server := startServe(t, ctx)

	t.Run("2 usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"--find", "bob", "--rsa-bits", "1024"},
			{"--find", "bob bob"},
			{"--find", "alice", "--name", "alice"},
			{"--name", "alice", "--timeout", "5s"},
			{"--find", "bob", "--peer", "nonsense"},
		} {
			p := startP2pcat(t, nil, peerEnv(server, "pw"), args...)
			if code := p.wait(ctx); code != exitUsage || !strings.HasPrefix(p.Stderr(), "p2pcat: error: ") {
				t.Errorf("%v: exit %d\n%s", args, code, p.Stderr())
			}
		}
		p := startP2pcat(t, nil, []string{"P2PCAT_SERVER=" + server}, "--find", "bob", "--name", "alice")
		if code := p.wait(ctx); code != exitUsage || !strings.Contains(p.Stderr(), "P2PCAT_PASSWORD") {
			t.Errorf("no password and no terminal: exit %d\n%s", code, p.Stderr())
		}
	})

	t.Run("3 peer absent", func(t *testing.T) {
		p := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "alice", "--find", "nobody", "--timeout", "2s")
		if code := p.wait(ctx); code != exitNoPeer || !strings.Contains(p.Stderr(), "nobody did not show up within 2s") {
			t.Fatalf("exit %d\n%s", code, p.Stderr())
		}
	})

	t.Run("4 wrong password on both sides", func(t *testing.T) {
		alice := startP2pcat(t, strings.NewReader("secret\n"), peerEnv(server, "alice-pw-9x7"), "--name", "alice", "--find", "bob", "--session", "auth")
		bob := startP2pcat(t, strings.NewReader("secret\n"), peerEnv(server, "bob-pw-4q2"), "--name", "bob", "--find", "alice", "--session", "auth")
		ca, cb := alice.wait(ctx), bob.wait(ctx)
		for name, c := range map[string]struct {
			code int
			p    *proc
		}{"alice": {ca, alice}, "bob": {cb, bob}} {
			if c.code != exitAuth || !strings.Contains(c.p.Stderr(), "authentication failed: wrong password or someone in the middle") {
				t.Errorf("%s: exit %d\n%s", name, c.code, c.p.Stderr())
			}
			if strings.Contains(c.p.Stderr(), "-pw-") || c.p.stdout.Len() != 0 {
				t.Errorf("%s leaked something: stdout %q stderr %q", name, c.p.stdout.String(), c.p.Stderr())
			}
		}
	})

	t.Run("4 registered session, wrong key or password; 2 no key", func(t *testing.T) {
		dir := t.TempDir()
		keyFile, otherKey := filepath.Join(dir, "club.key"), filepath.Join(dir, "other.key")
		for _, reg := range []*proc{
			startP2pcat(t, nil, peerEnv(server, ""), "register", "club", "-k", keyFile),
			startP2pcat(t, nil, peerEnv(server, ""), "register", "other", "-k", otherKey),
		} {
			if code := reg.wait(ctx); code != exitOK {
				t.Fatalf("register: %d %s", code, reg.Stderr())
			}
		}
		// Another session's key: the server refuses the find.
		p := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "mallory", "--find", "bob", "--session", "club", "-K", otherKey)
		if code := p.wait(ctx); code != exitAuth || !strings.Contains(p.Stderr(), "wrong session key") {
			t.Fatalf("wrong key: exit %d\n%s", code, p.Stderr())
		}
		// No key: a configuration error, and nothing is sent but Hello.
		p = startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "mallory", "--find", "bob", "--session", "club")
		if code := p.wait(ctx); code != exitUsage || !strings.Contains(p.Stderr(), "give its session key") {
			t.Fatalf("no key: exit %d\n%s", code, p.Stderr())
		}
		// The right key and the wrong password: the peers' handshake
		// fails on both sides.
		alice := startP2pcat(t, strings.NewReader("x\n"), peerEnv(server, "alice-pw"), "--name", "alice", "--find", "bob", "--session", "club", "-K", keyFile)
		bob := startP2pcat(t, strings.NewReader("y\n"), peerEnv(server, "bob-pw"), "--name", "bob", "--find", "alice", "--session", "club", "-K", keyFile)
		if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitAuth || cb != exitAuth {
			t.Fatalf("wrong password with the key: exit codes %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
		}
		// The right key and password: connected.
		alice = startP2pcat(t, strings.NewReader("from alice\n"), peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "--session", "club", "-K", keyFile)
		bob = startP2pcat(t, strings.NewReader("from bob\n"), peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "--session", "club", "-K", keyFile)
		if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK || bob.stdout.String() != "from alice\n" {
			t.Fatalf("key and password right: exit codes %d %d, bob got %q\nalice:\n%s\nbob:\n%s", ca, cb, bob.stdout.String(), alice.Stderr(), bob.Stderr())
		}
	})

	t.Run("5 no path", func(t *testing.T) {
		// The peer is found, but its addresses lead nowhere: a rendezvous
		// client from this test plays a peer that never answers.
		fake, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		srv := netip.MustParseAddrPort(server)
		c := &rendezvous.Client{Conn: fake, Server: srv}
		done := make(chan error, 1)
		go func() {
			_, err := c.Find(ctx, rendezvous.FindRequest{Session: "void", Name: "ghost", Peer: "alice",
				Candidates: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}})
			fake.Close() // the ghost vanishes once paired: nothing answers
			done <- err
		}()
		p := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "alice", "--find", "ghost", "--session", "void", "--connect-timeout", "2s")
		if err := <-done; err != nil {
			t.Fatalf("ghost find: %v", err)
		}
		if code := p.wait(ctx); code != exitNoPath || !strings.Contains(p.Stderr(), "no path to the peer could be established") {
			t.Fatalf("exit %d\n%s", code, p.Stderr())
		}
	})

	t.Run("1 peer lost mid-session, 130 interrupted", func(t *testing.T) {
		// alice streams from a pipe that never ends; bob receives. bob is
		// killed (no chance to say goodbye): alice notices within the idle
		// timeout and exits 1. Then a second pair: alice is interrupted with
		// SIGINT, exits 130, and bob is told and exits 1 at once.
		r, w, _ := os.Pipe()
		defer w.Close()
		go func() {
			for ctx.Err() == nil {
				if _, err := w.Write([]byte("tick\n")); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		alice := startP2pcat(t, r, peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "--session", "lost", "--idle-timeout", "2s", "-v")
		r.Close()
		bob := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "--session", "lost", "-v")
		alice.connectedPath(ctx)
		bob.connectedPath(ctx)
		bob.cmd.Process.Kill()
		start := time.Now()
		if code := alice.wait(ctx); code != exitFailure || !strings.Contains(alice.Stderr(), "lost the connection to bob") {
			t.Fatalf("alice after bob died: exit %d\n%s", code, alice.Stderr())
		}
		t.Logf("loss of the peer noticed after %v", time.Since(start))

		r2, w2, _ := os.Pipe()
		defer w2.Close()
		alice2 := startP2pcat(t, r2, peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "--session", "intr", "-v")
		r2.Close()
		bob2 := startP2pcat(t, nil, peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "--session", "intr", "-v", "--idle-timeout", "60s")
		alice2.connectedPath(ctx)
		bob2.connectedPath(ctx)
		w2.Write([]byte("before the interrupt\n"))
		alice2.signal(syscall.SIGINT)
		if code := alice2.wait(ctx); code != exitSignal {
			t.Fatalf("alice after SIGINT: exit %d\n%s", code, alice2.Stderr())
		}
		start = time.Now()
		if code := bob2.wait(ctx); code != exitFailure || !strings.Contains(bob2.Stderr(), "alice ended the session before it was complete") {
			t.Fatalf("bob after alice's interrupt: exit %d\n%s", code, bob2.Stderr())
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("bob took %v to notice the interrupt (its idle timeout is 60s): the close notice did not work", el)
		}
	})
}
