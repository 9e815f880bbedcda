package server

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// table pairs finds. An entry is keyed by (session, name, wanted peer) and is
// pending (waiting for the peer's find), matched (holding the answer for this
// side, so that a re-sent find after a lost answer gets the same pairing), or
// withdrawn (the client sent Leave). The request id of a find identifies one
// attempt of a client: a find with the same key and another request id is a
// new attempt (the user ran p2pcat again), which replaces whatever the old
// attempt left. A withdrawn entry only remembers, for PendingTTL, that its
// attempt is over: a re-sent find of that attempt that arrives after the
// Leave (the server's readers run in parallel, so the two can swap) must
// not bring back a client that has gone.
//
// A listener's find (wire.FindAnyPeer) is keyed with an empty peer, which no
// other find has. Pairing (PROTOCOL.md 2.8): a find (s, X, L) pairs with a
// pending (s, L, X); failing that, unless it is an again-find, with a
// pending listener (s, L, ""). A listener's find pairs with the oldest
// pending plain find (s, X, L), through the queue waitingFor keeps.
type table struct {
	pendingTTL, matchTTL time.Duration
	maxTotal, maxPerIP   int
	// relay: pairings are offered the relay, each end with its own token.
	relay bool

	mu      sync.Mutex
	entries map[entryKey]*entry
	perIP   map[netip.Addr]int // pending entries per client IP
	pending int                // entries not yet matched
	// waitingFor queues, oldest first, the pending plain finds (neither
	// any-peer nor again) by the session and peer they want, so that a
	// listener arriving after them is paired with the first.
	waitingFor map[wantKey]waitQueue

	// Matched and withdrawn entries only answer re-sent finds; they do not
	// count toward a client IP's pending cap (a host that runs many
	// sessions in a row would otherwise be refused for MatchTTL), and at
	// most maxTotal are kept: past that a pairing is still answered, but
	// not remembered, and a Leave is not remembered.
}

type entryKey struct{ session, name, peer string }

// wantKey is the session and peer a find wants.
type wantKey struct{ session, peer string }

// waitQueue is a list of entries linked through their next and prev
// fields, oldest first. It lives in the entries themselves, so that it
// costs a pending find two pointers and its name, not an allocation.
type waitQueue struct{ first, last *entry }

type entry struct {
	reqID     uint64
	flags     wire.FindFlags
	addr      netip.AddrPort
	cands     []netip.AddrPort
	expires   time.Time
	matched   *wire.FindResp // nil while pending
	withdrawn bool           // a Leave ended this attempt
	// queued: the entry is in its waitingFor queue (a pending plain
	// find), between prev and next; name is its own name, which with the
	// queue's wantKey makes its key.
	queued     bool
	name       string
	prev, next *entry
}

// plain reports whether e is a find that a listener may take: neither
// any-peer nor again.
func (e *entry) plain() bool { return e.flags&(wire.FindAnyPeer|wire.FindAgain) == 0 }

// pending reports whether e waits for its peer.
func (e *entry) pending() bool { return e.matched == nil && !e.withdrawn }

var (
	errTableFull = errors.New("too many pending finds")
	errIPFull    = errors.New("too many pending finds from this address")
)

func newTable(pendingTTL, matchTTL time.Duration, maxTotal, maxPerIP int, relay bool) *table {
	return &table{
		pendingTTL: pendingTTL, matchTTL: matchTTL,
		maxTotal: maxTotal, maxPerIP: maxPerIP, relay: relay,
		entries:    make(map[entryKey]*entry),
		perIP:      make(map[netip.Addr]int),
		waitingFor: make(map[wantKey]waitQueue),
	}
}

// findResult is what the server sends after a find: the answer to the
// requester, and when this find completed a pair, the answer pushed to the
// peer at its last known address.
type findResult struct {
	reply    wire.FindResp
	push     *wire.FindResp
	pushAddr netip.AddrPort
	paired   bool // this find completed a new pair
	// withdrawn: the find belongs to an attempt its client withdrew; it
	// gets no answer.
	withdrawn bool
}

