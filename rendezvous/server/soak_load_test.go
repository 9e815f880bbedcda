package server_test

// The load generator of TestSoakServer (soak_test.go). Each worker is a
// closed loop: it sends a round of requests and waits for their answers
// (or 250 ms to 1 s, then counts the rest lost), so together they push the
// server as fast as it answers. Every round comes from fresh sockets on
// fresh loopback addresses (127.B.x.y, B one block per worker): thousands
// of distinct clients a second, each within the default per-IP rate limit
// (burst 40) and pending cap (64), so the server's per-IP tables are
// exercised as in the field. Answers are checked; an answer the protocol
// forbids is recorded as wrong, an answer that does not come as lost.
//
// Here: the counters, the sockets, and the workers for pairings, abandoned
// and withdrawn finds, STUN and the real client; registrations are in
// soak_register_test.go, garbage in soak_garbage_test.go, relayed
// sessions in soak_relay_test.go.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun"
	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// soakKind is one thing the generator counts.
type soakKind int

const (
	kPairing        soakKind = iota // completed pairings (raw finds; both sides got the same pairing)
	kPairResend                     // re-sent finds answered with the stored pairing
	kAbandoned                      // finds left waiting, never withdrawn
	kWithdrawn                      // finds withdrawn with Leave
	kLeaveHonoured                  // the peer of a withdrawn find was not paired with it
	kLeaveBroken                    // the peer of a withdrawn find was paired with it
	kRegCreated                     // Register: created
	kRegRefreshed                   // Register: refreshed
	kRegTaken                       // Register with another key: taken
	kRegBusy                        // Register: queue full (busy)
	kSignedFind                     // finds in registered sessions, signed, waiting
	kAuthFailed                     // wrong signatures refused
	kKeyNeeded                      // unsigned finds in registered sessions: Challenge says registered
	kSTUN                           // Binding answered from the socket asked
	kSTUNChanged                    // Binding with CHANGE-REQUEST answered from the alternate
	kSTUNAlt                        // Binding to the alternate socket answered
	kRelayCap                       // relayed sessions ended at the byte cap (RelayEnded at both ends)
	kRelayAbandoned                 // relayed sessions left mid-way
	kRelayIdle                      // relayed sessions that timed out idle (then refused)
	kRelayBound                     // relayed sessions whose end moved with RelayBind
	kRelayed                        // relayed datagrams delivered
	kKeepalive                      // relay keepalives echoed
	kBindRefused                    // RelayBinds with a wrong MAC left unanswered
	kGarbage                        // garbage datagrams sent
	kRateLimited                    // Error rate_limited received
	kClientPair                     // rendezvous.Client pairings
	kClientLeave                    // rendezvous.Client finds given up (Leave)
	kClientSTUN                     // rendezvous.STUNBinding answers
	kClientRegister                 // rendezvous.Client registrations
	kSent                           // datagrams sent
	kReceived                       // datagrams received
	kTableOps                       // finds and leaves sent (each may make a table entry)
	kAddrs                          // client addresses used (each may get a rate-limit bucket)
	kLost                           // expected answers that did not come
	kWrong                          // answers the protocol forbids
	numKinds
)

var soakKindNames = [numKinds]string{
	"pairings", "pair re-sends", "abandoned finds", "withdrawn finds", "leaves honoured", "leaves not honoured",
	"registers created", "registers refreshed", "registers taken", "registers busy",
	"signed finds", "auth failures", "key-needed challenges",
	"stun", "stun changed", "stun alternate",
	"relay: byte cap", "relay: abandoned", "relay: idle timeout", "relay: rebound",
	"relayed datagrams", "relay keepalives", "relay binds refused",
	"garbage", "rate limited",
	"client pairings", "client leaves", "client stun", "client registers",
	"datagrams sent", "datagrams received", "table ops", "addresses", "lost", "wrong",
}

// soakSessionTimeouts bound the generator's waits.
const (
	soakWait     = 250 * time.Millisecond // one answer or a round of them
	soakDiskWait = time.Second            // registrations wait for fsync
)

