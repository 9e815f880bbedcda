package main

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// testTimeout bounds every wait; only a broken command reaches it.
const testTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	// Makes the test binary runnable as "netem", in scripts and in PATH.
	testscript.Main(m, map[string]func(){"netem": main})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata", RequireExplicitExec: true})
}

func TestBadFlagsExitWithStatus2(t *testing.T) {
	for _, args := range [][]string{{"-loss", "2"}, {"-nope"}, {"stray"}} {
		out, err := exec.Command("netem", args...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage {
			t.Errorf("netem %v: %v, want exit status %d", args, err, exitUsage)
		}
		if lines := strings.Count(string(out), "\n"); lines != 1 {
			t.Errorf("netem %v printed %d lines, want 1:\n%s", args, lines, out)
		}
	}
}

func listen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) string { return c.LocalAddr().String() }

// relay sends msg from one peer to face and checks that the other receives
// it from wantFrom after at least minDelay.
func relay(t *testing.T, from, to *net.UDPConn, face, wantFrom netip.AddrPort, msg string, minDelay time.Duration) {
	t.Helper()
	sent := time.Now()
	if _, err := from.WriteToUDPAddrPort([]byte(msg), face); err != nil {
		t.Fatal(err)
	}
	if err := to.SetReadDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, src, err := to.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != msg || src != wantFrom {
		t.Fatalf("got %q from %v, want %q from %v", got, src, msg, wantFrom)
	}
	if took := time.Since(sent); took < minDelay {
		t.Errorf("%q took %v, want ≥ %v", msg, took, minDelay)
	}
}

func TestRelaysUntilSignalledThenReportsStats(t *testing.T) {
	a, b := listen(t), listen(t)
	cmd := exec.Command("netem", "-a", addrOf(a), "-b", addrOf(b), "-delay", "5ms", "-delay-ba", "15ms", "-seed", "3")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 16)
	go func() { // owned by this test: it ends with stdout, when netem exits
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	reaped := false
	t.Cleanup(func() {
		if !reaped { // the test failed early: don't leave netem running
			cmd.Process.Kill()
			<-exited
		}
	})

	var ready string
	select {
	case ready = <-lines:
	case <-time.After(testTimeout):
		t.Fatal("netem did not print its faces")
	}
	m := regexp.MustCompile(`^faceA=(\S+) faceB=(\S+)$`).FindStringSubmatch(ready)
	if m == nil {
		t.Fatalf("first line %q, want faceA=IP:PORT faceB=IP:PORT", ready)
	}
	faceA, faceB := netip.MustParseAddrPort(m[1]), netip.MustParseAddrPort(m[2])

	relay(t, a, b, faceA, faceB, "hello B", 5*time.Millisecond)
	relay(t, b, a, faceB, faceA, "hello A", 15*time.Millisecond)

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("netem exited with %v after SIGINT; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(testTimeout):
		t.Fatal("netem did not exit after SIGINT")
	}
	if extra, ok := <-lines; ok {
		t.Errorf("stdout has more than the ready line: %q", extra)
	}
	for _, want := range []string{"a->b received=1 delivered=1 ", "b->a received=1 delivered=1 "} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
