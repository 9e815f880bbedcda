package server_test

// Registrations for the soak test's load (soak_load_test.go).

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// soakRegistrar registers sessions: a pool refreshed every few rounds (and
// tried with another key: taken), and a ring of sessions created anew
// once a lap, after their last registration expired (so creations go on
// while the store stays bounded: the pool and the ring).
type soakRegistrar struct {
	g        *soakGen
	pool     []soakRegSession
	ring     []soakRegSession
	ringNext int
}

type soakRegSession struct {
	name            string
	owner, intruder rendezvous.SessionKey
	registered      bool
	at              time.Time // of the last registration sent (the ring)
}

const (
	soakRegTTL = rendezvous.MinRegisterTTL
	// soakRingLap: a ring slot is registered again this long after its
	// last registration, which has then expired (TTL, and the store's
	// one-second expiry resolution).
	soakRingLap = soakRegTTL + 3*time.Second
)

func newSoakRegistrar(g *soakGen) *soakRegistrar {
	r := &soakRegistrar{g: g}
	key := func() rendezvous.SessionKey {
		k, _ := rendezvous.GenerateSessionKey() // crypto/rand does not fail
		return k
	}
	for i := range 16 {
		r.pool = append(r.pool, soakRegSession{name: fmt.Sprintf("soak-reg-%d", i), owner: key(), intruder: key()})
	}
	for i := range 64 {
		r.ring = append(r.ring, soakRegSession{name: fmt.Sprintf("soak-new-%d", i)})
	}
	return r
}

// soakExpect is what one request of a round must get.
type soakExpect func(m wire.Message) bool

func (r *soakRegistrar) round(ips *soakIPs, round int) {
	g := r.g
	c := g.dial(ips.next(), "soak-reg-0")
	if c == nil {
		return
	}
	defer c.close()
	var pkts [][]byte
	expect := map[uint64]soakExpect{}
	req := func(m wire.Message, id uint64, e soakExpect) {
		pkts = append(pkts, pad(m))
		if e != nil {
			expect[id] = e
		}
	}
	register := func(s *soakRegSession, key rendezvous.SessionKey, e soakExpect) {
		id := rand.Uint64()
		secs := uint32(soakRegTTL / time.Second)
		req(&wire.Register{ReqID: id, Cookie: c.cookie, Session: s.name, Verifier: key.Verifier(), TTLSeconds: secs,
			Signature: rendezvous.RegisterSignature(key, c.serverID, c.cookie, s.name, secs)}, id, e)
	}
	created := func(s *soakRegSession, mustCreate bool) soakExpect {
		return func(m wire.Message) bool {
			switch m := m.(type) {
			case *wire.RegisterResp:
				s.registered = true
				if m.Status == wire.RegisterCreated {
					g.add(kRegCreated, 1)
				} else if mustCreate {
					g.fail("register of %s: refreshed, want created", s.name)
				} else {
					g.add(kRegRefreshed, 1)
				}
			case *wire.Error:
				switch m.Code {
				case wire.CodeBusy:
					g.add(kRegBusy, 1)
				case wire.CodeRateLimited:
					g.add(kRateLimited, 1)
				default:
					g.fail("register of %s by its owner: error %v %q", s.name, m.Code, m.Message)
				}
			default:
				return false
			}
			return true
		}
	}
	taken := func(s *soakRegSession) soakExpect {
		return func(m wire.Message) bool {
			e, ok := m.(*wire.Error)
			switch {
			case ok && e.Code == wire.CodeTaken:
				g.add(kRegTaken, 1)
			case ok && e.Code == wire.CodeBusy:
				g.add(kRegBusy, 1)
			case ok && e.Code == wire.CodeRateLimited:
				g.add(kRateLimited, 1)
			case m.Type() == wire.TypeRegisterResp || ok:
				g.fail("register of %s with another key: %T %+v, want taken", s.name, m, m)
			default:
				return false
			}
			return true
		}
	}
	errCode := func(code wire.ErrorCode, k soakKind) soakExpect {
		return func(m wire.Message) bool {
			e, ok := m.(*wire.Error)
			switch {
			case ok && e.Code == code:
				g.add(k, 1)
			case ok && e.Code == wire.CodeRateLimited:
				g.add(kRateLimited, 1)
			default:
				g.fail("want error %v, got %T %+v", code, m, m)
			}
			return true
		}
	}

	if round == 0 {
		// The owners first, so that none of the intruders' attempts below
		// comes first.
		for i := range r.pool {
			register(&r.pool[i], r.pool[i].owner, created(&r.pool[i], true))
		}
	} else {
		for j := range 6 {
			s := &r.pool[(round*6+j)%len(r.pool)]
			register(s, s.owner, created(s, false))
			if j%2 == 0 && s.registered {
				register(s, s.intruder, taken(s))
			}
		}
		if s := &r.ring[r.ringNext%len(r.ring)]; time.Since(s.at) >= soakRingLap {
			r.ringNext++
			s.at = time.Now()
			k, _ := rendezvous.GenerateSessionKey()
			register(s, k, created(s, true))
		}
		// A signature that does not verify.
		s := &r.pool[round%len(r.pool)]
		id := rand.Uint64()
		bad := rendezvous.RegisterSignature(s.owner, c.serverID, c.cookie, s.name, 60)
		bad[0] ^= 1
		req(&wire.Register{ReqID: id, Cookie: c.cookie, Session: s.name, Verifier: s.owner.Verifier(), TTLSeconds: 60, Signature: bad}, id, errCode(wire.CodeAuthFailed, kAuthFailed))
		if s.registered {
			r.finds(c, s, round, req, errCode)
		}
	}
	c.send(g.server, pkts...)
	c.recv(soakDiskWait, func(p []byte, _ netip.AddrPort) {
		m := decode(p)
		if m == nil {
			return
		}
		id, _ := wire.ReqIDOf(p)
		if e := expect[id]; e != nil && e(m) {
			delete(expect, id)
		}
	}, func() bool { return len(expect) == 0 })
	g.add(kLost, len(expect))
}

