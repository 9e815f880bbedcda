package server

// The table's rules for listeners (finds for any peer, wire.FindAnyPeer)
// and again-finds: PROTOCOL.md 2.8.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

var (
	listenerAddr = netip.MustParseAddrPort("203.0.113.1:4000")
	finderAddr   = netip.MustParseAddrPort("198.51.100.1:1000")
	finder2Addr  = netip.MustParseAddrPort("198.51.100.2:2000")
)

func listenFind(reqID uint64) *wire.Find {
	return &wire.Find{ReqID: reqID, Session: "s", Name: "homebox", Flags: wire.FindAnyPeer}
}

func finderFind(reqID uint64, name string) *wire.Find {
	return &wire.Find{ReqID: reqID, Session: "s", Name: name, Peer: "homebox"}
}

// mustFind runs tab.find and fails the test on an error.
func mustFind(t *testing.T, tab *table, f *wire.Find, addr netip.AddrPort, now time.Time) findResult {
	t.Helper()
	r, err := tab.find(f, addr, now)
	if err != nil {
		t.Fatalf("find %+v: %v", f, err)
	}
	return r
}

// checkEmpty: once every entry has expired, nothing is left, the queue of
// finds waiting for listeners included.
func checkEmpty(t *testing.T, tab *table, now time.Time) {
	t.Helper()
	tab.sweep(now.Add(time.Hour))
	if p, m := tab.counts(); p != 0 || m != 0 || len(tab.waitingFor) != 0 || len(tab.perIP) != 0 {
		t.Fatalf("after the sweep: %d pending, %d others, %d queues, %d per-IP counts", p, m, len(tab.waitingFor), len(tab.perIP))
	}
}

// TestTableListenerWaits: a listener waits; a finder that names it pairs
// with it, and each side's answer names the other. Re-sends of either
// find get the same answer.
func TestTableListenerWaits(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	if r := mustFind(t, tab, listenFind(1), listenerAddr, now); r.paired || r.reply.Status != wire.FindWaiting {
		t.Fatalf("listener: %+v, want waiting", r.reply)
	}
	r := mustFind(t, tab, finderFind(2, "laptop"), finderAddr, now)
	if !r.paired || r.reply.Status != wire.FindMatched || r.pushAddr != listenerAddr {
		t.Fatalf("finder: %+v, want paired with the listener", r)
	}
	if r.reply.PeerName != "homebox" || r.push.PeerName != "laptop" {
		t.Fatalf("names: the finder's answer names %q, the listener's %q", r.reply.PeerName, r.push.PeerName)
	}
	if r.push.Role != wire.RoleInitiator || r.reply.Role != wire.RoleResponder || r.push.PeerObserved != finderAddr || r.reply.PeerObserved != listenerAddr {
		t.Fatalf("roles or addresses: listener %+v, finder %+v", r.push, r.reply)
	}
	for _, c := range []struct {
		f    *wire.Find
		addr netip.AddrPort
		want wire.FindResp
	}{{listenFind(1), listenerAddr, *r.push}, {finderFind(2, "laptop"), finderAddr, r.reply}} {
		again := mustFind(t, tab, c.f, c.addr, now.Add(time.Second))
		if again.paired || again.reply.PairingID != c.want.PairingID || again.reply.PeerName != c.want.PeerName || again.reply.RelayToken != c.want.RelayToken {
			t.Fatalf("re-send of %s's find: %+v, want %+v", c.f.Name, again.reply, c.want)
		}
	}
	checkEmpty(t, tab, now)
}

// TestTableFindersBeforeListener: finders that came first are served when
// the listener arrives, oldest first, one per find of the listener; a
// finder's re-sends keep its place, and one that leaves loses it.
func TestTableFindersBeforeListener(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	gone := netip.MustParseAddrPort("198.51.100.3:3000")
	mustFind(t, tab, finderFind(1, "first"), finderAddr, now)
	mustFind(t, tab, finderFind(7, "gone"), gone, now.Add(time.Second))
	mustFind(t, tab, finderFind(2, "second"), finder2Addr, now.Add(time.Second))
	mustFind(t, tab, finderFind(1, "first"), finderAddr, now.Add(2*time.Second)) // a re-send
	// One in the middle of the queue leaves.
	if !tab.leave(&wire.Leave{ReqID: 7, Session: "s", Name: "gone", Peer: "homebox"}, gone, now.Add(2*time.Second)) {
		t.Fatal("the Leave did not withdraw the find")
	}
	for i, want := range []string{"first", "second"} {
		r := mustFind(t, tab, listenFind(uint64(10+i)), listenerAddr, now.Add(3*time.Second))
		if !r.paired || r.reply.PeerName != want || r.push.PeerName != "homebox" || r.reply.Role != wire.RoleResponder {
			t.Fatalf("listener's find %d: %+v, want paired with %s", i, r, want)
		}
	}
	if r := mustFind(t, tab, listenFind(12), listenerAddr, now.Add(3*time.Second)); r.paired || r.reply.Status != wire.FindWaiting {
		t.Fatalf("listener's third find: %+v, want waiting", r.reply)
	}
	checkEmpty(t, tab, now)
}

