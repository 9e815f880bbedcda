package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var tmuxSockets atomic.Int64

// tmux drives a real terminal for the chat test.
type tmux struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T) *tmux {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("SKIPPING the terminal chat test: tmux is not installed (scripts/test.sh installs it with apt-get)")
	}
	// A socket per terminal: a tmux server whose last session ended is
	// still shutting down when the next test would connect to it.
	tm := &tmux{t: t, socket: fmt.Sprintf("p2pcat-test-%d-%d", os.Getpid(), tmuxSockets.Add(1))}
	t.Cleanup(func() { exec.Command("tmux", "-L", tm.socket, "kill-server").Run() })
	return tm
}

func (tm *tmux) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", tm.socket}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// screen returns the pane's text; with escapes, its colors too.
func (tm *tmux) screen(escapes bool) string {
	args := []string{"capture-pane", "-p", "-t", "chat"}
	if escapes {
		args = append(args, "-e")
	}
	return tm.run(args...)
}

// waitFor polls the screen (a terminal has no other signal) until it
// contains want, for at most d.
func (tm *tmux) waitFor(want string, escapes bool, d time.Duration) string {
	tm.t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := tm.screen(escapes)
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("the terminal never showed %q; screen:\n%s", want, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestChatInTerminal runs alice's p2pcat in a real terminal (tmux) and bob's
// as a script: the prompt, bob's line in color with his name (escape
// sequences he sent stripped), alice's typed line reaching bob, and alice's
// session ending when bob leaves.
func TestChatInTerminal(t *testing.T) {
	tm := newTmux(t)
	ctx := testCtx(t, 90*time.Second)
	_, server := startServe(t, ctx)
	bin, err := exec.LookPath("p2pcat")
	if err != nil {
		t.Fatal(err)
	}
	status := t.TempDir() + "/exit"
	shell := fmt.Sprintf("P2PCAT_SERVER=%s P2PCAT_PASSWORD=pw %s --name alice --find bob --session chat; echo $? > %s; sleep 60", server, bin, status)
	tm.run("new-session", "-d", "-s", "chat", "-x", "100", "-y", "20", shell)

	bobIn, bobInW := io.Pipe()
	t.Cleanup(func() { bobInW.Close() })
	bob := startP2pcat(t, bobIn, peerEnv(server, "pw"), "--name", "bob", "--find", "alice", "--session", "chat")
	tm.waitFor("connected to bob", false, 30*time.Second)
	tm.waitFor(">", false, 5*time.Second) // the prompt ("> "; tmux trims the space)

	fmt.Fprint(bobInW, "hello \x1b[2J\x1b]0;pwned\x07alice\n")
	screen := tm.waitFor("bob: hello alice", false, 10*time.Second)
	if strings.Contains(screen, "pwned") {
		t.Fatalf("the peer's escape sequence reached the terminal:\n%s", screen)
	}
	colored := tm.screen(true)
	if !regexp.MustCompile(`\x1b\[36m(\x1b\[[0-9;]*m)*bob:`).MatchString(colored) {
		t.Fatalf("bob's name is not shown in cyan:\n%q", colored)
	}

	tm.run("send-keys", "-t", "chat", "hi bob, how are you", "Enter")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(bob.stdout.String(), "hi bob, how are you\n") {
		if time.Now().After(deadline) {
			t.Fatalf("bob never received alice's line; got %q", bob.stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	bobInW.Close() // bob leaves
	tm.waitFor("bob left", false, 10*time.Second)
	if code := bob.wait(ctx); code != exitOK {
		t.Fatalf("bob: exit %d\n%s", code, bob.Stderr())
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(status)
		if strings.TrimSpace(string(b)) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice did not exit 0 after bob left (status %q); screen:\n%s", b, tm.screen(false))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctrl-C works in every state at a terminal: at the hidden password
// prompt (the echo comes back) and while the chat waits for its peer
// (the terminal is not raw yet, so Ctrl-C is still SIGINT). Both exit 130.
func TestInterruptAtTerminal(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	_, server := startServe(t, ctx)
	bin, err := exec.LookPath("p2pcat")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, env, waitFor string
	}{
		// P2PCAT_TEST_TTY="" lets the prompt open the real terminal.
		{"password prompt", "P2PCAT_TEST_TTY=/dev/tty", "Password for nobody"},
		{"waiting for the peer", "P2PCAT_PASSWORD=pw", "waiting for nobody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm := newTmux(t)
			status := t.TempDir() + "/exit"
			shell := fmt.Sprintf("%s P2PCAT_SERVER=%s %s --name alice --find nobody --session intr --timeout 50s; code=$?; stty -a | grep -o -- '-\\?echo ' > %s.echo; echo $code > %s; sleep 60",
				tc.env, server, bin, status, status)
			tm.run("new-session", "-d", "-s", "chat", "-x", "100", "-y", "20", shell)
			tm.waitFor(tc.waitFor, false, 20*time.Second)
			start := time.Now()
			tm.run("send-keys", "-t", "chat", "C-c")
			deadline := time.Now().Add(10 * time.Second)
			for {
				b, _ := os.ReadFile(status)
				if code := strings.TrimSpace(string(b)); code != "" {
					if code != "130" {
						t.Fatalf("exit %s after Ctrl-C, want 130; screen:\n%s", code, tm.screen(false))
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no exit within 10 s of Ctrl-C; screen:\n%s", tm.screen(false))
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("exited 130 %v after Ctrl-C", time.Since(start).Round(time.Millisecond))
			if echo, _ := os.ReadFile(status + ".echo"); strings.TrimSpace(string(echo)) != "echo" {
				t.Fatalf("the terminal's echo is %q after the interrupt, want it back on", echo)
			}
		})
	}
}
