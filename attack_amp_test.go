package main

// TestAttack, amplification (attack 6 of TestAttack).

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// --- 6. amplification ---

func attackAmplification(t *testing.T) {
	t.Run("spoofed probe to a waiting initiator", attackAmpProbe)
	t.Run("spoofed probe while relaying", attackAmpRelaying)
	t.Run("server answers to unproven addresses", attackAmpServer)
}

// attackAmpProbe: a real p2pcat (alice, the initiator) paired by a
// malicious server with a peer that never answers receives one valid
// 128-byte probe from a "spoofed" source (another socket of the test).
// Everything that comes back to that socket in 5 s is at most 3 times the
// probe.
func attackAmpProbe(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	ghost := newAttackPeer(t) // the peer that never answers
	spoofed := newAttackPeer(t)
	attempts := make(chan attacker.Attempt, 8)
	srv := startAttackServer(t, attacker.Pair(func(a attacker.Attempt) *wire.FindResp {
		attempts <- a
		return &wire.FindResp{Role: wire.RoleInitiator, PeerObserved: ghost.Addr}
	}))
	victim := startP2pcat(t, nil, peerEnv(srv.Addr.String(), "amp-pw"), "--name", "alice", "--find", "zed", "--relay", "never", "--connect-timeout", "6s", "-v")
	var a attacker.Attempt
	select {
	case a = <-attempts:
	case <-ctx.Done():
		t.Fatal("the victim never asked for its peer")
	}
	// Its path runs once its probes reach the ghost: a probe that came
	// earlier would be read (and dropped) by the rendezvous client.
	if !waitUntil(ctx, func() bool {
		for _, d := range ghost.Received() {
			if d.From == a.From && d.Data[0] == attacker.TypeProbe {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the victim never probed its peer")
	}
	spoofed.Probe(a.From, a.PairingID)
	time.Sleep(5 * time.Second)
	got := spoofed.Received()
	in, out := spoofed.SentBytes(), spoofed.ReceivedBytes()
	t.Logf("one %d-byte probe from a spoofed source; in 5 s the victim sent it %d datagrams, %d bytes %v: ratio %.2f (bound 3)", in, len(got), out, handshakeTypes(got), float64(out)/float64(in))
	if out > 3*in {
		t.Errorf("BREAK: %d bytes to the spoofed source for a %d-byte probe: ×%.1f", out, in, float64(out)/float64(in))
	}
	victim.wait(ctx)
}

// attackAmpRelaying: the same rule while the session is relayed (--relay
// only through a real server): a probe from a new address is a hint that a
// direct path may work, and copies of the session's datagrams go there,
// within the 3× budget of an unproven address. An attacker who saw the
// pairing id (a tap on the client-server path) and knows alice's address
// sends one probe from a "spoofed" source first (the control: its budget
// holds), then one from each of 16 sockets of its own (the most addresses
// a path remembers), then one more from a second spoofed source. Each may
// get at most 3 times its probe.
func attackAmpRelaying(t *testing.T) {
	ctx := testCtx(t, 45*time.Second)
	_, server := startServe(t, ctx)
	pids := make(chan [16]byte, 1)
	tap := startTap(t, netip.MustParseAddrPort(server), func(c attacker.Captured) {
		if c.ToServer && c.Data[0] == wire.RelayType && len(c.Data) > wire.RelayHeaderLen {
			select {
			case pids <- [16]byte(c.Data[1:17]):
			default:
			}
		}
	})
	portA := freeUDPPort(t)
	aliceAddr := netip.MustParseAddrPort("127.0.0.1:" + portA)
	in, feed := io.Pipe()
	env := peerEnv(tap.Addr.String(), "amp-relay-pw")
	alice := startP2pcat(t, in, env, "--name", "alice", "--find", "bob", "--session", "amp", "--relay", "only", "--port", portA, "-v")
	bob := startP2pcat(t, nil, env, "--name", "bob", "--find", "alice", "--session", "amp", "--relay", "only", "-v")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // alice keeps talking
		defer feed.Close()
		chunk := bytes.Repeat([]byte("relayed line of a long session\n"), 64)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				if _, err := feed.Write(chunk); err != nil {
					return
				}
			}
		}
	})
	stopTalking := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopTalking()
	var pid [16]byte
	select {
	case pid = <-pids:
	case <-ctx.Done():
		t.Fatalf("no relayed datagram\nalice:\n%s", alice.Stderr())
	}
	if !alice.waitStderr(ctx, "msg=connected") {
		t.Fatalf("alice never connected:\n%s", alice.Stderr())
	}
	ratio := func(p *attacker.Peer) float64 { return float64(p.ReceivedBytes()) / float64(p.SentBytes()) }
	first := newAttackPeer(t)
	first.Probe(aliceAddr, pid)
	time.Sleep(3500 * time.Millisecond) // a hint is tried for 3 s
	var fillers []*attacker.Peer
	for range 16 {
		p := newAttackPeer(t)
		p.Probe(aliceAddr, pid)
		fillers = append(fillers, p)
		time.Sleep(20 * time.Millisecond)
	}
	second := newAttackPeer(t)
	second.Probe(aliceAddr, pid)
	time.Sleep(3500 * time.Millisecond)
	got := second.Received()
	t.Logf("relayed session: a first spoofed probe (room for its budget) got %d bytes (ratio %.2f); 16 probing sockets got %s; then a second spoofed %d-byte probe got %d datagrams, %d bytes %v in 3.5 s: ratio %.2f (bound 3)",
		first.ReceivedBytes(), ratio(first), ampSummary(fillers), second.SentBytes(), len(got), second.ReceivedBytes(), handshakeTypes(got), ratio(second))
	for i, p := range append(append([]*attacker.Peer{first}, fillers...), second) {
		if r := ratio(p); r > 3 {
			what := fmt.Sprintf("filler %d", i)
			switch i {
			case 0:
				what = "the first spoofed source"
			case 17:
				what = "the second spoofed source"
			}
			t.Errorf("BREAK: %s received %d bytes from the relayed p2pcat for its one %d-byte probe: ×%.1f, over the 3× bound", what, p.ReceivedBytes(), p.SentBytes(), r)
		}
	}
	stopTalking()
	if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
		t.Errorf("the relayed session failed: exit %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.stderrTail(20), bob.stderrTail(20))
	}
}