type soakGen struct {
	server, alt netip.AddrPort
	cfg         server.Config
	counts      [numKinds]atomic.Int64
	relayLive   atomic.Int64 // relayed sessions in progress
	wg          sync.WaitGroup

	mu    sync.Mutex
	wrong []string // the first few wrong answers, for the report
}

func newSoakGen(server, alt netip.AddrPort, cfg server.Config) *soakGen {
	return &soakGen{server: server, alt: alt, cfg: cfg}
}

func (g *soakGen) add(k soakKind, n int) { g.counts[k].Add(int64(n)) }

func (g *soakGen) count(k soakKind) int64 { return g.counts[k].Load() }

func (g *soakGen) fail(format string, args ...any) {
	g.add(kWrong, 1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.wrong) < 20 {
		g.wrong = append(g.wrong, fmt.Sprintf(format, args...))
	}
}

// run starts the workers; they stop when ctx ends, and wait returns once
// they all have.
func (g *soakGen) run(ctx context.Context) {
	block := byte(20)
	worker := func(round func(ips *soakIPs, n int), done func()) {
		ips := &soakIPs{block: block}
		block++
		g.wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				round(ips, n)
			}
			if done != nil {
				done()
			}
		})
	}
	for range 2 {
		worker(g.pairRound, nil)
	}
	worker(g.abandonRound, nil)
	worker((&soakLeaver{g: g}).round, nil)
	worker(newSoakRegistrar(g).round, nil)
	worker(g.stunRound, nil)
	garbage := newSoakGarbage(g)
	worker(garbage.round, garbage.close)
	idle := make(chan struct{}, 24) // idle relayed sessions parked at once
	for range 2 {
		worker(func(ips *soakIPs, n int) { g.relayRound(ctx, ips, n, idle) }, nil)
	}
	worker(func(ips *soakIPs, n int) { g.clientRound(ctx, ips, n) }, nil)
}

func (g *soakGen) wait() { g.wg.Wait() }

// soakIPs hands out fresh loopback addresses of one block, 127.block.x.y.
type soakIPs struct {
	block byte
	n     int
}

func (a *soakIPs) next() netip.Addr {
	a.n = (a.n + 1) % (256 * 254)
	return netip.AddrFrom4([4]byte{127, a.block, byte(a.n / 254), byte(a.n%254 + 1)})
}

// soakConn is one client socket with its cookie.
type soakConn struct {
	g        *soakGen
	c        *net.UDPConn
	pc       *ipv4.PacketConn
	addr     netip.AddrPort
	cookie   []byte
	serverID [16]byte
	in, out  []ipv4.Message
}