// finds adds, for registered session s: a signed find (waiting, then
// withdrawn), one signed with another key (auth failed) and an unsigned one
// (a Challenge that says the session is registered).
func (r *soakRegistrar) finds(c *soakConn, s *soakRegSession, round int, req func(wire.Message, uint64, soakExpect), errCode func(wire.ErrorCode, soakKind) soakExpect) {
	g := r.g
	name, peer := fmt.Sprintf("s%d", round), fmt.Sprintf("t%d", round)
	id := rand.Uint64()
	req(&wire.Find{ReqID: id, Cookie: c.cookie, Session: s.name, Name: name, Peer: peer,
		Signature: rendezvous.FindSignature(s.owner, c.serverID, c.cookie, s.name, name, peer)}, id, func(m wire.Message) bool {
		switch m := m.(type) {
		case *wire.FindResp:
			if m.Status != wire.FindWaiting {
				g.fail("signed find in %s: matched with nobody there", s.name)
			}
			g.add(kSignedFind, 1)
		case *wire.Error:
			if m.Code != wire.CodeRateLimited {
				g.fail("signed find in %s: error %v %q", s.name, m.Code, m.Message)
			}
		default:
			return false
		}
		return true
	})
	g.add(kTableOps, 2)
	req(&wire.Leave{ReqID: id, Cookie: c.cookie, Session: s.name, Name: name, Peer: peer}, id, nil) // no answer
	id = rand.Uint64()
	req(&wire.Find{ReqID: id, Cookie: c.cookie, Session: s.name, Name: peer, Peer: name,
		Signature: rendezvous.FindSignature(s.intruder, c.serverID, c.cookie, s.name, peer, name)}, id, errCode(wire.CodeAuthFailed, kAuthFailed))
	id = rand.Uint64()
	req(&wire.Find{ReqID: id, Cookie: c.cookie, Session: s.name, Name: peer, Peer: name}, id, func(m wire.Message) bool {
		ch, ok := m.(*wire.Challenge)
		if !ok {
			return false
		}
		if ch.Flags&wire.ChallengeRegistered == 0 {
			g.fail("unsigned find in registered %s: Challenge without the registered flag", s.name)
		}
		g.add(kKeyNeeded, 1)
		return true
	})
}
