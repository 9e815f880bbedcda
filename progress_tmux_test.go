package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// progressLine matches the progress line as a terminal shows it.
var progressLine = regexp.MustCompile(`(?m)^p2pcat: sent [0-9.]+ [KMG]?i?B, received [0-9.]+ [KMG]?i?B, [0-9.]+ [KMG]?i?B/s, \d+:\d\d, direct$`)

// aliceAtTerminal runs alice's p2pcat in a real terminal (tmux) with
// stdin from stdinFile (a FIFO the test feeds, or a file) and stdout to a
// file, so that only stderr is the terminal; bob runs as a script and
// sends bobSends. It returns the terminal, alice's stdout file, the file
// her exit status lands in, and bob.
func aliceAtTerminal(t *testing.T, stdinFile string, bobSends []byte, args ...string) (tm *tmux, out, status string, bob *proc) {
	tm = newTmux(t)
	ctx := testCtx(t, 90*time.Second)
	_, server := startServe(t, ctx)
	bin, err := exec.LookPath("p2pcat")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, status = filepath.Join(dir, "out"), filepath.Join(dir, "exit")
	shell := fmt.Sprintf("P2PCAT_SERVER=%s P2PCAT_PASSWORD=pw %s --name alice --find bob --session progress %s < %s > %s; echo $? > %s; sleep 60",
		server, bin, strings.Join(args, " "), stdinFile, out, status)
	tm.run("new-session", "-d", "-s", "chat", "-x", "100", "-y", "20", shell)
	bob = startP2pcat(t, bytes.NewReader(bobSends), peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "--session", "progress")
	return tm, out, status, bob
}

// waitExit waits for the exit status that the terminal's shell writes.
func waitExit(t *testing.T, tm *tmux, status string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if b, _ := os.ReadFile(status); len(bytes.TrimSpace(b)) > 0 {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice did not exit within %v; screen:\n%s", d, tm.screen(false))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProgressInTerminal: with stderr a terminal and stdout a file, the
// progress line is on by default. It is drawn in place and follows the
// bytes (the test feeds alice's stdin in two steps and sees two different
// renderings), the summary takes its place at the end, and stdout is
// byte-exact both ways.
func TestProgressInTerminal(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "in")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	aliceSends, bobSends := randomBytes(t, 1<<20), randomBytes(t, 1<<20)
	tm, out, status, bob := aliceAtTerminal(t, fifo, bobSends)
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0) // once alice's shell opens it
		if err != nil {
			t.Error(err)
		}
		opened <- f
	}()
	var in *os.File
	select {
	case in = <-opened:
	case <-time.After(30 * time.Second):
		t.Fatalf("alice's shell never opened its stdin; screen:\n%s", tm.screen(false))
	}
	defer in.Close()
	in.SetWriteDeadline(time.Now().Add(60 * time.Second)) // a FIFO's write waits for alice to read it

	seen := map[string]bool{}
	for _, step := range []struct {
		bytes []byte
		want  string
	}{
		{aliceSends[:256<<10], "sent 256.0 KiB,"},
		{aliceSends[256<<10:], "sent 1.0 MiB,"},
	} {
		if _, err := in.Write(step.bytes); err != nil {
			t.Fatal(err)
		}
		screen := tm.waitFor(step.want, false, 30*time.Second)
		lines := progressLine.FindAllString(screen, -1)
		if len(lines) != 1 {
			t.Fatalf("want the progress line once on the screen, got %d:\n%s", len(lines), screen)
		}
		seen[lines[0]] = true
	}
	if len(seen) < 2 {
		t.Fatalf("the progress line did not change: %v", seen)
	}
	in.Close()

	if code := waitExit(t, tm, status, 30*time.Second); code != "0" {
		t.Fatalf("alice exited %s; screen:\n%s", code, tm.screen(false))
	}
	screen := tm.screen(false)
	if !regexp.MustCompile(`(?m)^p2pcat: done: sent 1\.0 MiB, received 1\.0 MiB in [0-9.]+ s \([0-9.]+ [KMG]?i?B/s\), direct$`).MatchString(screen) {
		t.Fatalf("no summary line; screen:\n%s", screen)
	}
	if progressLine.MatchString(screen) {
		t.Fatalf("the progress line is still there after the summary:\n%s", screen)
	}
	if !strings.Contains(screen, "connected to bob (direct") {
		t.Fatalf("the status lines are gone:\n%s", screen)
	}
	if code := bob.wait(testCtx(t, 30*time.Second)); code != exitOK {
		t.Fatalf("bob exited %d:\n%s", code, bob.Stderr())
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(bobSends) {
		t.Fatalf("alice's stdout: %d bytes, not bob's %d", len(got), len(bobSends))
	}
	if sha256.Sum256(bob.stdout.Bytes()) != sha256.Sum256(aliceSends) {
		t.Fatalf("bob's stdout: %d bytes, not alice's %d", bob.stdout.Len(), len(aliceSends))
	}
	t.Logf("renderings seen: %q", keys(seen))
}

// TestNoProgressFlagInTerminal: --no-progress silences the line where it
// would be on by default.
func TestNoProgressFlagInTerminal(t *testing.T) {
	in := filepath.Join(t.TempDir(), "in")
	aliceSends, bobSends := randomBytes(t, 256<<10), randomBytes(t, 256<<10)
	if err := os.WriteFile(in, aliceSends, 0o600); err != nil {
		t.Fatal(err)
	}
	tm, out, status, bob := aliceAtTerminal(t, in, bobSends, "--no-progress")
	if code := waitExit(t, tm, status, 60*time.Second); code != "0" {
		t.Fatalf("alice exited %s; screen:\n%s", code, tm.screen(false))
	}
	screen := tm.screen(false)
	if !strings.Contains(screen, "connected to bob") {
		t.Fatalf("no status lines:\n%s", screen)
	}
	if strings.Contains(screen, "p2pcat: sent") || strings.Contains(screen, "p2pcat: done:") {
		t.Fatalf("--no-progress, and yet:\n%s", screen)
	}
	if code := bob.wait(testCtx(t, 30*time.Second)); code != exitOK {
		t.Fatalf("bob exited %d:\n%s", code, bob.Stderr())
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, bobSends) || !bytes.Equal(bob.stdout.Bytes(), aliceSends) {
		t.Fatalf("the bytes differ: alice got %d of %d, bob %d of %d", len(got), len(bobSends), bob.stdout.Len(), len(aliceSends))
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