// TestTableFindersOneAfterAnother: the listener waits, serves a finder,
// finds again (a new attempt) and serves the next; the first finder's
// re-sends still get its own answer.
func TestTableFindersOneAfterAnother(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	mustFind(t, tab, listenFind(1), listenerAddr, now)
	first := mustFind(t, tab, finderFind(2, "first"), finderAddr, now)
	// The second finder comes before the listener finds again: it waits.
	if r := mustFind(t, tab, finderFind(3, "second"), finder2Addr, now); r.paired {
		t.Fatalf("second finder paired with a listener that is busy: %+v", r.reply)
	}
	r := mustFind(t, tab, listenFind(4), listenerAddr, now.Add(time.Second))
	if !r.paired || r.reply.PeerName != "second" || r.pushAddr != finder2Addr {
		t.Fatalf("the listener's new find: %+v, want paired with second", r)
	}
	if r.reply.PairingID == first.reply.PairingID {
		t.Fatal("two pairings with one id")
	}
	if again := mustFind(t, tab, finderFind(2, "first"), finderAddr, now.Add(2*time.Second)); again.reply.PairingID != first.reply.PairingID || again.reply.PeerName != "homebox" {
		t.Fatalf("first finder's re-send: %+v, want its own answer", again.reply)
	}
	// A third finder, the listener waiting again: paired at once.
	mustFind(t, tab, listenFind(5), listenerAddr, now.Add(3*time.Second))
	if r := mustFind(t, tab, finderFind(6, "third"), finderAddr, now.Add(3*time.Second)); !r.paired || r.push.PeerName != "third" {
		t.Fatalf("third finder: %+v", r)
	}
	checkEmpty(t, tab, now)
}

// TestTableExplicitBeatsListener: a find that names us wins over our
// listener's find for anyone.
func TestTableExplicitBeatsListener(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	explicitAddr := netip.AddrPortFrom(listenerAddr.Addr(), 4001)
	mustFind(t, tab, listenFind(1), listenerAddr, now)
	mustFind(t, tab, &wire.Find{ReqID: 2, Session: "s", Name: "homebox", Peer: "laptop"}, explicitAddr, now)
	r := mustFind(t, tab, finderFind(3, "laptop"), finderAddr, now)
	if !r.paired || r.pushAddr != explicitAddr {
		t.Fatalf("finder: %+v, want paired with the explicit find at %v", r, explicitAddr)
	}
	// The listener still waits, for someone else.
	if r := mustFind(t, tab, finderFind(4, "tablet"), finder2Addr, now); !r.paired || r.pushAddr != listenerAddr || r.push.PeerName != "tablet" {
		t.Fatalf("another finder: %+v, want paired with the listener", r)
	}
	checkEmpty(t, tab, now)
}

