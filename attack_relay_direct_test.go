package main

// TestAttack, relay hijack and forged Hellos in direct mode (attacks 4 and 5
// of TestAttack).

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
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

// --- 4. relay hijack ---

// attackRelayHijack: two real peers relayed (--relay only) through a real
// `p2pcat serve`; an attacker who saw the pairing id (in the relay headers,
// through a tap on the client-server path) binds its own address to either
// end with a valid cookie for that address but without the end's token, and
// sends relayed datagrams with the id. It spoofs nothing. It must receive no
// relayed datagram, and the session must complete byte-exact.
func attackRelayHijack(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	_, server := startServe(t, ctx)
	serverAddr := netip.MustParseAddrPort(server)
	pids := make(chan [16]byte, 1)
	var relayed struct {
		sync.Mutex
		samples [][]byte
	}
	tap := startTap(t, serverAddr, func(c attacker.Captured) {
		if !c.ToServer || c.Data[0] != wire.RelayType || len(c.Data) <= wire.RelayHeaderLen {
			return
		}
		select {
		case pids <- [16]byte(c.Data[1:17]):
		default:
		}
		relayed.Lock()
		if len(relayed.samples) < 32 {
			relayed.samples = append(relayed.samples, c.Data)
		}
		relayed.Unlock()
	})
	part1, part2 := randomBytes(t, 512<<10), randomBytes(t, 512<<10)
	in, feed := io.Pipe()
	defer feed.Close()
	env := peerEnv(tap.Addr.String(), "relay-hijack-pw")
	alice := startP2pcat(t, in, env, "--name", "alice", "--find", "bob", "--session", "hijack", "--relay", "only", "-v")
	bob := startP2pcat(t, strings.NewReader("ack\n"), env, "--name", "bob", "--find", "alice", "--session", "hijack", "--relay", "only", "-v")
	go func() { feed.Write(part1) }()
	var pid [16]byte
	select {
	case pid = <-pids:
	case <-ctx.Done():
		t.Fatalf("no relayed datagram crossed the tap\nalice:\n%s\nbob:\n%s", alice.Stderr(), bob.Stderr())
	}
	att := newAttackPeer(t)
	// A cookie for the attacker's own address: the server's Challenge to
	// its Hello.
	att.SendTo(wire.Pad((&wire.Hello{ReqID: 1, Session: "hijack"}).AppendTo(nil)), serverAddr)
	var cookie []byte
	waitUntil(ctx, func() bool {
		for _, d := range att.Received() {
			if ch, ok := decodeAs[*wire.Challenge](d.Data); ok {
				cookie = ch.Cookie
			}
		}
		return cookie != nil
	})
	if cookie == nil {
		t.Fatal("the server sent the attacker no Challenge")
	}
	var zeroToken [16]byte
	binds, datagrams := 0, 0
	attack := func() {
		for _, role := range []wire.PairingRole{wire.RoleInitiator, wire.RoleResponder} {
			var random [32]byte
			rand.Read(random[:])
			for _, mac := range [][32]byte{{}, random, wire.RelayBindMAC(zeroToken, pid, role, cookie)} {
				att.SendTo(wire.Pad((&wire.RelayBind{ReqID: uint64(2 + binds), Cookie: cookie, PairingID: pid, Role: role, MAC: mac}).AppendTo(nil)), serverAddr)
				binds++
			}
		}
		att.SendTo(wire.AppendRelayHeader(nil, pid), serverAddr) // a keepalive: echoed to an end only
		datagrams++
		relayed.Lock()
		samples := append([][]byte(nil), relayed.samples...)
		relayed.Unlock()
		for _, d := range samples { // captured relayed datagrams, replayed from the attacker's address
			att.SendTo(d, serverAddr)
			datagrams++
		}
		junk := append(wire.AppendRelayHeader(nil, pid), randomBytes(t, 200)...)
		att.SendTo(junk, serverAddr)
		datagrams++
	}
	sniffedAt := time.Now()
	for range 5 {
		attack()
		time.Sleep(200 * time.Millisecond)
	}
	// The rest of the session, with the attacker still at it.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
				attack()
			}
		}
	})
	feed.Write(part2)
	feed.Close()
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	close(stop)
	wg.Wait()
	got := att.Received()
	relayedToAttacker := 0
	for _, d := range got {
		if d.Data[0] == wire.RelayType {
			relayedToAttacker++
		}
	}
	path, _, _ := alice.connected()
	t.Logf("pairing id %x sniffed from a relay header; for %v the attacker sent %d RelayBinds (both roles; MAC zero, random, under a zero token) with its own valid cookie and %d relayed datagrams (keepalives, replays, junk); it received %d datagrams %v, %d of them relayed; session (path=%s): exit %d/%d, bob got %d of %d bytes",
		pid[:4], time.Since(sniffedAt).Round(100*time.Millisecond), binds, datagrams, len(got), wireTypes(got), relayedToAttacker, path, ca, cb, bob.stdout.Len(), len(part1)+len(part2))
	if relayedToAttacker > 0 {
		t.Errorf("BREAK: the relay forwarded %d datagrams of the session to the attacker", relayedToAttacker)
	}
	if ca != exitOK || cb != exitOK || !bytes.Equal(bob.stdout.Bytes(), append(part1, part2...)) || alice.stdout.String() != "ack\n" {
		t.Errorf("the session did not survive: exit %d %d, bob got %d bytes, alice %q\nalice:\n%s\nbob:\n%s", ca, cb, bob.stdout.Len(), alice.stdout.String(), alice.Stderr(), bob.Stderr())
	}
	if path != "relay" {
		t.Errorf("the session was not relayed (path=%q)", path)
	}
}

