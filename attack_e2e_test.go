package main

// The attack suite (issue 12, "Must show"): each case plays an adversary of
// PROTOCOL.md's threat model against the real p2pcat binary over real
// loopback sockets, with internal/attacker's malicious rendezvous server,
// attacker peers, tap and man in the middle, and logs what it measured.
//
//  1. A malicious server claims that an unregistered session is
//     registered: the victim sends nothing but its Hello, nothing
//     password-derived, and exits 2.
//  2. Captures of `register` and of a registered session's finds: a
//     dictionary attack finds nothing, and the capture does not depend on
//     the password at all.
//  3. A malicious server pairs the victim with an attacker in every punch
//     attempt: at most one password-dependent answer per run, and exit 4.
//  4. Relay hijack with an observed pairing id: nothing relayed to the
//     attacker, the session intact.
//  5. Direct mode, forged Hellos from another address: no answer. (And in
//     rendezvous mode, from a non-candidate: no answer; whether the flood
//     takes the responder's one slot is logged.)
//  6. Amplification: a spoofed probe's source gets at most 3 times the
//     probe; the server's answers to unproven addresses are never larger
//     than the request.
//  7. What held in version 1 and must keep holding: MITM without the
//     password, substitution of handshake fields, reflection and role
//     confusion (which also measure the probe rate: two unconfirmed sides
//     must not answer each other's probes without end), a hostile relay,
//     replayed captures, the password in logs and on the wire.
//
// Cases run concurrently, attackParallel at a time; each is bounded by its
// own context.

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// attackParallel: cases at a time. Most of a case's time is spent waiting
// for timeouts, not computing.
const attackParallel = 4

func TestAttack(t *testing.T) {
	cases := []struct {
		name string
		run  func(*testing.T)
	}{
		// Longest first.
		{"3_guesses_relay_auto", func(t *testing.T) { attackGuesses(t, "auto") }},
		{"3_guesses_relay_never", func(t *testing.T) { attackGuesses(t, "never") }},
		{"7_mitm", attackMITM},
		{"2_registered_capture", attackRegisteredCapture},
		{"6_amplification", attackAmplification},
		{"7_replay", attackReplay},
		{"7_hostile_relay", attackHostileRelay},
		{"7_reflection_role_confusion", attackReflection},
		{"7_substitution", attackSubstitution},
		{"4_relay_hijack", attackRelayHijack},
		{"5_direct_forged_hello", attackDirectHello},
		{"5_rendezvous_forged_hello", attackRendezvousHello},
		{"3_mirror_attacker_responds", attackGuessMirror},
		{"3_control_right_guess", attackGuessControl},
		{"1_registered_flag", attackRegisteredFlag},
	}
	start := time.Now()
	sem := make(chan struct{}, attackParallel)
	var wg sync.WaitGroup
	for _, c := range cases {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t.Run(c.name, c.run)
		})
	}
	wg.Wait()
	t.Logf("attack suite: %d cases in %v", len(cases), time.Since(start).Round(100*time.Millisecond))
}

// --- shared helpers ---

func newAttackPeer(t *testing.T) *attacker.Peer {
	t.Helper()
	p, err := attacker.NewPeer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func startAttackServer(t *testing.T, b attacker.Behaviour) *attacker.Server {
	t.Helper()
	s, err := attacker.StartServer(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startTap(t *testing.T, server netip.AddrPort, notify func(attacker.Captured)) *attacker.Tap {
	t.Helper()
	tap, err := attacker.StartTap(server, notify)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	return tap
}

func startMiddle(t *testing.T, portA, portB string, hook attacker.Hook) *attacker.Middle {
	t.Helper()
	m, err := attacker.StartMiddle(netip.MustParseAddrPort("127.0.0.1:"+portA), netip.MustParseAddrPort("127.0.0.1:"+portB), hook)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitUntil polls cond every 5 ms until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// udpBound reports whether a UDP socket of this host is bound to port (any
// address), from /proc/net/udp and udp6: a test knows a p2pcat listens
// before it sends it anything.
func udpBound(port string) bool {
	if _, err := os.Stat("/proc/net/udp"); err != nil {
		return true // not Linux: the callers' generous timeouts cover it
	}
	var p int
	fmt.Sscan(port, &p)
	want := fmt.Sprintf(":%04X ", p)
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 1 && strings.HasSuffix(fields[1]+" ", want) {
				return true
			}
		}
	}
	return false
}

// noPassword fails the test if password (or its hex) occurs in any of
// data; where says what data is.
func noPassword(t *testing.T, password, where string, data ...[]byte) {
	t.Helper()
	for _, d := range data {
		for _, form := range []string{password, fmt.Sprintf("%x", password)} {
			if bytes.Contains(d, []byte(form)) {
				t.Errorf("the password appears in %s", where)
				return
			}
		}
	}
}

func stderrBytes(ps ...*proc) [][]byte {
	var out [][]byte
	for _, p := range ps {
		out = append(out, []byte(p.Stderr()))
	}
	return out
}

// wireTypes counts the rendezvous message types of datagrams.
func wireTypes(ds []attacker.Datagram) map[string]int {
	n := map[string]int{}
	for _, d := range ds {
		m, err := wire.Decode(d.Data)
		if err != nil {
			n[fmt.Sprintf("undecodable(0x%02x)", d.Data[0])]++
			continue
		}
		n[m.Type().String()]++
	}
	return n
}

func handshakeTypes(ds []attacker.Datagram) map[string]int {
	names := map[byte]string{attacker.TypeHello: "Hello", attacker.TypeReply: "Reply", attacker.TypeFinish: "Finish", attacker.TypeFinished: "Finished",
		attacker.TypeAuthFailed: "AuthFailed", attacker.TypeCancel: "Cancel", attacker.TypeProbe: "probe", attacker.TypeRelay: "relayed", 0xD0: "Data", 0xD1: "Keepalive", 0xD2: "DataHead"}
	n := map[string]int{}
	for _, d := range ds {
		name, ok := names[d.Data[0]]
		if !ok {
			name = fmt.Sprintf("0x%02x", d.Data[0])
		}
		n[name]++
	}
	return n
}

func writeSessionKey(t *testing.T) (rendezvous.SessionKey, string) {
	t.Helper()
	key, err := rendezvous.GenerateSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "session.key")
	if err := os.WriteFile(file, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key, file
}