func (g *soakGen) listen(ip netip.Addr) (*soakConn, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return nil, err
	}
	g.add(kAddrs, 1)
	s := &soakConn{g: g, c: c, pc: ipv4.NewPacketConn(c), addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	s.in = make([]ipv4.Message, 16)
	for i := range s.in {
		s.in[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	return s, nil
}

// dial is listen and Hello: a socket with a cookie, or nil (counted lost).
func (g *soakGen) dial(ip netip.Addr, session string) *soakConn {
	c, err := g.listen(ip)
	if err != nil {
		g.fail("listen on %s: %v", ip, err)
		return nil
	}
	if !c.hello(session) {
		c.close()
		return nil
	}
	return c
}

func (c *soakConn) close() { c.c.Close() }

// send writes pkts to addr in as few system calls as it can.
func (c *soakConn) send(to netip.AddrPort, pkts ...[]byte) {
	ua := net.UDPAddrFromAddrPort(to)
	c.out = c.out[:0]
	for _, p := range pkts {
		c.out = append(c.out, ipv4.Message{Buffers: [][]byte{p}, Addr: ua})
	}
	for sent := 0; sent < len(c.out); {
		k, err := c.pc.WriteBatch(c.out[sent:], 0)
		if err != nil {
			k = max(k, 1) // the kernel refused one; go on with the rest
		}
		sent += k
	}
	c.g.add(kSent, len(pkts))
}

// recv hands every datagram that arrives to handle until done reports
// true or d has passed, and reports done.
func (c *soakConn) recv(d time.Duration, handle func(b []byte, from netip.AddrPort), done func() bool) bool {
	c.c.SetReadDeadline(time.Now().Add(d))
	for !done() {
		n, err := c.pc.ReadBatch(c.in, 0)
		if err != nil {
			return done()
		}
		c.g.add(kReceived, n)
		for i := range c.in[:n] {
			ua, _ := c.in[i].Addr.(*net.UDPAddr)
			handle(c.in[i].Buffers[0][:c.in[i].N], ua.AddrPort())
		}
	}
	return true
}

// hello gets a cookie, re-sending as the reference client does.
func (c *soakConn) hello(session string) bool {
	id := rand.Uint64()
	got := false
	for range 4 {
		c.send(c.g.server, wire.Pad((&wire.Hello{ReqID: id, Session: session}).AppendTo(nil)))
		c.recv(soakWait, func(b []byte, _ netip.AddrPort) {
			if ch, ok := decode(b).(*wire.Challenge); ok && ch.ReqID == id {
				c.cookie, c.serverID, got = ch.Cookie, ch.ServerID, true
			}
		}, func() bool { return got })
		if got {
			return true
		}
	}
	c.g.add(kLost, 1)
	return false
}

func decode(b []byte) wire.Message {
	m, err := wire.Decode(b)
	if err != nil {
		return nil
	}
	return m
}

func pad(m wire.Message) []byte { return wire.Pad(m.AppendTo(nil)) }

// pairRound: n pairs, each a find from A (waiting) and one from B
// (matched, and the match pushed to A); a few B finds re-sent.
func (g *soakGen) pairRound(ips *soakIPs, round int) {
	const n, resends = 32, 4
	a := g.dial(ips.next(), "soak-pair")
	if a == nil {
		return
	}
	defer a.close()
	b := g.dial(ips.next(), "soak-pair")
	if b == nil {
		return
	}
	defer b.close()
	baseA, baseB := rand.Uint64()>>1, rand.Uint64()>>1
	fa, fb := make([][]byte, n), make([][]byte, n)
	for i := range n {
		an, bn := fmt.Sprintf("a%d.%d.%d", ips.block, round, i), fmt.Sprintf("b%d.%d.%d", ips.block, round, i)
		fa[i] = (&wire.Find{ReqID: baseA + uint64(i), Cookie: a.cookie, Session: "soak-pair", Name: an, Peer: bn}).AppendTo(nil)
		fb[i] = (&wire.Find{ReqID: baseB + uint64(i), Cookie: b.cookie, Session: "soak-pair", Name: bn, Peer: an}).AppendTo(nil)
	}
	var waiting, pushed, matched, again int
	ids := make([][16]byte, n)
	onA := func(p []byte, _ netip.AddrPort) {
		r, ok := decode(p).(*wire.FindResp)
		if !ok || r.ReqID-baseA >= n {
			return
		}
		switch {
		case r.Status == wire.FindWaiting:
			waiting++
		case r.Role != wire.RoleInitiator || r.PeerObserved != b.addr || !r.Relay:
			g.fail("pair push: role %v, peer %s (want %s), relay %v", r.Role, r.PeerObserved, b.addr, r.Relay)
		default:
			pushed++
			ids[r.ReqID-baseA] = r.PairingID
		}
	}
	onB := func(p []byte, _ netip.AddrPort) {
		r, ok := decode(p).(*wire.FindResp)
		if !ok || r.ReqID-baseB >= n {
			return
		}
		i := r.ReqID - baseB
		switch {
		case r.Status == wire.FindWaiting:
			// A's find was lost (or had expired): B waits in its place.
			// Lost, counted below.
		case r.Role != wire.RoleResponder || r.PeerObserved != a.addr:
			g.fail("pair answer: role %v, peer %s (want responder, %s)", r.Role, r.PeerObserved, a.addr)
		case i < resends && matched >= n:
			again++ // the re-sends below: the same pairing again
			if ids[i] != ([16]byte{}) && r.PairingID != ids[i] {
				g.fail("re-sent find answered with another pairing")
			}
		default:
			matched++
		}
	}
	a.send(g.server, fa...)
	g.add(kTableOps, n)
	a.recv(soakWait, onA, func() bool { return waiting >= n })
	b.send(g.server, fb...)
	g.add(kTableOps, n)
	b.recv(soakWait, onB, func() bool { return matched >= n })
	a.recv(soakWait, onA, func() bool { return pushed >= n })
	if matched >= n {
		b.send(g.server, fb[:resends]...)
		g.add(kTableOps, resends)
		b.recv(soakWait, onB, func() bool { return again >= resends })
	}
	g.add(kPairing, min(matched, pushed))
	g.add(kPairResend, again)
	g.add(kLost, 3*n-waiting-matched-pushed)
}

// abandonRound: n finds that wait and are never heard of again, as from a
// client killed while it waited.
func (g *soakGen) abandonRound(ips *soakIPs, round int) {
	const n = 32
	a := g.dial(ips.next(), "soak-abandon")
	if a == nil {
		return
	}
	defer a.close()
	base := rand.Uint64() >> 1
	finds := make([][]byte, n)
	for i := range finds {
		finds[i] = (&wire.Find{ReqID: base + uint64(i), Cookie: a.cookie, Session: "soak-abandon",
			Name: fmt.Sprintf("x%d.%d", round, i), Peer: fmt.Sprintf("y%d.%d", round, i),
			Candidates: []netip.AddrPort{a.addr}}).AppendTo(nil)
	}
	a.send(g.server, finds...)
	g.add(kTableOps, n)
	waiting := 0
	a.recv(soakWait, func(p []byte, _ netip.AddrPort) {
		if r, ok := decode(p).(*wire.FindResp); ok && r.ReqID-base < n && r.Status == wire.FindWaiting {
			waiting++
		}
	}, func() bool { return waiting >= n })
	g.add(kAbandoned, waiting)
	g.add(kLost, n-waiting)
}

// soakLeaver withdraws finds with Leave and, one round later, sends the
// finds of their peers: those must wait, not be paired with a client that
// has gone. Then the peers leave too.
type soakLeaver struct {
	g    *soakGen
	prev [][2]string // the last round's withdrawn (name, peer)
}

func (l *soakLeaver) round(ips *soakIPs, round int) {
	cur := make([][2]string, 9)
	for i := range cur {
		cur[i] = [2]string{fmt.Sprintf("l%d.%d", round, i), fmt.Sprintf("m%d.%d", round, i)}
	}
	l.withdraw(ips, cur, false)
	if len(l.prev) > 0 {
		peers := make([][2]string, len(l.prev))
		for i, p := range l.prev {
			peers[i] = [2]string{p[1], p[0]}
		}
		l.withdraw(ips, peers, true)
	}
	l.prev = cur
}

// withdraw sends a find for each (name, peer) from a fresh address, then a
// Leave for each that waits, and the same finds again, as a client's
// re-sends in flight: the server does not answer those of withdrawn
// attempts (PROTOCOL.md 2.8, rule 2), unless its table of matched and
// withdrawn entries is full (MaxPending, which this load reaches at its
// peaks), when a Leave ends an attempt without remembering it, and the
// re-sent find begins it again. So once the server has read them (a
// Hello's Challenge), a Leave for each again, the client's second copy.
// A find answered with a match (pairs are fresh names, or the peers of
// withdrawn finds: peers) is a Leave the server did not honour. 9 pairs
// make at most 36 requests: within the burst.
func (l *soakLeaver) withdraw(ips *soakIPs, pairs [][2]string, peers bool) {
	g := l.g
	c := g.dial(ips.next(), "soak-leave")
	if c == nil {
		return
	}
	defer c.close()
	base := rand.Uint64() >> 1
	finds, leaves := make([][]byte, len(pairs)), make([][]byte, len(pairs))
	for i, p := range pairs {
		finds[i] = (&wire.Find{ReqID: base + uint64(i), Cookie: c.cookie, Session: "soak-leave", Name: p[0], Peer: p[1]}).AppendTo(nil)
		leaves[i] = pad(&wire.Leave{ReqID: base + uint64(i), Cookie: c.cookie, Session: "soak-leave", Name: p[0], Peer: p[1]})
	}
	waiting := map[int]bool{}
	on := func(p []byte, _ netip.AddrPort) {
		r, ok := decode(p).(*wire.FindResp)
		if !ok || r.ReqID-base >= uint64(len(pairs)) {
			return
		}
		if r.Status == wire.FindMatched {
			// Nobody is there (fresh names), or the peer has left.
			g.add(kLeaveBroken, 1)
			return
		}
		waiting[int(r.ReqID-base)] = true
	}
	c.send(g.server, finds...)
	g.add(kTableOps, len(finds))
	c.recv(soakWait, on, func() bool { return len(waiting) == len(pairs) })
	if peers {
		g.add(kLeaveHonoured, len(waiting))
	}
	g.add(kLost, len(pairs)-len(waiting))
	var left, again [][]byte
	for i := range waiting {
		left = append(left, leaves[i])
		again = append(again, finds[i])
	}
	if len(left) == 0 {
		return
	}
	c.send(g.server, append(left, again...)...)
	id := rand.Uint64()
	pong := false
	c.send(g.server, pad(&wire.Hello{ReqID: id, Session: "soak-leave"}))
	c.recv(soakWait, func(p []byte, _ netip.AddrPort) {
		if ch, ok := decode(p).(*wire.Challenge); ok && ch.ReqID == id {
			pong = true
		}
	}, func() bool { return pong })
	c.send(g.server, left...)
	g.add(kTableOps, 3*len(left))
	g.add(kWithdrawn, len(left))
	// A re-sent find answered after that (a full table let it begin the
	// attempt again, and the server's parallel readers let it overtake the
	// second Leave) is an attempt the client knows it left: it leaves again,
	// once the answer shows the order.
	c.recv(soakWait, func(p []byte, _ netip.AddrPort) {
		if r, ok := decode(p).(*wire.FindResp); ok && r.ReqID-base < uint64(len(pairs)) && waiting[int(r.ReqID-base)] {
			c.send(g.server, leaves[r.ReqID-base])
			g.add(kTableOps, 1)
		}
	}, func() bool { return false })
}

// stunRound: Binding requests to the primary, some with CHANGE-REQUEST
// (answered from the alternate), and some to the alternate.
func (g *soakGen) stunRound(ips *soakIPs, _ int) {
	const n, changed, alt = 32, 4, 4
	c, err := g.listen(ips.next())
	if err != nil {
		g.fail("listen: %v", err)
		return
	}
	defer c.close()
	type want struct {
		from netip.AddrPort
		kind soakKind
	}
	wants := map[[stun.TransactionIDSize]byte]want{}
	var toPrimary, toAlt [][]byte
	for i := range n {
		setters := []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewSoftware("soak")}
		w := want{g.server, kSTUN}
		if i < changed {
			setters = append(setters, stunChange(0x02))
			w = want{g.alt, kSTUNChanged}
		}
		m := stun.MustBuild(append(setters, stun.Fingerprint)...)
		if i >= n-alt {
			w = want{g.alt, kSTUNAlt}
			toAlt = append(toAlt, m.Raw)
		} else {
			toPrimary = append(toPrimary, m.Raw)
		}
		wants[m.TransactionID] = w
	}
	c.send(g.server, toPrimary...)
	c.send(g.alt, toAlt...)
	c.recv(soakWait, func(p []byte, from netip.AddrPort) {
		m := &stun.Message{Raw: append([]byte(nil), p...)}
		if m.Decode() != nil {
			return
		}
		w, ok := wants[m.TransactionID]
		if !ok {
			return
		}
		delete(wants, m.TransactionID)
		var xa stun.XORMappedAddress
		if m.Type != stun.BindingSuccess || xa.GetFrom(m) != nil || from != w.from {
			g.fail("stun: %v from %s (want success from %s)", m.Type, from, w.from)
			return
		}
		if ip, _ := netip.AddrFromSlice(xa.IP); netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)) != c.addr {
			g.fail("stun: mapped %s, want %s", xa.String(), c.addr)
			return
		}
		g.add(w.kind, 1)
	}, func() bool { return len(wants) == 0 })
	g.add(kLost, len(wants))
}