// TestTableAgainNeverMeetsListener: an again-find pairs only with a find
// that names it; it neither takes a waiting listener nor is taken by a
// listener arriving later.
func TestTableAgainNeverMeetsListener(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	again := &wire.Find{ReqID: 2, Session: "s", Name: "laptop", Peer: "homebox", Flags: wire.FindAgain}
	mustFind(t, tab, listenFind(1), listenerAddr, now)
	if r := mustFind(t, tab, again, finderAddr, now); r.paired {
		t.Fatalf("an again-find paired with a waiting listener: %+v", r.reply)
	}
	if r := mustFind(t, tab, listenFind(3), listenerAddr, now); r.paired {
		t.Fatalf("a listener's new find took an again-find: %+v", r.reply)
	}
	// The listener's own again-find, which names the finder, does pair.
	r := mustFind(t, tab, &wire.Find{ReqID: 4, Session: "s", Name: "homebox", Peer: "laptop", Flags: wire.FindAgain},
		netip.AddrPortFrom(listenerAddr.Addr(), 4002), now)
	if !r.paired || r.pushAddr != finderAddr || r.reply.PeerName != "laptop" {
		t.Fatalf("the listener's again-find: %+v, want paired with the finder's", r)
	}
	// A plain find that turns into an again-find (the same host, a new
	// attempt) leaves the listener's queue.
	mustFind(t, tab, finderFind(5, "tablet"), finder2Addr, now)
	mustFind(t, tab, &wire.Find{ReqID: 6, Session: "s", Name: "tablet", Peer: "homebox", Flags: wire.FindAgain}, finder2Addr, now)
	if r := mustFind(t, tab, listenFind(7), netip.AddrPortFrom(listenerAddr.Addr(), 4003), now); r.paired {
		t.Fatalf("the listener took a find that became an again-find: %+v", r.reply)
	}
	checkEmpty(t, tab, now)
}

// TestTableListenerLeave: Leave withdraws a listener's find like any other
// (its peer field empty); a finder arriving later waits.
func TestTableListenerLeave(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	mustFind(t, tab, listenFind(1), listenerAddr, now)
	if tab.leave(&wire.Leave{ReqID: 1, Session: "s", Name: "homebox", Peer: "laptop"}, listenerAddr, now) {
		t.Fatal("a Leave naming a peer withdrew the listener's find")
	}
	if !tab.leave(&wire.Leave{ReqID: 1, Session: "s", Name: "homebox"}, listenerAddr, now) {
		t.Fatal("the listener's Leave did not withdraw its find")
	}
	if r := mustFind(t, tab, finderFind(2, "laptop"), finderAddr, now); r.paired {
		t.Fatalf("a finder paired with a listener that left: %+v", r.reply)
	}
	if r := mustFind(t, tab, listenFind(1), listenerAddr, now); !r.withdrawn {
		t.Fatalf("a re-send of the withdrawn listener's find: %+v, want ignored", r)
	}
	// A queued finder's Leave takes it out of the listener's queue.
	if !tab.leave(&wire.Leave{ReqID: 2, Session: "s", Name: "laptop", Peer: "homebox"}, finderAddr, now) {
		t.Fatal("the finder's Leave did not withdraw its find")
	}
	if r := mustFind(t, tab, listenFind(3), listenerAddr, now); r.paired {
		t.Fatalf("the listener took a finder that left: %+v", r.reply)
	}
	checkEmpty(t, tab, now)
}

// TestTableListenerCaps: a listener's find counts toward the caps like any
// other, and expired or same-address finds are not served to it.
func TestTableListenerCaps(t *testing.T) {
	now := time.Now()
	tab := newTable(10*time.Second, 30*time.Second, 6, 3, true)
	for i := range 3 {
		mustFind(t, tab, finderFind(uint64(i), fmt.Sprint("f", i)), finderAddr, now)
	}
	if _, err := tab.find(&wire.Find{ReqID: 9, Session: "s", Name: "other", Flags: wire.FindAnyPeer}, finderAddr, now); err != errIPFull {
		t.Fatalf("a listener's find past the per-IP cap: %v, want errIPFull", err)
	}
	for i := range 3 {
		mustFind(t, tab, &wire.Find{ReqID: uint64(20 + i), Session: "s", Name: fmt.Sprint("l", i), Flags: wire.FindAnyPeer},
			netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 1), now)
	}
	if _, err := tab.find(&wire.Find{ReqID: 30, Session: "s", Name: "unwanted", Flags: wire.FindAnyPeer}, listenerAddr, now); err != errTableFull {
		t.Fatalf("a listener's find past the table's cap: %v, want errTableFull", err)
	}
	// The finders expire; a listener arriving after that is not paired
	// with them, nor with a find from its own address.
	tab.sweep(now.Add(20 * time.Second))
	later := now.Add(20 * time.Second)
	mustFind(t, tab, finderFind(40, "stale"), finderAddr, now)
	mustFind(t, tab, finderFind(41, "self"), listenerAddr, later)
	if r := mustFind(t, tab, listenFind(42), listenerAddr, later); r.paired {
		t.Fatalf("the listener was paired with %q (expired, or its own address)", r.reply.PeerName)
	}
	checkEmpty(t, tab, now)
}

