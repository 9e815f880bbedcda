package server_test

// Relayed sessions for the soak test's load (soak_load_test.go).

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// soakRelay is one relayed session: two ends and their pairing.
type soakRelay struct {
	g        *soakGen
	a, b     *soakConn
	id       [16]byte
	ma, mb   *wire.FindResp
	ips      *soakIPs
	payloads *rand.ChaCha8
}

// relayPair pairs two fresh sockets for a relayed session.
func (g *soakGen) relayPair(ips *soakIPs, n int) *soakRelay {
	a := g.dial(ips.next(), "soak-relay")
	if a == nil {
		return nil
	}
	b := g.dial(ips.next(), "soak-relay")
	if b == nil {
		a.close()
		return nil
	}
	r := &soakRelay{g: g, a: a, b: b, ips: ips, payloads: rand.NewChaCha8([32]byte{byte(n)})}
	an, bn := fmt.Sprintf("ra%d.%d", ips.block, n), fmt.Sprintf("rb%d.%d", ips.block, n)
	ida, idb := rand.Uint64(), rand.Uint64()
	find := func(c *soakConn, id uint64, name, peer string, got **wire.FindResp, status wire.FindStatus) bool {
		c.send(g.server, (&wire.Find{ReqID: id, Cookie: c.cookie, Session: "soak-relay", Name: name, Peer: peer}).AppendTo(nil))
		g.add(kTableOps, 1)
		return c.recv(soakWait, func(p []byte, _ netip.AddrPort) {
			if m, ok := decode(p).(*wire.FindResp); ok && m.ReqID == id && m.Status == status {
				*got = m
			}
		}, func() bool { return *got != nil })
	}
	var waiting *wire.FindResp
	ok := find(a, ida, an, bn, &waiting, wire.FindWaiting) && find(b, idb, bn, an, &r.mb, wire.FindMatched) &&
		a.recv(soakWait, func(p []byte, _ netip.AddrPort) {
			if m, ok := decode(p).(*wire.FindResp); ok && m.ReqID == ida && m.Status == wire.FindMatched {
				r.ma = m
			}
		}, func() bool { return r.ma != nil })
	if !ok {
		g.add(kLost, 1)
		r.close()
		return nil
	}
	if r.ma.PairingID != r.mb.PairingID || !r.ma.Relay || !r.mb.Relay || r.ma.RelayToken == r.mb.RelayToken {
		g.fail("relay pairing: ids %x / %x, relay %v/%v", r.ma.PairingID, r.mb.PairingID, r.ma.Relay, r.mb.Relay)
		r.close()
		return nil
	}
	r.id = r.ma.PairingID
	return r
}

func (r *soakRelay) close() {
	r.a.close()
	r.b.close()
}

func (r *soakRelay) datagram(n int) []byte {
	p := wire.AppendRelayHeader(make([]byte, 0, wire.RelayHeaderLen+n), r.id)
	p = p[:wire.RelayHeaderLen+n]
	r.payloads.Read(p[wire.RelayHeaderLen:])
	return p
}

// relay sends a datagram from x and reports whether y got it, unchanged.
func (r *soakRelay) relay(x, y *soakConn, n int) bool {
	p := r.datagram(n)
	x.send(r.g.server, p)
	got := false
	y.recv(soakWait, func(b []byte, from netip.AddrPort) {
		got = got || (from == r.g.server && bytes.Equal(b, p))
	}, func() bool { return got })
	if got {
		r.g.add(kRelayed, 1)
	} else {
		r.g.add(kLost, 1)
	}
	return got
}

// notRelayed sends a datagram from x and reports whether y stayed silent
// for a while.
func (r *soakRelay) notRelayed(x, y *soakConn) bool {
	x.send(r.g.server, r.datagram(100))
	got := false
	y.recv(100*time.Millisecond, func(b []byte, _ netip.AddrPort) {
		got = got || (len(b) > wire.RelayHeaderLen && b[0] == wire.RelayType)
	}, func() bool { return got })
	return !got
}

// keepalive sends a relay keepalive from x and waits for its echo.
func (r *soakRelay) keepalive(x *soakConn) {
	p := wire.AppendRelayHeader(nil, r.id)
	x.send(r.g.server, p)
	got := false
	x.recv(soakWait, func(b []byte, _ netip.AddrPort) { got = got || bytes.Equal(b, p) }, func() bool { return got })
	if got {
		r.g.add(kKeepalive, 1)
	} else {
		r.g.add(kLost, 1)
	}
}

// exchange relays k datagrams each way and a keepalive from each end.
func (r *soakRelay) exchange(k int) {
	for i := range k {
		r.relay(r.a, r.b, 200+i*97%1200)
		r.relay(r.b, r.a, 100+i*89%1300)
	}
	r.keepalive(r.a)
	r.keepalive(r.b)
}