// find records f from addr and returns what to send. f has passed
// f.Check.
func (t *table) find(f *wire.Find, addr netip.AddrPort, now time.Time) (findResult, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	me := entryKey{f.Session, f.Name, f.Peer}
	if e := t.entries[me]; e != nil && now.Before(e.expires) && e.reqID == f.ReqID {
		switch {
		case e.matched != nil:
			// A re-send after the answer was lost: the same answer again.
			reply := *e.matched
			reply.Observed = addr
			return findResult{reply: reply}, nil
		case e.withdrawn:
			return findResult{withdrawn: true}, nil
		}
	}
	if other, p := t.partnerLocked(f, addr, now); p != nil {
		return t.pairLocked(me, other, p, f, addr, now), nil
	}
	if err := t.putPendingLocked(me, f, addr, now); err != nil {
		return findResult{}, err
	}
	return findResult{reply: wire.FindResp{ReqID: f.ReqID, Status: wire.FindWaiting, Observed: addr}}, nil
}

// partnerLocked returns the pending entry f pairs with, and its key, or nil:
// for a listener's find the oldest plain find that wants it; for any other
// find the one that wants it back, and failing that (unless f is an
// again-find) the listener. Never an entry from f's own address, nor an
// expired one: the walk skips those (sweep removes the expired within 5 s;
// an IP's own entries are at most MaxPendingPerIP).
func (t *table) partnerLocked(f *wire.Find, addr netip.AddrPort, now time.Time) (entryKey, *entry) {
	usable := func(p *entry) bool { return p != nil && p.pending() && now.Before(p.expires) && p.addr != addr }
	if f.Flags&wire.FindAnyPeer != 0 {
		for p := t.waitingFor[wantKey{f.Session, f.Name}].first; p != nil; p = p.next {
			if usable(p) {
				return entryKey{f.Session, p.name, f.Name}, p
			}
		}
		return entryKey{}, nil
	}
	k := entryKey{f.Session, f.Peer, f.Name}
	if p := t.entries[k]; usable(p) {
		return k, p
	}
	if f.Flags&wire.FindAgain != 0 {
		return entryKey{}, nil
	}
	k = entryKey{f.Session, f.Peer, ""}
	if p := t.entries[k]; usable(p) {
		return k, p
	}
	return entryKey{}, nil
}

// leave withdraws the pending find that l names: only the find with the
// same key and request id, from the same address, so nobody else can
// withdraw it. The entry stays, withdrawn, so that a re-send of that find
// still in flight is not taken for a new one; when there is no entry at all
// (the Leave overtook the attempt's first find) one is made. It reports
// whether it withdrew a pending find.
func (t *table) leave(l *wire.Leave, addr netip.AddrPort, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := entryKey{l.Session, l.Name, l.Peer}
	e := t.entries[k]
	switch {
	case e == nil:
	case e.pending() && e.reqID == l.ReqID && e.addr == addr:
		t.removeLocked(k)
	default:
		return false // another attempt's, or matched: not ours to end
	}
	if len(t.entries)-t.pending < t.maxTotal {
		t.addLocked(k, &entry{reqID: l.ReqID, addr: addr, expires: now.Add(t.pendingTTL), withdrawn: true})
	}
	return e != nil
}

