package main

// TestAttack, what must keep holding: man in the middle, substitution,
// reflection, a hostile relay, replay (attack 7 of TestAttack).

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	mathrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// --- 7. what must keep holding ---

// attackMITM: a malicious server pairs alice with an attacker posing as
// bob and bob with one posing as alice; the attacker does not know the
// password. Both victims exit 4 and nothing is delivered.
func attackMITM(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	asBob := newGuessAttacker(t, true, func(n int) attacker.Guess {
		return attacker.Guess{Session: "default", Name: "bob", Peer: "alice", Password: []byte(fmt.Sprintf("mitm-guess-%d", n))}
	})
	asAlice := newGuessAttacker(t, true, func(n int) attacker.Guess {
		return attacker.Guess{Session: "default", Name: "alice", Peer: "bob", Password: []byte(fmt.Sprintf("mitm-guess-%d", n))}
	})
	srv := startAttackServer(t, attacker.Pair(func(a attacker.Attempt) *wire.FindResp {
		if a.Find.Name == "alice" {
			return asBob.pair(a)
		}
		return asAlice.pair(a)
	}))
	env := peerEnv(srv.Addr.String(), "the pair's password")
	alice := startP2pcat(t, strings.NewReader("alice's secret\n"), env, "--name", "alice", "--find", "bob", "--connect-timeout", "6s", "-v")
	bob := startP2pcat(t, strings.NewReader("bob's secret\n"), env, "--name", "bob", "--find", "alice", "--connect-timeout", "6s", "-v")
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	asBob.stop()
	asAlice.stop()
	t.Logf("MITM without the password: alice exit %d (%s); bob exit %d (%s); attacker as bob: %v; as alice: %v",
		ca, alice.errorLine(), cb, bob.errorLine(), asBob.report(), asAlice.report())
	if ca != exitAuth || cb != exitAuth {
		t.Errorf("exit codes %d %d, want %d on both", ca, cb, exitAuth)
	}
	if alice.stdout.Len()+bob.stdout.Len() != 0 {
		t.Errorf("BREAK: delivered %q to alice, %q to bob", alice.stdout.String(), bob.stdout.String())
	}
	for _, r := range append(asBob.report(), asAlice.report()...) {
		if strings.Contains(r, "RIGHT") {
			t.Errorf("BREAK: %s", r)
		}
	}
}

// directPair starts alice (the initiator) and bob in direct mode, each
// told that its peer is at its face of m.
func directPair(t *testing.T, m *attacker.Middle, portA, portB string, env []string, inA, inB io.Reader, extra ...string) (alice, bob *proc) {
	t.Helper()
	alice = startP2pcat(t, inA, env, append([]string{"--name", "alice", "--find", "bob", "--port", portA, "--peer", m.Face(attacker.A).String()}, extra...)...)
	bob = startP2pcat(t, inB, env, append([]string{"--name", "bob", "--find", "alice", "--port", portB, "--peer", m.Face(attacker.B).String()}, extra...)...)
	return alice, bob
}