// --- 5. direct mode: forged Hellos ---

// directPairingID is direct mode's pairing id (pipe/connect.go
// directMatch), computable by anyone who knows the names.
func directPairingID(session, a, b string) [16]byte {
	if b < a {
		a, b = b, a
	}
	h := sha256.Sum256([]byte("p2pcat direct v2\x00" + session + "\x00" + a + "\x00" + b))
	return [16]byte(h[:16])
}

// attackDirectHello: direct mode (--peer on both sides, plain loopback).
// Before the real initiator starts, an attacker at another address sends
// the responder a forged Hello, then a flood of them: the responder must
// not answer it (no datagram to the attacker), and the real pair connects.
// In the second run the attacker also sends valid probes (the pairing id
// follows from the names): then the responder may probe it back, within 3×
// of what it sent, but nothing may answer its Hellos.
func attackDirectHello(t *testing.T) {
	for _, withProbes := range []bool{false, true} {
		t.Run(fmt.Sprintf("probes=%v", withProbes), func(t *testing.T) {
			ctx := testCtx(t, 60*time.Second)
			const password = "direct-mode-pw"
			portA, portB := freeUDPPort(t), freeUDPPort(t)
			env := []string{"P2PCAT_PASSWORD=" + password}
			bob := startP2pcat(t, strings.NewReader("from bob\n"), env, "--name", "bob", "--find", "alice", "--port", portB, "--peer", "127.0.0.1:"+portA, "-v")
			if !waitUntil(ctx, func() bool { return udpBound(portB) }) {
				t.Fatal("bob never bound its port")
			}
			att := newAttackPeer(t)
			bobAddr := netip.MustParseAddrPort("127.0.0.1:" + portB)
			pid := directPairingID("default", "alice", "bob")
			var hellos [][]byte
			for i := range 50 {
				hellos = append(hellos, attacker.ForgeHello(attacker.Guess{Session: "default", Name: "alice", Peer: "bob", Password: []byte(fmt.Sprintf("guess-%d", i))}, attacker.Key(i%2)))
			}
			flood := func(i int) {
				if withProbes {
					att.Probe(bobAddr, pid)
				}
				att.SendTo(hellos[i%len(hellos)], bobAddr)
			}
			flood(0) // the first forged Hello, long before the real one
			for i := 1; i < 100; i++ {
				flood(i)
				time.Sleep(5 * time.Millisecond)
			}
			alice := startP2pcat(t, strings.NewReader("from alice\n"), env, "--name", "alice", "--find", "bob", "--port", portA, "--peer", "127.0.0.1:"+portB, "-v")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := 100; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(10 * time.Millisecond):
						flood(i)
					}
				}
			})
			ca, cb := alice.wait(ctx), bob.wait(ctx)
			close(stop)
			wg.Wait()
			got := att.Received()
			ours := map[[16]byte]bool{}
			for _, h := range hellos {
				ours[attacker.Ref(h)] = true
			}
			answered := 0
			for _, d := range got {
				if d.Data[0] == attacker.TypeReply && len(d.Data) >= 33 && ours[[16]byte(d.Data[17:33])] {
					answered++
				}
			}
			sent := att.SentBytes()
			t.Logf("the attacker sent %d datagrams (%d bytes) to the responder; it received %d datagrams (%d bytes) %v, %d answering its Hellos; the pair: exit %d/%d",
				len(att.Sent()), sent, len(got), att.ReceivedBytes(), handshakeTypes(got), answered, ca, cb)
			if answered > 0 {
				t.Errorf("BREAK: the responder answered %d forged Hellos from another address", answered)
			}
			if !withProbes && len(got) > 0 {
				t.Errorf("BREAK: the responder sent %d datagrams to an attacker that sent only Hellos", len(got))
			}
			if r := att.ReceivedBytes(); r > 3*sent {
				t.Errorf("BREAK: %d bytes to the attacker for %d: more than 3×", r, sent)
			}
			if ca != exitOK || cb != exitOK || alice.stdout.String() != "from bob\n" || bob.stdout.String() != "from alice\n" {
				t.Errorf("the real pair did not connect: exit %d %d\nalice:\n%s\nbob:\n%s", ca, cb, alice.Stderr(), bob.Stderr())
			}
		})
	}
}

