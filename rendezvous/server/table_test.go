package server

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// BenchmarkPendingMemory measures heap bytes per pending find, with
// realistic names and two candidate addresses each.
//
//	go test -run XXX -bench PendingMemory ./rendezvous/server/
func BenchmarkPendingMemory(b *testing.B) {
	const n = 100_000
	for range b.N {
		tab := newTable(time.Minute, time.Minute, 2*n, 2*n, true)
		// Encoded datagrams, as they arrive: decoding happens inside the
		// measured window, so the strings and candidate slices the table
		// keeps are counted.
		packets := make([][]byte, n)
		addrs := make([]netip.AddrPort, n)
		for i := range packets {
			addrs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
			f := &wire.Find{ReqID: uint64(i), Session: "a-typical-session", Name: fmt.Sprintf("user-%06d", i), Peer: fmt.Sprintf("peer-%06d", i),
				Candidates: []netip.AddrPort{addrs[i], netip.MustParseAddrPort("192.168.1.20:40000")}}
			packets[i] = f.AppendTo(nil)
		}
		now := time.Now()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i, p := range packets {
			m, err := wire.Decode(p)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := tab.find(m.(*wire.Find), addrs[i], now); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if p, _ := tab.counts(); p != n {
			b.Fatalf("%d pending, want %d", p, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/pending")
		// Upper bound: everything allocated while adding, garbage included.
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "alloc-bytes/pending")
		runtime.KeepAlive(tab)
	}
}

func TestTableMatchesAndExpires(t *testing.T) {
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	now := time.Now()
	a := netip.MustParseAddrPort("198.51.100.1:1000")
	b := netip.MustParseAddrPort("198.51.100.2:2000")
	fa := &wire.Find{ReqID: 1, Session: "s", Name: "alice", Peer: "bob"}
	fb := &wire.Find{ReqID: 2, Session: "s", Name: "bob", Peer: "alice"}
	if r, err := tab.find(fa, a, now); err != nil || r.reply.Status != wire.FindWaiting {
		t.Fatalf("first find: %+v %v", r, err)
	}
	r, err := tab.find(fb, b, now)
	if err != nil || !r.paired || r.pushAddr != a || r.push.Role != wire.RoleInitiator || r.reply.Role != wire.RoleResponder {
		t.Fatalf("second find: %+v %v", r, err)
	}
	// alice re-sends (the push was lost): the same answer again.
	again, _ := tab.find(fa, a, now.Add(time.Second))
	if again.reply.PairingID != r.reply.PairingID || again.paired {
		t.Fatalf("re-send got a different answer")
	}
	// alice runs p2pcat again (new request id): a new attempt, pending.
	fa2 := &wire.Find{ReqID: 3, Session: "s", Name: "alice", Peer: "bob"}
	if r, _ := tab.find(fa2, a, now.Add(2*time.Second)); r.reply.Status != wire.FindWaiting {
		t.Fatalf("new attempt: %+v", r.reply)
	}
	if n := tab.sweep(now.Add(10 * time.Minute)); n != 1 {
		t.Fatalf("sweep expired %d pending, want 1", n)
	}
	if p, m := tab.counts(); p != 0 || m != 0 {
		t.Fatalf("after sweep: %d pending %d matched", p, m)
	}
	// Per-IP cap.
	for i := range 10 {
		if _, err := tab.find(&wire.Find{ReqID: uint64(i), Session: "s", Name: fmt.Sprint("n", i), Peer: "p"}, a, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tab.find(&wire.Find{ReqID: 99, Session: "s", Name: "n99", Peer: "p"}, a, now); err != errIPFull {
		t.Fatalf("11th pending from one IP: %v, want errIPFull", err)
	}
}

// TestTableManySessionsFromOneIP: a host that runs session after session
// (a script, a cron job, one NAT for a whole office) is never refused for
// the pairings it completed: only pending finds count toward the per-IP
// cap. Matched entries are capped in all, and past the cap a pairing is
// still answered.
func TestTableManySessionsFromOneIP(t *testing.T) {
	now := time.Now()
	tab := newTable(time.Minute, 30*time.Second, 8, 4, true)
	a := netip.MustParseAddrPort("192.0.2.1:1000")
	b := netip.MustParseAddrPort("192.0.2.1:2000")
	for i := range 40 {
		s := fmt.Sprint("s", i)
		if r, err := tab.find(&wire.Find{ReqID: uint64(2 * i), Session: s, Name: "alice", Peer: "bob"}, a, now); err != nil || r.reply.Status != wire.FindWaiting {
			t.Fatalf("session %d: alice: %v %+v", i, err, r.reply)
		}
		r, err := tab.find(&wire.Find{ReqID: uint64(2*i + 1), Session: s, Name: "bob", Peer: "alice"}, b, now)
		if err != nil || !r.paired {
			t.Fatalf("session %d: bob: %v, paired %v", i, err, r.paired)
		}
		if p, m := tab.counts(); p != 0 || m > 8 {
			t.Fatalf("session %d: %d pending, %d matched (cap 8)", i, p, m)
		}
	}
	if _, m := tab.counts(); m != 8 {
		t.Fatalf("%d matched entries remembered, want the cap, 8", m)
	}
}

// TestTableLeave: a withdrawn find stays withdrawn. The server's readers
// run in parallel, so a client's last re-sent find and its Leave, sent back
// to back, can be handled in either order; the re-send must not bring back
// a client that has gone (the peer would be paired with nobody).
func TestTableLeave(t *testing.T) {
	tab := newTable(time.Minute, 30*time.Second, 100, 10, true)
	now := time.Now()
	a := netip.MustParseAddrPort("198.51.100.1:1000")
	b := netip.MustParseAddrPort("198.51.100.2:2000")
	fa := &wire.Find{ReqID: 1, Session: "s", Name: "alice", Peer: "bob"}
	leave := &wire.Leave{ReqID: 1, Session: "s", Name: "alice", Peer: "bob"}
	tab.find(fa, a, now)
	// Only the same attempt from the same address withdraws it.
	if tab.leave(&wire.Leave{ReqID: 2, Session: "s", Name: "alice", Peer: "bob"}, a, now) || tab.leave(leave, b, now) {
		t.Fatal("a Leave of another attempt, or from another address, withdrew the find")
	}
	if !tab.leave(leave, a, now) {
		t.Fatal("the Leave did not withdraw the find")
	}
	if p, _ := tab.counts(); p != 0 {
		t.Fatalf("%d pending after the Leave", p)
	}
	if r, _ := tab.find(fa, a, now); !r.withdrawn {
		t.Fatalf("a re-send after the Leave: %+v, want it ignored", r)
	}
	if r, _ := tab.find(&wire.Find{ReqID: 3, Session: "s", Name: "bob", Peer: "alice"}, b, now); r.paired || r.reply.Status != wire.FindWaiting {
		t.Fatalf("bob after alice left: %+v, want waiting", r.reply)
	}
	// A Leave that overtook its attempt's first find.
	if tab.leave(&wire.Leave{ReqID: 4, Session: "s", Name: "carol", Peer: "dave"}, a, now) {
		t.Fatal("a Leave without a find reported a withdrawal")
	}
	if r, _ := tab.find(&wire.Find{ReqID: 4, Session: "s", Name: "carol", Peer: "dave"}, a, now); !r.withdrawn {
		t.Fatalf("a find after its own Leave: %+v, want it ignored", r)
	}
	// A new attempt of the same names is a find like any other, and pairs.
	if r, _ := tab.find(&wire.Find{ReqID: 5, Session: "s", Name: "alice", Peer: "bob"}, a, now); !r.paired {
		t.Fatalf("alice's new attempt: %+v, want paired with the waiting bob", r.reply)
	}
	// Withdrawn entries expire like pending ones, without counting as
	// expired finds.
	if n := tab.sweep(now.Add(10 * time.Minute)); n != 0 {
		t.Fatalf("sweep counted %d expired pending finds, want 0", n)
	}
	if p, other := tab.counts(); p != 0 || other != 0 {
		t.Fatalf("after the sweep: %d pending, %d others", p, other)
	}
}

// TestTableRelayTokens: with the relay, each side's answer carries a token
// of its own, and a re-sent find gets the same one again; without it,
// none.
func TestTableRelayTokens(t *testing.T) {
	now := time.Now()
	a := netip.MustParseAddrPort("198.51.100.1:1000")
	b := netip.MustParseAddrPort("198.51.100.2:2000")
	fa := &wire.Find{ReqID: 1, Session: "s", Name: "alice", Peer: "bob"}
	fb := &wire.Find{ReqID: 2, Session: "s", Name: "bob", Peer: "alice"}
	for _, relay := range []bool{true, false} {
		tab := newTable(time.Minute, 30*time.Second, 100, 10, relay)
		tab.find(fa, a, now)
		r, _ := tab.find(fb, b, now)
		mine, theirs := r.reply, *r.push
		if mine.Relay != relay || theirs.Relay != relay {
			t.Fatalf("relay %v: the answers say %v and %v", relay, mine.Relay, theirs.Relay)
		}
		zero := [16]byte{}
		if relay && (mine.RelayToken == zero || theirs.RelayToken == zero || mine.RelayToken == theirs.RelayToken) {
			t.Fatalf("tokens %x and %x: want two different secrets", mine.RelayToken, theirs.RelayToken)
		}
		if !relay && (mine.RelayToken != zero || theirs.RelayToken != zero) {
			t.Fatal("tokens without the relay")
		}
		for _, c := range []struct {
			f    *wire.Find
			addr netip.AddrPort
			want [16]byte
		}{{fa, a, theirs.RelayToken}, {fb, b, mine.RelayToken}} {
			if again, _ := tab.find(c.f, c.addr, now); again.reply.RelayToken != c.want || again.reply.PairingID != mine.PairingID {
				t.Fatalf("relay %v: a re-send got token %x, want %x", relay, again.reply.RelayToken, c.want)
			}
		}
	}
}