// attackSubstitution: a man in the middle of a direct path substitutes one
// field of the handshake with a valid value of its own (another RSA key, a
// valid CPace share, a valid RSA-OAEP ciphertext of another secret under
// the right key), keeping every ref field consistent both ways: both sides
// exit 4, nothing delivered.
func attackSubstitution(t *testing.T) {
	secretCT := func(pk []byte, label string) []byte {
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(pk), E: 65537}
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, randomBytes(t, 32), []byte(label))
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	type state struct{ pkI, pkR []byte }
	cases := []struct {
		field string
		typ   byte
		alter func(st *state, m []byte) []byte
	}{
		{"pk_I", attacker.TypeHello, func(st *state, m []byte) []byte {
			pk, _, _ := attacker.HelloParts(m)
			return attacker.Replace(m, pk, attacker.Key(2).N.Bytes(), true)
		}},
		{"Ya", attacker.TypeHello, func(st *state, m []byte) []byte {
			_, ya, _ := attacker.HelloParts(m)
			return attacker.Replace(m, ya, attacker.RandomShare(), false)
		}},
		{"pk_R", attacker.TypeReply, func(st *state, m []byte) []byte {
			pk, _, _, _ := attacker.ReplyParts(m)
			return attacker.Replace(m, pk, attacker.Key(2).N.Bytes(), true)
		}},
		{"ct_R", attacker.TypeReply, func(st *state, m []byte) []byte {
			_, _, ct, _ := attacker.ReplyParts(m)
			return attacker.Replace(m, ct, secretCT(st.pkI, "p2pcat v2 secret responder"), true)
		}},
		{"ct_I", attacker.TypeFinish, func(st *state, m []byte) []byte {
			ct, _ := attacker.FinishParts(m)
			return attacker.Replace(m, ct, secretCT(st.pkR, "p2pcat v2 secret initiator"), true)
		}},
	}
	for _, c := range cases {
		t.Run(c.field, func(t *testing.T) {
			ctx := testCtx(t, 40*time.Second)
			portA, portB := freeUDPPort(t), freeUDPPort(t)
			var (
				mu          sync.Mutex
				st          state
				altered     = map[[32]byte][]byte{} // the same substitute for every copy
				substituted int
			)
			m := startMiddle(t, portA, portB, func(m *attacker.Middle, from attacker.Side, pkt []byte) {
				mu.Lock()
				switch pkt[0] {
				case attacker.TypeHello:
					if pk, _, err := attacker.HelloParts(pkt); err == nil {
						st.pkI = attacker.Get(pkt, pk)
					}
				case attacker.TypeReply:
					if pk, _, _, err := attacker.ReplyParts(pkt); err == nil {
						st.pkR = attacker.Get(pkt, pk)
					}
				}
				if pkt[0] == c.typ {
					h := sha256.Sum256(pkt)
					alt := altered[h]
					if alt == nil {
						alt = c.alter(&st, pkt)
						altered[h] = alt
					}
					substituted++
					mu.Unlock()
					m.Substitute(from, pkt, alt)
					return
				}
				mu.Unlock()
				m.Deliver(from, pkt)
			})
			env := []string{"P2PCAT_PASSWORD=substitution-pw"}
			start := time.Now()
			alice, bob := directPair(t, m, portA, portB, env, strings.NewReader("from alice\n"), strings.NewReader("from bob\n"), "--connect-timeout", "5s")
			ca, cb := alice.wait(ctx), bob.wait(ctx)
			mu.Lock()
			n := substituted
			mu.Unlock()
			t.Logf("%s substituted in %d datagram(s): alice exit %d, bob exit %d after %v; alice: %s; bob: %s",
				c.field, n, ca, cb, time.Since(start).Round(100*time.Millisecond), alice.errorLine(), bob.errorLine())
			if n == 0 {
				t.Fatal("nothing was substituted")
			}
			if ca != exitAuth || cb != exitAuth {
				t.Errorf("exit codes %d %d, want %d on both", ca, cb, exitAuth)
			}
			if alice.stdout.Len()+bob.stdout.Len() != 0 {
				t.Errorf("BREAK: delivered %q to alice, %q to bob", alice.stdout.String(), bob.stdout.String())
			}
		})
	}
}

