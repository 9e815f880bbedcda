package server_test

// Garbage for the soak test's load (soak_load_test.go).

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/pion/stun"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// soakGarbage sends what a server on the Internet receives besides
// requests: noise, truncated and oversized datagrams, other versions,
// unknown and reply types, STUN that is not a Binding request, relayed
// datagrams of unknown pairings, requests with forged and stale cookies,
// bad arguments, and a flood from one address that the rate limit cuts.
// Each round ends with a Hello whose Challenge shows the server still
// answers.
type soakGarbage struct {
	g     *soakGen
	stale *soakConn // keeps its first cookie, which goes stale
	flood *soakConn
	// floodCookie is when flood got its cookie: it keeps a fresh one.
	floodCookie time.Time
	rnd         *rand.ChaCha8
}

func newSoakGarbage(g *soakGen) *soakGarbage {
	return &soakGarbage{g: g, rnd: rand.NewChaCha8([32]byte{'s', 'o', 'a', 'k'})}
}

func (s *soakGarbage) random(n int) []byte {
	b := make([]byte, n)
	s.rnd.Read(b)
	return b
}

func (s *soakGarbage) round(ips *soakIPs, round int) {
	g := s.g
	if s.stale == nil {
		if s.stale = g.dial(ips.next(), "soak-garbage"); s.stale == nil {
			return
		}
		if s.flood = g.dial(ips.next(), "soak-garbage"); s.flood == nil {
			return
		}
		// They live as long as the worker, which closes them (run).
	}
	c := g.dial(ips.next(), "soak-garbage")
	if c == nil {
		return
	}
	defer c.close()
	rn := func(n int) int { return int(s.rnd.Uint64() % uint64(n)) }
	find := &wire.Find{ReqID: rand.Uint64(), Cookie: c.cookie, Session: "soak-garbage", Name: "g", Peer: "h",
		Candidates: []netip.AddrPort{c.addr}}
	valid := find.AppendTo(nil)
	var pkts [][]byte
	for i := range 48 {
		var p []byte
		switch i % 16 {
		case 0: // noise
			p = s.random(1 + rn(1400))
		case 1: // a truncated find
			p = valid[:wire.HeaderLen+rn(len(valid)-wire.HeaderLen)]
		case 2: // version 1, answered in version 1
			p = wire.Pad(valid[:0:0])
			p = append(append(p[:0], wire.Magic[:]...), 1, byte(wire.TypeHello))
			p = wire.Pad(binary.BigEndian.AppendUint64(p, rand.Uint64()))
		case 3: // another version
			p = append(append([]byte(nil), valid...), make([]byte, 20)...)
			p[4] = []byte{0, 3, 255}[rn(3)]
		case 4: // an unknown type
			p = wire.Pad(append(append([]byte(nil), wire.Magic[:]...), wire.Version, 0x42))
		case 5: // reply types, which the server ignores
			replies := []wire.Message{
				&wire.Challenge{ReqID: 1, Cookie: c.cookie},
				&wire.FindResp{ReqID: 2, Status: wire.FindMatched, Observed: c.addr, PeerObserved: c.addr},
				&wire.Error{ReqID: 3, Code: wire.CodeBusy, Message: "busy"},
				&wire.RelayEnded{Reason: "no"},
				&wire.RegisterResp{ReqID: 4},
			}
			p = replies[rn(len(replies))].AppendTo(nil)
		case 6: // oversized with our magic
			p = append(append([]byte(nil), valid...), make([]byte, wire.MaxPacket)...)
		case 7: // larger than any datagram the server reads
			p = s.random(wire.MaxRelayDatagram + 1 + rn(4000))
			p[0] = wire.RelayType
		case 8: // a relayed datagram of no pairing, and one too short
			if rn(2) == 0 {
				p = append(wire.AppendRelayHeader(nil, [16]byte(s.random(16))), s.random(rn(1200))...)
			} else {
				p = append([]byte{wire.RelayType}, s.random(rn(16))...)
			}
		case 9: // STUN that is not a Binding request, or does not parse
			m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.Fingerprint)
			switch rn(4) {
			case 0:
				m = stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication))
			case 1: // a FINGERPRINT that does not check
				m = stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
				m.Raw[len(m.Raw)-1] ^= 0xFF
			case 2: // an attribute overrunning the message
				m = stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("overrun"))
				binary.BigEndian.PutUint16(m.Raw[22:], 200)
			}
			p = m.Raw
		case 10: // a forged cookie, and none: a Challenge
			f := *find
			f.Cookie = s.random(rn(2) * 20)
			p = pad(&f)
		case 11: // own name = peer name: bad argument
			f := *find
			f.Peer = f.Name
			p = pad(&f)
		case 12: // a ttl out of bounds: bad argument
			p = pad(&wire.Register{ReqID: rand.Uint64(), Cookie: c.cookie, Session: "soak-garbage", TTLSeconds: 5})
		case 13: // a RelayBind of no pairing: no answer
			p = pad(&wire.RelayBind{ReqID: rand.Uint64(), Cookie: c.cookie, PairingID: [16]byte(s.random(16))})
		case 14: // non-zero padding
			p = pad(&wire.Hello{ReqID: rand.Uint64(), Session: "soak-garbage"})
			p[len(p)-1] = 1
		case 15: // an invalid name (a control character)
			p = wire.Pad(append(append(append([]byte(nil), wire.Magic[:]...), wire.Version, byte(wire.TypeHello)),
				0, 0, 0, 0, 0, 0, 0, 9, 3, 'a', 0x1b, 'b'))
		}
		pkts = append(pkts, p)
	}
	c.send(g.server, pkts...)
	c.send(g.alt, s.random(64), s.random(20)) // the alternate serves only STUN
	g.add(kGarbage, len(pkts)+2)
	g.add(kTableOps, 2) // the finds of cases 10 and 11 (refused, but counted)

	// The stale cookie, and a flood of Leaves from one address: past the
	// burst, they are refused (rate limited).
	s.stale.send(g.server, pad(&wire.Find{ReqID: rand.Uint64(), Cookie: s.stale.cookie, Session: "soak-garbage", Name: "stale", Peer: "cookie"}))
	var flood [][]byte
	for i := range 48 {
		flood = append(flood, pad(&wire.Leave{ReqID: rand.Uint64(), Cookie: s.flood.cookie, Session: "soak-garbage", Name: fmt.Sprintf("f%d.%d", round, i), Peer: "flood"}))
	}
	if time.Since(s.floodCookie) > g.cfg.CookieTTL/2 {
		if !s.flood.hello("soak-garbage") {
			return
		}
		s.floodCookie = time.Now()
	}
	s.flood.send(g.server, flood...)
	g.add(kTableOps, 49)
	g.add(kGarbage, 49)

	id := rand.Uint64()
	pong := false
	c.send(g.server, pad(&wire.Hello{ReqID: id, Session: "soak-garbage"}))
	c.recv(soakWait, func(p []byte, _ netip.AddrPort) {
		if ch, ok := decode(p).(*wire.Challenge); ok && ch.ReqID == id {
			pong = true
		}
	}, func() bool { return pong })
	if !pong {
		g.add(kLost, 1)
	}
	for _, k := range []*soakConn{s.stale, s.flood} {
		k.recv(time.Millisecond, func(p []byte, _ netip.AddrPort) {
			if e, ok := decode(p).(*wire.Error); ok && e.Code == wire.CodeRateLimited {
				g.add(kRateLimited, 1)
			}
		}, func() bool { return false })
	}
}

func (s *soakGarbage) close() {
	for _, c := range []*soakConn{s.stale, s.flood} {
		if c != nil {
			c.close()
		}
	}
}