// FuzzTableListeners runs a sequence of finds (plain, again, listeners'),
// Leaves and clock steps over a few names and addresses, and checks after
// each step that the table's counts and the listeners' queues agree with
// its entries, and that an answer names the right peer.
//
//	go test -run XXX -fuzz FuzzTableListeners -fuzztime 1m ./rendezvous/server/
func FuzzTableListeners(f *testing.F) {
	f.Add([]byte{0x20, 0x01, 0x00, 0x01, 0x02})
	f.Add([]byte{0x01, 0x11, 0x21, 0x20, 0x40, 0x20, 0x31, 0x60, 0x20})
	f.Add([]byte{0x01, 0x05, 0x09, 0x60, 0x70, 0x21, 0x22, 0x03, 0x13, 0x23})
	names := []string{"a", "b", "c", "d"}
	addrs := []netip.AddrPort{finderAddr, finder2Addr, listenerAddr, netip.AddrPortFrom(listenerAddr.Addr(), 4001)}
	f.Fuzz(func(t *testing.T, ops []byte) {
		now := time.Now()
		tab := newTable(10*time.Second, 30*time.Second, 12, 4, true)
		for i, op := range ops {
			name, peer, addr := names[op&3], names[(op>>2)&3], addrs[(op>>4)&3]
			reqID := uint64(i % 5) // repeats: re-sends and their answers
			fd := &wire.Find{ReqID: reqID, Session: "s", Name: name, Peer: peer}
			switch op >> 6 {
			case 1:
				fd.Flags = wire.FindAgain
			case 2:
				fd.Peer, fd.Flags = "", wire.FindAnyPeer
			case 3:
				if op&0x20 != 0 {
					now = now.Add(4 * time.Second)
					tab.sweep(now)
				} else {
					tab.leave(&wire.Leave{ReqID: reqID, Session: "s", Name: name, Peer: fd.Peer}, addr, now)
				}
				checkTable(t, tab)
				continue
			}
			if fd.Check() != nil {
				continue // the server refuses it before the table
			}
			r, err := tab.find(fd, addr, now)
			checkTable(t, tab)
			if err != nil || r.withdrawn || r.reply.Status != wire.FindMatched {
				continue
			}
			if r.reply.PeerName == fd.Name || fd.Peer != "" && r.reply.PeerName != fd.Peer {
				t.Fatalf("step %d: %+v answered naming %q", i, fd, r.reply.PeerName)
			}
			if r.paired && r.push.PeerName != fd.Name {
				t.Fatalf("step %d: the push names %q, not the finder %q", i, r.push.PeerName, fd.Name)
			}
		}
		checkEmpty(t, tab, now)
	})
}

// checkTable fails t unless the table's counts and queues match its
// entries: every pending plain find is queued, once, under the session and
// peer it wants, and nothing else is.
func checkTable(t *testing.T, tab *table) {
	t.Helper()
	pending, perIP, queued := 0, map[netip.Addr]int{}, map[wantKey]int{}
	for k, e := range tab.entries {
		if e.pending() {
			pending++
			perIP[e.addr.Addr()]++
		}
		if want := e.pending() && e.plain(); e.queued != want {
			t.Fatalf("entry %+v: queued %v, want %v", k, e.queued, want)
		}
		if e.queued {
			if e.name != k.name {
				t.Fatalf("entry %+v queued as %q", k, e.name)
			}
			queued[wantKey{k.session, k.peer}]++
		}
	}
	if pending != tab.pending || len(perIP) != len(tab.perIP) {
		t.Fatalf("%d pending entries from %d IPs; the table counts %d from %d", pending, len(perIP), tab.pending, len(tab.perIP))
	}
	for ip, n := range perIP {
		if tab.perIP[ip] != n {
			t.Fatalf("%v: %d pending, counted %d", ip, n, tab.perIP[ip])
		}
	}
	if len(queued) != len(tab.waitingFor) {
		t.Fatalf("%d queues, want %d", len(tab.waitingFor), len(queued))
	}
	for w, q := range tab.waitingFor {
		n := 0
		var prev *entry
		for e := q.first; e != nil; e = e.next {
			if e.prev != prev || tab.entries[entryKey{w.session, e.name, w.peer}] != e {
				t.Fatalf("queue %+v is broken at %q", w, e.name)
			}
			prev = e
			n++
		}
		if q.last != prev || n != queued[w] {
			t.Fatalf("queue %+v: %d linked (last %p, want %p), %d queued entries", w, n, q.last, prev, queued[w])
		}
	}
}