// attackReflection: a side's own packets sent back to it, in the
// handshake and after it, and role confusion (both sides claim the same
// names, so both initiate, or both respond): never exit 0, never output.
func attackReflection(t *testing.T) {
	reflectAll := func(m *attacker.Middle, from attacker.Side, pkt []byte) { m.Reflect(from, pkt) }
	reflectData := func(m *attacker.Middle, from attacker.Side, pkt []byte) {
		if attacker.IsData(pkt) {
			m.Reflect(from, pkt)
			return
		}
		m.Deliver(from, pkt)
	}
	runs := []struct {
		name     string
		hook     attacker.Hook
		namesA   [2]string
		namesB   [2]string
		mustWork bool
	}{
		{"everything reflected", reflectAll, [2]string{"alice", "bob"}, [2]string{"bob", "alice"}, false},
		{"handshake forwarded, data reflected", reflectData, [2]string{"alice", "bob"}, [2]string{"bob", "alice"}, false},
		{"reflected and forwarded", func(m *attacker.Middle, from attacker.Side, pkt []byte) { m.Reflect(from, pkt); m.Deliver(from, pkt) }, [2]string{"alice", "bob"}, [2]string{"bob", "alice"}, true},
		{"both initiators", nil, [2]string{"alice", "bob"}, [2]string{"alice", "bob"}, false},
		{"both responders", nil, [2]string{"bob", "alice"}, [2]string{"bob", "alice"}, false},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			ctx := testCtx(t, 40*time.Second)
			portA, portB := freeUDPPort(t), freeUDPPort(t)
			m := startMiddle(t, portA, portB, r.hook)
			env := []string{"P2PCAT_PASSWORD=reflection-pw"}
			args := []string{"--connect-timeout", "3s", "--idle-timeout", "3s", "-v"}
			start := time.Now()
			a := startP2pcat(t, strings.NewReader("from A\n"), env, append([]string{"--name", r.namesA[0], "--find", r.namesA[1], "--port", portA, "--peer", m.Face(attacker.A).String()}, args...)...)
			b := startP2pcat(t, strings.NewReader("from B\n"), env, append([]string{"--name", r.namesB[0], "--find", r.namesB[1], "--port", portB, "--peer", m.Face(attacker.B).String()}, args...)...)
			ca, cb := a.wait(ctx), b.wait(ctx)
			got := m.Captured()
			var ds []attacker.Datagram
			for _, p := range got {
				ds = append(ds, p.Datagram)
			}
			took := time.Since(start)
			probes := [2]int{}
			for _, p := range got {
				if p.Data[0] == attacker.TypeProbe {
					probes[p.From]++
				}
			}
			t.Logf("%s: A exit %d (%s), B exit %d (%s) after %v; the middle saw %v; probes per side per second: %.0f, %.0f",
				r.name, ca, a.errorLine(), cb, b.errorLine(), took.Round(100*time.Millisecond), handshakeTypes(ds),
				float64(probes[0])/took.Seconds(), float64(probes[1])/took.Seconds())
			// The punch schedule sends a probe to each candidate every
			// 200 ms (faster only in its first 200 ms), and answers each
			// probe once: a side that sends far more is answering the
			// answers of a side that does the same (a probe storm).
			for side, n := range probes {
				if bound := int(100*took.Seconds()) + 50; n > bound {
					t.Errorf("BUG: probe storm: side %v sent %d probes in %v (bound %d): two unconfirmed sides answer each other's probes without end", attacker.Side(side), n, took.Round(100*time.Millisecond), bound)
				}
			}
			if r.mustWork {
				// Reflection on top of a working path is noise: the
				// session must be exact.
				if ca != exitOK || cb != exitOK || a.stdout.String() != "from B\n" || b.stdout.String() != "from A\n" {
					t.Errorf("reflected copies broke the session: exit %d %d, A got %q, B got %q", ca, cb, a.stdout.String(), b.stdout.String())
				}
				return
			}
			if ca == exitOK || cb == exitOK {
				t.Errorf("BREAK: exit %d %d: a side succeeded against itself", ca, cb)
			}
			if a.stdout.Len()+b.stdout.Len() != 0 {
				t.Errorf("BREAK: output %q %q", a.stdout.String(), b.stdout.String())
			}
		})
	}
}

