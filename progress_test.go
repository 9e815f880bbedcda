package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 256 << 10: "256.0 KiB", 1 << 20: "1.0 MiB", 3 << 30: "3.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{0: "0:00", 59 * time.Second: "0:59", 61 * time.Second: "1:01", 3723 * time.Second: "1:02:03"} {
		if got := clock(d); got != want {
			t.Errorf("clock(%v) = %q, want %q", d, got, want)
		}
	}
	for d, want := range map[time.Duration]string{120 * time.Millisecond: "0.1 s", 4080 * time.Millisecond: "4.1 s", 75 * time.Second: "1:15"} {
		if got := took(d); got != want {
			t.Errorf("took(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestProgressLineMakesWay: other stderr output erases the line first and
// the line comes back after it, so the two never mix on a row.
func TestProgressLineMakesWay(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "tty") // not a terminal: the line is not cut
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	p := &progress{out: &out, terminal: f}
	io.WriteString(p, "p2pcat: before the line\n")
	p.last = "p2pcat: sent 1.0 KiB"
	p.drawLocked()
	io.WriteString(p, "p2pcat: bob left\n")
	io.WriteString(p, "partial ")
	io.WriteString(p, "line\n")
	want := "p2pcat: before the line\n" +
		"\rp2pcat: sent 1.0 KiB\x1b[K" +
		"\r\x1b[Kp2pcat: bob left\n" + "\rp2pcat: sent 1.0 KiB\x1b[K" +
		"\r\x1b[Kpartial " + "line\n" + "\rp2pcat: sent 1.0 KiB\x1b[K"
	if out.String() != want {
		t.Fatalf("stderr:\n%q\nwant\n%q", out.String(), want)
	}

	// stdout on the same terminal (--progress asked for there)
	out.Reset()
	var stdout bytes.Buffer
	io.WriteString(terminalOutput{p, &stdout}, "a line from the peer\n")
	if out.String() != "\r\x1b[K"+"\rp2pcat: sent 1.0 KiB\x1b[K" || stdout.String() != "a line from the peer\n" {
		t.Fatalf("stdout at the terminal: stderr %q, stdout %q", out.String(), stdout.String())
	}
}

// TestProgressNotOnTerminal: with stderr not a terminal there is no
// progress output by default, nor with -v --no-progress; --progress and
// -v each give a log line every 5 s and a summary. stdout stays
// byte-exact.
func TestProgressNotOnTerminal(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	_, server := startServe(t, ctx)

	t.Run("off", func(t *testing.T) {
		aliceSends, bobSends := randomBytes(t, 200<<10), randomBytes(t, 200<<10)
		alice := startP2pcat(t, bytes.NewReader(aliceSends), peerEnv(server, "pw"), "--name", "alice", "--find", "bob", "--session", "quiet")
		bob := startP2pcat(t, bytes.NewReader(bobSends), peerEnv(server, "pw"), "-v", "--no-progress", "--name", "bob", "--find", "alice", "--session", "quiet")
		for _, p := range []*proc{alice, bob} {
			if code := p.wait(ctx); code != exitOK {
				t.Fatalf("exit %d:\n%s", code, p.Stderr())
			}
			if s := p.Stderr(); strings.Contains(s, "msg=progress") || strings.Contains(s, "msg=summary") || strings.Contains(s, "p2pcat: sent") || strings.Contains(s, "p2pcat: done") {
				t.Errorf("progress output where none was asked for:\n%s", s)
			}
		}
		if !bytes.Equal(alice.stdout.Bytes(), bobSends) || !bytes.Equal(bob.stdout.Bytes(), aliceSends) {
			t.Fatal("the bytes differ")
		}
		if !bob.sawStderr("msg=connected") {
			t.Fatalf("bob's -v log is missing:\n%s", bob.Stderr())
		}
	})

	t.Run("asked", func(t *testing.T) {
		first, rest := randomBytes(t, 100<<10), randomBytes(t, 300<<10)
		in, inW := io.Pipe()
		t.Cleanup(func() { inW.Close() })
		bobSends := randomBytes(t, 64<<10)
		alice := startP2pcat(t, in, peerEnv(server, "pw"), "--progress", "--name", "alice", "--find", "bob", "--session", "asked")
		bob := startP2pcat(t, bytes.NewReader(bobSends), peerEnv(server, "pw"), "-v", "--name", "bob", "--find", "alice", "--session", "asked")
		if _, err := inW.Write(first); err != nil {
			t.Fatal(err)
		}
		// The session stays open until both have logged a progress line
		// (5 s after connecting).
		for name, p := range map[string]*proc{"alice (--progress)": alice, "bob (-v)": bob} {
			if !p.waitStderr(testCtx(t, 30*time.Second), "msg=progress") {
				t.Fatalf("%s: no progress log line:\n%s", name, p.Stderr())
			}
		}
		if !alice.sawStderr("msg=progress sent=102400 received=65536 ") {
			t.Errorf("alice's progress line does not count 100 KiB sent, 64 KiB received:\n%s", alice.Stderr())
		}
		inW.Write(rest)
		inW.Close()
		for _, p := range []*proc{alice, bob} {
			if code := p.wait(ctx); code != exitOK {
				t.Fatalf("exit %d:\n%s", code, p.Stderr())
			}
		}
		if !alice.sawStderr("msg=summary result=done sent=409600 received=65536 ") || !bob.sawStderr("msg=summary result=done sent=65536 received=409600 ") {
			t.Errorf("no summary with the counts:\nalice:\n%s\nbob:\n%s", alice.Stderr(), bob.Stderr())
		}
		if !bytes.Equal(bob.stdout.Bytes(), append(first, rest...)) || !bytes.Equal(alice.stdout.Bytes(), bobSends) {
			t.Fatal("the bytes differ")
		}
		if strings.Contains(alice.Stderr(), "\r") {
			t.Errorf("a terminal's redraw in a log:\n%q", alice.Stderr())
		}
	})
}