// pairLocked matches the new find f (key me) with the pending entry p (key
// other): p arrived first and is the pairing's initiator end
// (wire.PairingRole; the peers' handshake roles come from their names, not
// from us). Each answer names the other side as it named itself, which is
// how a listener learns whom it got. With the relay, each side's answer
// carries that side's own relay token; the stored answers (for re-sends)
// carry the same ones.
func (t *table) pairLocked(me, other entryKey, p *entry, f *wire.Find, addr netip.AddrPort, now time.Time) findResult {
	var id [16]byte
	rand.Read(id[:])
	mine := &wire.FindResp{
		ReqID: f.ReqID, Status: wire.FindMatched, Observed: addr,
		PairingID: id, Role: wire.RoleResponder, PeerName: other.name,
		PeerObserved: p.addr, PeerCandidates: p.cands,
	}
	theirs := &wire.FindResp{
		ReqID: p.reqID, Status: wire.FindMatched, Observed: p.addr,
		PairingID: id, Role: wire.RoleInitiator, PeerName: me.name,
		PeerObserved: addr, PeerCandidates: cloneAddrs(f.Candidates),
	}
	if t.relay {
		mine.Relay, theirs.Relay = true, true
		rand.Read(mine.RelayToken[:])
		rand.Read(theirs.RelayToken[:])
	}
	t.removeLocked(me)
	t.removeLocked(other)
	if len(t.entries)-t.pending+2 <= t.maxTotal {
		t.addLocked(other, &entry{reqID: p.reqID, addr: p.addr, expires: now.Add(t.matchTTL), matched: theirs})
		t.addLocked(me, &entry{reqID: f.ReqID, addr: addr, expires: now.Add(t.matchTTL), matched: mine})
	}
	return findResult{reply: *mine, push: theirs, pushAddr: p.addr, paired: true}
}

func (t *table) putPendingLocked(k entryKey, f *wire.Find, addr netip.AddrPort, now time.Time) error {
	if e := t.entries[k]; e != nil && e.pending() && e.addr.Addr() == addr.Addr() && e.flags == f.Flags {
		// A re-send (or a new attempt from the same host): refresh in
		// place, keeping its place in the listener's queue.
		e.reqID, e.addr, e.expires = f.ReqID, addr, now.Add(t.pendingTTL)
		e.cands = cloneAddrs(f.Candidates)
		return nil
	}
	t.removeLocked(k)
	if t.pending >= t.maxTotal {
		return errTableFull
	}
	if t.perIP[addr.Addr()] >= t.maxPerIP {
		return errIPFull
	}
	t.addLocked(k, &entry{reqID: f.ReqID, flags: f.Flags, addr: addr, cands: cloneAddrs(f.Candidates), expires: now.Add(t.pendingTTL)})
	t.pending++
	return nil
}

// addLocked stores e under k, where there is no entry; a pending e must
// already be counted in t.pending by the caller.
func (t *table) addLocked(k entryKey, e *entry) {
	t.entries[k] = e
	if !e.pending() {
		return
	}
	t.perIP[e.addr.Addr()]++
	if e.plain() {
		w := wantKey{k.session, k.peer}
		q := t.waitingFor[w]
		e.queued, e.name, e.prev, e.next = true, k.name, q.last, nil
		if q.last != nil {
			q.last.next = e
		} else {
			q.first = e
		}
		q.last = e
		t.waitingFor[w] = q
	}
}

func (t *table) removeLocked(k entryKey) {
	e := t.entries[k]
	if e == nil {
		return
	}
	delete(t.entries, k)
	if !e.pending() {
		return
	}
	t.pending--
	ip := e.addr.Addr()
	if t.perIP[ip] <= 1 {
		delete(t.perIP, ip)
	} else {
		t.perIP[ip]--
	}
	if e.queued {
		w := wantKey{k.session, k.peer}
		q := t.waitingFor[w]
		if e.prev != nil {
			e.prev.next = e.next
		} else {
			q.first = e.next
		}
		if e.next != nil {
			e.next.prev = e.prev
		} else {
			q.last = e.prev
		}
		e.queued, e.prev, e.next = false, nil, nil
		if q.first == nil {
			delete(t.waitingFor, w)
		} else {
			t.waitingFor[w] = q
		}
	}
}

// sweep drops expired entries and returns how many pending ones expired.
func (t *table) sweep(now time.Time) (expired int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, e := range t.entries {
		if !now.Before(e.expires) {
			if e.pending() {
				expired++
			}
			t.removeLocked(k)
		}
	}
	return expired
}

// counts returns the numbers of pending entries and of the others (matched
// or withdrawn).
func (t *table) counts() (pending, matched int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending, len(t.entries) - t.pending
}

func cloneAddrs(a []netip.AddrPort) []netip.AddrPort {
	if len(a) == 0 {
		return nil
	}
	return append([]netip.AddrPort(nil), a...)
}