// attackHostileRelay: a middle that duplicates, reflects, replays and
// corrupts datagrams (corrupted copies of any datagram, corrupted instead
// of the original only for data packets: a handshake message altered in
// transit is an active attack and ends the handshake with exit 4), both ways, under a 4 MiB transfer one way and 256 KiB
// the other, with -vv: the output is exact, no counter is sealed twice
// with different contents (no nonce reuse), and the password is neither in
// the logs nor on the wire.
func attackHostileRelay(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	const password = "hostile-relay-pw"
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	var (
		mu      sync.Mutex
		rng     = mathrand.New(mathrand.NewPCG(12, 34))
		history [2][][]byte
		counts  = map[string]int{}
	)
	m := startMiddle(t, portA, portB, func(m *attacker.Middle, from attacker.Side, pkt []byte) {
		mu.Lock()
		h := &history[from]
		if len(*h) < 512 {
			*h = append(*h, pkt)
		} else {
			(*h)[rng.IntN(len(*h))] = pkt
		}
		var actions []func()
		roll := rng.Float64()
		switch {
		case roll < 0.02 && attacker.IsData(pkt):
			// Only data packets: an altered handshake message is an
			// active attack, which must (and does) end in exit 4.
			counts["corrupted instead"]++
			bad := append([]byte(nil), pkt...)
			bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
			actions = append(actions, func() { m.Deliver(from, bad) })
		default:
			actions = append(actions, func() { m.Deliver(from, pkt) })
		}
		if rng.Float64() < 0.05 {
			counts["duplicated"]++
			actions = append(actions, func() { m.Deliver(from, pkt) })
		}
		if rng.Float64() < 0.05 {
			counts["reflected"]++
			actions = append(actions, func() { m.Reflect(from, pkt) })
		}
		if rng.Float64() < 0.05 {
			counts["replayed"]++
			old := (*h)[rng.IntN(len(*h))]
			actions = append(actions, func() { m.Deliver(from, old) })
		}
		if rng.Float64() < 0.03 {
			counts["corrupted copy"]++
			bad := append([]byte(nil), pkt...)
			bad[rng.IntN(len(bad))] ^= 0x80
			actions = append(actions, func() { m.Deliver(from, bad) })
		}
		mu.Unlock()
		for _, a := range actions {
			a()
		}
	})
	toBob, toAlice := randomBytes(t, 4<<20), randomBytes(t, 256<<10)
	env := []string{"P2PCAT_PASSWORD=" + password}
	start := time.Now()
	// 1200-byte datagrams: thousands of them to impair.
	alice, bob := directPair(t, m, portA, portB, env, bytes.NewReader(toBob), bytes.NewReader(toAlice), "-vv", "--no-mtu-probe")
	ca, cb := alice.wait(ctx), bob.wait(ctx)
	mu.Lock()
	summary := fmt.Sprint(counts)
	mu.Unlock()
	t.Logf("hostile relay (%s): exit %d/%d in %v; bob got %d of %d bytes, alice %d of %d; alice: %s; bob: %s",
		summary, ca, cb, time.Since(start).Round(100*time.Millisecond), bob.stdout.Len(), len(toBob), alice.stdout.Len(), len(toAlice),
		sessionEnded(alice), sessionEnded(bob))
	if ca != exitOK || cb != exitOK || !bytes.Equal(bob.stdout.Bytes(), toBob) || !bytes.Equal(alice.stdout.Bytes(), toAlice) {
		t.Errorf("BREAK: the output is not exact: exit %d %d, bob got %d bytes, alice %d\nalice:\n%s\nbob:\n%s", ca, cb, bob.stdout.Len(), alice.stdout.Len(), alice.stderrTail(10), bob.stderrTail(10))
	}
	// Nonce reuse: one counter, two different sealed packets, in one
	// direction.
	sealed := [2]map[uint64][32]byte{{}, {}}
	var wireData [][]byte
	for _, p := range m.Captured() {
		wireData = append(wireData, p.Data)
		if !attacker.IsData(p.Data) || len(p.Data) < 9 {
			continue
		}
		ctr := binary.BigEndian.Uint64(p.Data[1:9])
		h := sha256.Sum256(p.Data)
		if old, ok := sealed[p.From][ctr]; ok && old != h {
			t.Errorf("BREAK: side %v sealed two different packets under counter %d (nonce reuse)", p.From, ctr)
		}
		sealed[p.From][ctr] = h
	}
	t.Logf("%d + %d data packets sealed, no counter used twice; %d datagrams captured", len(sealed[0]), len(sealed[1]), len(wireData))
	noPassword(t, password, "the -vv logs", stderrBytes(alice, bob)...)
	noPassword(t, password, "the wire", wireData...)
}

// sessionEnded returns the counters of the -vv "session ended" line.
func sessionEnded(p *proc) string {
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if strings.Contains(l, "msg=\"session ended\"") {
			var keep []string
			for _, f := range strings.Fields(l) {
				for _, k := range []string{"forged=", "replayed=", "malformed=", "retransmits="} {
					if strings.HasPrefix(f, k) {
						keep = append(keep, f)
					}
				}
			}
			return strings.Join(keep, " ")
		}
	}
	return "(no session ended line)"
}