// relayRound runs one relayed session, of one of four kinds by n: ended at
// the byte cap; abandoned; an end moved with RelayBind (and a forged
// RelayBind refused); or left idle, in its own goroutine, until the relay
// must have forgotten it.
func (g *soakGen) relayRound(ctx context.Context, ips *soakIPs, n int, idle chan struct{}) {
	r := g.relayPair(ips, n)
	if r == nil {
		return
	}
	g.relayLive.Add(1)
	switch n % 4 {
	case 0:
		r.toCap()
	case 1:
		r.exchange(3)
		// Another port of a's IP is not a: nothing it sends is relayed.
		if s, err := g.listen(r.a.addr.Addr()); err == nil {
			if !r.notRelayed(s, r.b) {
				g.fail("relayed a datagram from another port of an end's IP")
			}
			s.close()
		}
		g.add(kRelayAbandoned, 1)
	case 2:
		r.rebind()
	case 3:
		select {
		case idle <- struct{}{}:
			g.wg.Go(func() {
				defer func() { <-idle }()
				r.idle(ctx)
				r.close()
				g.relayLive.Add(-1)
			})
			return
		default:
			r.exchange(2) // parked sessions enough: abandon this one
			g.add(kRelayAbandoned, 1)
		}
	}
	r.close()
	g.relayLive.Add(-1)
}

// toCap relays 1,000-byte payloads both ways until the byte cap ends the
// pairing: each end must get a RelayEnded that verifies under its own
// token, and nothing may be relayed past the cap.
func (r *soakRelay) toCap() {
	g := r.g
	const n = 1000
	limit := int(g.cfg.RelayBytes) / (wire.RelayHeaderLen + n)
	forwarded := 0
	var ended [2]bool
	ends := [2]*soakConn{r.a, r.b}
	tokens := [2][16]byte{r.ma.RelayToken, r.mb.RelayToken}
	on := func(side int, p []byte) func(b []byte, from netip.AddrPort) {
		return func(b []byte, from netip.AddrPort) {
			if bytes.Equal(b, p) {
				forwarded++
				g.add(kRelayed, 1)
				return
			}
			e, ok := decode(b).(*wire.RelayEnded)
			if !ok {
				return
			}
			if e.PairingID != r.id || !e.Verify(tokens[side]) || e.Verify(tokens[1-side]) {
				g.fail("RelayEnded that does not verify under the end's own token")
			}
			ended[side] = true
		}
	}
	for i := 0; i < 2*limit+4 && !(ended[0] && ended[1]); i++ {
		x, y := i%2, 1-i%2
		p := r.datagram(n)
		ends[x].send(g.server, p)
		before := forwarded
		ends[y].recv(soakWait, on(y, p), func() bool { return forwarded > before || ended[y] })
		if ended[y] {
			ends[x].recv(soakWait, on(x, nil), func() bool { return ended[x] })
		}
	}
	switch {
	case forwarded > limit:
		g.fail("relayed %d datagrams of %d bytes past a cap of %d bytes", forwarded, n, g.cfg.RelayBytes)
	case !ended[0] || !ended[1]:
		g.add(kLost, 1) // a notice lost
	default:
		if !r.notRelayed(r.a, r.b) {
			g.fail("relayed after the byte cap ended the pairing")
		}
		g.add(kRelayCap, 1)
	}
}

// rebind moves a to a new address with a RelayBind (first without a
// cookie: a Challenge), then has a stranger try with a forged MAC.
func (r *soakRelay) rebind() {
	g := r.g
	r.exchange(2)
	bind := func(c *soakConn, token [16]byte) bool {
		m := &wire.RelayBind{ReqID: rand.Uint64(), Cookie: c.cookie, PairingID: r.id, Role: r.ma.Role}
		m.MAC = wire.RelayBindMAC(token, r.id, m.Role, m.Cookie)
		c.send(g.server, pad(m))
		want := wire.AppendRelayHeader(nil, r.id)
		got := false
		c.recv(soakWait, func(b []byte, _ netip.AddrPort) { got = got || bytes.Equal(b, want) }, func() bool { return got })
		return got
	}
	moved, err := g.listen(r.ips.next())
	if err != nil {
		g.fail("listen: %v", err)
		return
	}
	defer moved.close()
	// Without a cookie: a Challenge, whose cookie the MAC then covers.
	if !moved.hello("soak-relay") {
		return
	}
	if !bind(moved, r.ma.RelayToken) {
		g.add(kLost, 1)
		return
	}
	old := r.a
	r.a = moved
	r.exchange(1)
	r.a = old
	stranger := g.dial(r.ips.next(), "soak-relay")
	if stranger == nil {
		return
	}
	defer stranger.close()
	if bind(stranger, r.mb.RelayToken) { // b's token: not a's end's
		g.fail("a RelayBind with another end's MAC moved an end")
		return
	}
	g.add(kBindRefused, 1)
	if !r.notRelayed(stranger, r.b) {
		g.fail("relayed from an address a refused RelayBind came from")
	}
	g.add(kRelayBound, 1)
}

// idle relays a little, then waits until the relay must have forgotten
// the pairing (RelayIdle, and the next sweep), and checks that it did.
func (r *soakRelay) idle(ctx context.Context) {
	r.exchange(2)
	t := time.NewTimer(r.g.cfg.RelayIdle + soakSweep + 1500*time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		r.g.add(kRelayAbandoned, 1)
		return
	case <-t.C:
	}
	if !r.notRelayed(r.a, r.b) {
		r.g.fail("relayed a datagram after RelayIdle (%s) and a sweep", r.g.cfg.RelayIdle)
		return
	}
	r.g.add(kRelayIdle, 1)
}