// stunChange is a CHANGE-REQUEST attribute.
type stunChange uint32

func (f stunChange) AddTo(m *stun.Message) error {
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], uint32(f))
	m.Add(stun.AttrChangeRequest, v[:])
	return nil
}

// clientRound uses the real client: a pairing, a find given up (which
// sends Leave), STUN to both sockets, and now and then a registration.
func (g *soakGen) clientRound(ctx context.Context, ips *soakIPs, n int) {
	conns := make([]*net.UDPConn, 2)
	for i := range conns {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips.next(), 0)))
		if err != nil {
			g.fail("listen: %v", err)
			return
		}
		defer c.Close()
		g.add(kAddrs, 1)
		conns[i] = c
	}
	ca := &rendezvous.Client{Conn: conns[0], Server: g.server}
	cb := &rendezvous.Client{Conn: conns[1], Server: g.server}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	an, bn := fmt.Sprintf("ca%d", n), fmt.Sprintf("cb%d", n)
	var ma, mb rendezvous.Match
	var errA, errB error
	var wg sync.WaitGroup
	wg.Go(func() { ma, errA = ca.Find(octx, rendezvous.FindRequest{Session: "soak-client", Name: an, Peer: bn}) })
	mb, errB = cb.Find(octx, rendezvous.FindRequest{Session: "soak-client", Name: bn, Peer: an})
	wg.Wait()
	g.add(kTableOps, 2)
	switch {
	case ctx.Err() != nil:
		return
	case errA != nil || errB != nil:
		g.add(kLost, 1)
	case ma.PairingID != mb.PairingID:
		g.fail("client pairing: two pairing ids")
	default:
		g.add(kClientPair, 1)
	}

	wctx, wcancel := context.WithTimeout(ctx, 30*time.Millisecond)
	_, err := ca.Find(wctx, rendezvous.FindRequest{Session: "soak-client", Name: an + "w", Peer: "nobody"})
	wcancel()
	g.add(kTableOps, 3)
	switch {
	case ctx.Err() != nil:
		return
	case errors.Is(err, rendezvous.ErrPeerNotFound):
		g.add(kClientLeave, 1)
	default:
		g.add(kLost, 1)
	}

	for _, to := range []netip.AddrPort{g.server, g.alt} {
		mapped, err := rendezvous.STUNBinding(octx, conns[1], to)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			g.add(kLost, 1)
		case mapped != conns[1].LocalAddr().(*net.UDPAddr).AddrPort():
			g.fail("STUNBinding: mapped %s, want %s", mapped, conns[1].LocalAddr())
		default:
			g.add(kClientSTUN, 1)
		}
	}

	if n%8 == 0 {
		key := soakClientKeys[n/8%len(soakClientKeys)]
		_, err := ca.Register(octx, fmt.Sprintf("soak-client-%d", n/8%len(soakClientKeys)), key, soakRegTTL)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			g.add(kLost, 1)
		default:
			g.add(kClientRegister, 1)
		}
	}
}

// soakClientKeys are the real client's registered sessions' keys.
var soakClientKeys = func() []rendezvous.SessionKey {
	keys := make([]rendezvous.SessionKey, 4)
	for i := range keys {
		keys[i], _ = rendezvous.GenerateSessionKey()
	}
	return keys
}()