func ampSummary(ps []*attacker.Peer) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprint(p.ReceivedBytes()))
	}
	return "[" + strings.Join(parts, " ") + "] bytes for 128 each"
}

// attackAmpServer: a real `p2pcat serve` and requests of every kind,
// unpadded, each from a fresh (unproven) address: no answer larger than its
// request, except STUN's, at most 3 times.
func attackAmpServer(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	_, server := startServe(t, ctx)
	srv := netip.MustParseAddrPort(server)
	long := strings.Repeat("s", 64)
	cookie := bytes.Repeat([]byte{7}, 20)
	var pid [16]byte
	rand.Read(pid[:])
	hdr := func(version, typ byte, body ...byte) []byte {
		return append([]byte{'P', '2', 'P', 'C', version, typ}, body...)
	}
	stun := func(attrs ...byte) []byte {
		b := []byte{0x00, 0x01, byte(len(attrs) >> 8), byte(len(attrs)), 0x21, 0x12, 0xA4, 0x42}
		b = append(b, randomBytes(t, 12)...)
		return append(b, attrs...)
	}
	reqs := []struct {
		name string
		b    []byte
		stun bool
	}{
		{"Hello, 1-byte session", (&wire.Hello{ReqID: 1, Session: "s"}).AppendTo(nil), false},
		{"Hello, 36-byte session", (&wire.Hello{ReqID: 1, Session: long[:36]}).AppendTo(nil), false},
		{"Hello, 64-byte session", (&wire.Hello{ReqID: 1, Session: long}).AppendTo(nil), false},
		{"Find, no cookie", (&wire.Find{ReqID: 1, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil), false},
		{"Find, forged cookie", (&wire.Find{ReqID: 1, Cookie: cookie, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil), false},
		{"Find, long names, no cookie", (&wire.Find{ReqID: 1, Session: long, Name: long, Peer: long[:63]}).AppendTo(nil), false},
		{"Register, no cookie", (&wire.Register{ReqID: 1, Session: "s", TTLSeconds: 3600}).AppendTo(nil), false},
		{"RelayBind, no cookie", (&wire.RelayBind{ReqID: 1, PairingID: pid}).AppendTo(nil), false},
		{"RelayBind, forged cookie", (&wire.RelayBind{ReqID: 1, Cookie: cookie, PairingID: pid}).AppendTo(nil), false},
		{"Leave, no cookie", (&wire.Leave{ReqID: 1, Session: "s", Name: "a", Peer: "b"}).AppendTo(nil), false},
		{"version 1 Hello", hdr(1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 's'), false},
		{"version 1, header only", hdr(1, 1), false},
		{"version 3", hdr(3, 1, 0, 0, 0, 0, 0, 0, 0, 1), false},
		{"unknown type", hdr(2, 0x7f), false},
		{"unknown type with reqID", hdr(2, 0x7f, 0, 0, 0, 0, 0, 0, 0, 1), false},
		{"truncated Find", hdr(2, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0), false},
		{"Hello with non-zero padding", append((&wire.Hello{ReqID: 1, Session: "s"}).AppendTo(nil), 1), false},
		{"oversized (1300 bytes)", append(hdr(2, 1, 0, 0, 0, 0, 0, 0, 0, 1), make([]byte, 1290)...), false},
		{"magic only", []byte("P2PC"), false},
		{"a Challenge (reply type)", (&wire.Challenge{ReqID: 1, Cookie: cookie}).AppendTo(nil), false},
		{"an Error (reply type)", (&wire.Error{ReqID: 1, Code: 1, Message: "x"}).AppendTo(nil), false},
		{"relayed datagram, unknown pairing", append(wire.AppendRelayHeader(nil, pid), 1, 2, 3), false},
		{"relay keepalive, unknown pairing", wire.AppendRelayHeader(nil, pid), false},
		{"probe", attacker.Probe(pid), false},
		{"one byte", []byte{0}, false},
		{"STUN Binding", stun(), true},
		{"STUN Binding, FINGERPRINT-less PADDING", stun(0x00, 0x26, 0x00, 0x04, 0, 0, 0, 0), true},
		{"STUN Binding, CHANGE-REQUEST", stun(0x00, 0x03, 0x00, 0x04, 0, 0, 0, 6), true},
		{"STUN Binding, 8 unknown attributes", stun(bytes.Repeat([]byte{0x00, 0x30, 0x00, 0x00}, 8)...), true},
	}
	peers := make([]*attacker.Peer, len(reqs))
	for i, r := range reqs {
		peers[i] = newAttackPeer(t)
		peers[i].SendTo(r.b, srv)
	}
	time.Sleep(700 * time.Millisecond)
	var rows []string
	worst := 0.0
	for i, r := range reqs {
		bound := len(r.b)
		if r.stun {
			bound *= 3
		}
		var sizes []string
		total := 0
		for _, d := range peers[i].Received() {
			sizes = append(sizes, fmt.Sprint(len(d.Data)))
			total += len(d.Data)
			if len(d.Data) > bound {
				t.Errorf("BREAK: %s (%d bytes, unproven address): a %d-byte answer, over the bound %d", r.name, len(r.b), len(d.Data), bound)
			}
		}
		worst = max(worst, float64(total)/float64(len(r.b)))
		rows = append(rows, fmt.Sprintf("%s: %d -> [%s]", r.name, len(r.b), strings.Join(sizes, " ")))
	}
	t.Logf("server answers to unproven addresses (request bytes -> answer bytes):\n  %s\nworst ratio %.2f", strings.Join(rows, "\n  "), worst)
}