// attackRendezvousHello: the same flood in rendezvous mode (through a real
// `p2pcat serve`), from an address that is not among the responder's
// candidates and without the pairing id: the attacker must get no answer.
// Whether the flood takes the responder's one slot (the real pair then
// fails) is measured and logged: issue 12 asks for it only in direct mode.
func attackRendezvousHello(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	_, server := startServe(t, ctx)
	portB := freeUDPPort(t)
	bobAddr := netip.MustParseAddrPort("127.0.0.1:" + portB)
	env := peerEnv(server, "rendezvous-pw")
	bob := startP2pcat(t, strings.NewReader("from bob\n"), env, "--name", "bob", "--find", "alice", "--session", "flood", "--port", portB, "--connect-timeout", "4s", "-v")
	if !waitUntil(ctx, func() bool { return udpBound(portB) }) {
		t.Fatal("bob never bound its port")
	}
	att := newAttackPeer(t)
	var hellos [][]byte
	for i := range 50 {
		hellos = append(hellos, attacker.ForgeHello(attacker.Guess{Session: "flood", Name: "alice", Peer: "bob", Password: []byte(fmt.Sprintf("guess-%d", i))}, attacker.Key(i%2)))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				att.SendTo(hellos[i%len(hellos)], bobAddr)
			}
		}
	})
	time.Sleep(300 * time.Millisecond)
	alice := startP2pcat(t, strings.NewReader("from alice\n"), env, "--name", "alice", "--find", "bob", "--session", "flood", "--connect-timeout", "4s", "-v")
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	close(stop)
	wg.Wait()
	got := att.Received()
	t.Logf("rendezvous mode, %d forged Hellos from a non-candidate address: the attacker received %d datagrams %v; the pair: alice exit %d (%s), bob exit %d (%s)",
		len(att.Sent()), len(got), handshakeTypes(got), ca, alice.errorLine(), cb, bob.errorLine())
	if len(got) > 0 {
		t.Errorf("BREAK: the responder sent %d datagrams to an address that is no candidate", len(got))
	}
	if ca != exitOK || cb != exitOK {
		t.Logf("OBSERVATION: the flood took the responder's one answer: the real pair failed (a denial of service by anyone who can reach the responder's port; the Hello carries no pairing id)")
	}
}