// attackReplay: the handshake and data of an earlier session, captured on
// the path, replayed into later ones with the same names, password and
// addresses: alone, to a fresh responder, they get no session and no
// output; injected into a new session after its handshake, they change
// nothing of its output.
func attackReplay(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	const password = "replay-pw"
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	m := startMiddle(t, portA, portB, nil)
	env := []string{"P2PCAT_PASSWORD=" + password}

	alice, bob := directPair(t, m, portA, portB, env, strings.NewReader("first session, from alice\n"), strings.NewReader("first session, from bob\n"), "-vv")
	if ca, cb := alice.wait(ctx), bob.wait(ctx); ca != exitOK || cb != exitOK {
		t.Fatalf("first session: exit %d %d", ca, cb)
	}
	first := m.Captured()
	var fromA, fromB [][]byte
	for _, p := range first {
		if p.From == attacker.A {
			fromA = append(fromA, p.Data)
		} else {
			fromB = append(fromB, p.Data)
		}
	}
	logs := stderrBytes(alice, bob)

	t.Run("replayed to a fresh responder", func(t *testing.T) {
		seen := len(m.Captured())
		bob := startP2pcat(t, strings.NewReader("bob's new secret\n"), env, "--name", "bob", "--find", "alice", "--port", portB, "--peer", m.Face(attacker.B).String(), "--connect-timeout", "3s", "-vv")
		if !waitUntil(ctx, func() bool { return udpBound(portB) }) {
			t.Fatal("bob never bound its port")
		}
		time.Sleep(300 * time.Millisecond) // its handshake reads by now
		for _, d := range fromA {
			m.Inject(attacker.B, d)
			time.Sleep(2 * time.Millisecond)
		}
		code := bob.wait(ctx)
		var answers []attacker.Datagram
		for _, p := range m.Captured()[seen:] {
			if p.From == attacker.B {
				answers = append(answers, p.Datagram)
			}
		}
		t.Logf("%d datagrams of alice's first session replayed (%v); bob answered %v; exit %d: %s", len(fromA), handshakeTypes(toDatagrams(fromA)), handshakeTypes(answers), code, bob.errorLine())
		if code == exitOK || bob.stdout.Len() != 0 {
			t.Errorf("BREAK: the replay got exit %d and output %q", code, bob.stdout.String())
		}
		for _, d := range answers {
			if d.Data[0] == attacker.TypeFinished || attacker.IsData(d.Data) {
				t.Errorf("BREAK: bob sent %v to a replay", handshakeTypes([]attacker.Datagram{d}))
			}
		}
		logs = append(logs, []byte(bob.Stderr()))
	})

	t.Run("injected into a new session", func(t *testing.T) {
		injected := make(chan struct{})
		var once sync.Once
		m.SetHook(func(m *attacker.Middle, from attacker.Side, pkt []byte) {
			m.Deliver(from, pkt)
			if pkt[0] == attacker.TypeFinished { // the new handshake is done
				once.Do(func() {
					go func() {
						defer close(injected)
						for i := 0; i < max(len(fromA), len(fromB)); i++ {
							if i < len(fromA) {
								m.Inject(attacker.B, fromA[i])
							}
							if i < len(fromB) {
								m.Inject(attacker.A, fromB[i])
							}
						}
					}()
				})
			}
		})
		in, feed := io.Pipe()
		part1, part2 := randomBytes(t, 64<<10), randomBytes(t, 64<<10)
		alice, bob := directPair(t, m, portA, portB, env, in, strings.NewReader("second session, from bob\n"), "-vv")
		go func() {
			feed.Write(part1)
			select {
			case <-injected:
			case <-ctx.Done():
			}
			feed.Write(part2)
			feed.Close()
		}()
		ca, cb := alice.wait(ctx), bob.wait(ctx)
		t.Logf("%d + %d datagrams of the first session injected after the second handshake: exit %d/%d; bob got %d of %d bytes; alice: %s; bob: %s",
			len(fromA), len(fromB), ca, cb, bob.stdout.Len(), len(part1)+len(part2), sessionEnded(alice), sessionEnded(bob))
		if ca != exitOK || cb != exitOK || !bytes.Equal(bob.stdout.Bytes(), append(part1, part2...)) || alice.stdout.String() != "second session, from bob\n" {
			t.Errorf("BREAK: the replay changed the session: exit %d %d, bob got %d bytes, alice %q", ca, cb, bob.stdout.Len(), alice.stdout.String())
		}
		logs = append(logs, stderrBytes(alice, bob)...)
	})
	var wireData [][]byte
	for _, p := range m.Captured() {
		wireData = append(wireData, p.Data)
	}
	noPassword(t, password, "the -vv logs", logs...)
	noPassword(t, password, "the wire", wireData...)
}

func toDatagrams(bs [][]byte) []attacker.Datagram {
	var ds []attacker.Datagram
	for _, b := range bs {
		ds = append(ds, attacker.Datagram{Data: b})
	}
	return ds
}
