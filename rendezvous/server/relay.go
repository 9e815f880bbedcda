package server

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// The relay carries the sessions of pairs that found no direct path. It
// forwards opaque datagrams (rendezvous/wire/relay.go) between the two addresses the
// pairing answered, and nothing else: the session is encrypted and
// authenticated end to end, so the relay can drop or delay packets but never
// read or alter them.
//
// Rules:
//   - Every pairing is offered the relay (FindResp flag), and each of its two
//     ends gets its own random relay token in its FindResp. The offer is a
//     small record, kept until it has been unused for RelayIdle; MaxRelays
//     bounds them, the oldest unused going first.
//   - A datagram is forwarded only when it comes from one of the pairing's
//     two recorded end addresses, both proven by cookies, and only to the
//     other. Nothing else moves an end: not another port of the same IP
//     (everyone behind one CGNAT address shares that IP), only a RelayBind
//     whose cookie proves the new address and whose MAC, under that end's
//     token, proves that it comes from that end. The pairing id alone, seen
//     by anyone on the path, moves nothing.
//   - Each pairing has a token bucket of RelayRate bytes per second (burst:
//     one second's worth) and a total of RelayBytes. Over the rate, datagrams
//     are dropped (congestion control adapts); past the total, each end gets
//     a RelayEnded MACed under its own token, and the pairing is forgotten.
//   - A keepalive (no payload) from one of the ends keeps the pairing and
//     is echoed to its sender: clients on a direct path send one every
//     10 s so that their NAT lets the relay in when the direct path fails.
//   - Forwarding is one datagram out per datagram in, never larger, to an
//     address that asked for this pairing: the relay amplifies nothing.

// maxDatagram is the largest datagram the server reads: relayed datagrams
// are the largest it accepts, and one byte more tells a truncated read.
const maxDatagram = wire.MaxRelayDatagram

type relay struct {
	rate, burst float64
	maxBytes    int64
	max         int
	idle        time.Duration

	mu    sync.RWMutex
	pairs map[[16]byte]*relayPair
	order [][16]byte // offers in creation order, for eviction
}

type relayPair struct {
	mu       sync.Mutex
	ends     [2]netip.AddrPort // by role: initiator, responder
	secrets  [2][16]byte       // each end's relay token, by role
	tokens   float64
	last     time.Time // of the last forwarded datagram, or the offer
	bytes    int64
	relaying bool // at least one datagram forwarded
}

func newRelay(cfg Config) *relay {
	if cfg.NoRelay {
		return nil
	}
	return &relay{
		rate: float64(cfg.RelayRate), burst: max(float64(cfg.RelayRate), 256<<10),
		maxBytes: cfg.RelayBytes, max: cfg.MaxRelays, idle: cfg.RelayIdle,
		pairs: make(map[[16]byte]*relayPair),
	}
}

// offer remembers a new pairing between the initiator at a and the
// responder at b, whose relay tokens are secrets (by role).
func (r *relay) offer(id [16]byte, a, b netip.AddrPort, secrets [2][16]byte, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pairs[id]; ok {
		return
	}
	// One second chance each, at most: when every pairing is relaying,
	// the oldest goes all the same (without the bound this loop would
	// spin for ever, holding the lock every reader needs).
	for chances := len(r.order); len(r.pairs) >= r.max && len(r.order) > 0; {
		oldest := r.order[0]
		r.order = r.order[1:]
		if p := r.pairs[oldest]; p != nil && chances > 0 && p.active(now, r.idle) && len(r.order) > 0 {
			chances--
			r.order = append(r.order, oldest) // in use: a second chance
			continue
		}
		delete(r.pairs, oldest)
	}
	r.pairs[id] = &relayPair{ends: [2]netip.AddrPort{a, b}, secrets: secrets, tokens: r.burst, last: now}
	r.order = append(r.order, id)
}

func (p *relayPair) active(now time.Time, idle time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.relaying && now.Sub(p.last) < idle
}

type relayVerdict int

const (
	relayForward relayVerdict = iota
	relayUnknown              // no such pairing, or not from one of its ends
	relayOverRate
	relayQuotaReached
	relayKeepalive // from one of the ends, no payload: answered, not forwarded
)

// relayEnds is a pairing's two ends, for the notices when it ends.
type relayEnds struct {
	addrs   [2]netip.AddrPort
	secrets [2][16]byte
}

// route decides what happens to a relayed datagram of size n from from.
// Only the two recorded ends are heard, and only the other end is sent to.
func (r *relay) route(id [16]byte, from netip.AddrPort, n int, now time.Time) (to netip.AddrPort, ends relayEnds, v relayVerdict) {
	r.mu.RLock()
	p := r.pairs[id]
	r.mu.RUnlock()
	if p == nil {
		return to, ends, relayUnknown
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var side int
	switch from {
	case p.ends[0]:
		side = 0
	case p.ends[1]:
		side = 1
	default:
		return to, ends, relayUnknown
	}
	ends = relayEnds{p.ends, p.secrets}
	if n == wire.RelayHeaderLen {
		p.last = now
		return to, ends, relayKeepalive
	}
	p.tokens = min(r.burst, p.tokens+now.Sub(p.last).Seconds()*r.rate)
	p.last = now
	if p.bytes+int64(n) > r.maxBytes {
		return to, ends, relayQuotaReached
	}
	if r.rate > 0 && p.tokens < float64(n) {
		return to, ends, relayOverRate
	}
	p.tokens -= float64(n)
	p.bytes += int64(n)
	p.relaying = true
	return p.ends[1-side], ends, relayForward
}

// bind moves the end of m's role to addr, which proved with a cookie that
// it receives there, when m's MAC verifies under that end's token. An end
// never moves onto the other end's address: the relay would then send that
// address its own datagrams.
func (r *relay) bind(m *wire.RelayBind, addr netip.AddrPort, now time.Time) bool {
	r.mu.RLock()
	p := r.pairs[m.PairingID]
	r.mu.RUnlock()
	if p == nil || m.Role > wire.RoleResponder {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !m.Verify(p.secrets[m.Role]) || p.ends[1-m.Role] == addr {
		return false
	}
	p.ends[m.Role] = addr
	p.last = now
	return true
}

func (r *relay) forget(id [16]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pairs, id)
}

// sweep forgets pairings unused for the idle time, and reports how many
// are relaying now.
func (r *relay) sweep(now time.Time) (relaying int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.order[:0]
	for _, id := range r.order {
		p := r.pairs[id]
		if p == nil {
			continue
		}
		p.mu.Lock()
		idle, on := now.Sub(p.last) >= r.idle, p.relaying
		p.mu.Unlock()
		if idle {
			delete(r.pairs, id)
			continue
		}
		if on {
			relaying++
		}
		kept = append(kept, id)
	}
	clear(r.order[len(kept):])
	r.order = kept
	return relaying
}

func (r *relay) count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.pairs)
}

// isRelay reports a relayed datagram (rendezvous/wire/relay.go).
func isRelay(pkt []byte) bool { return len(pkt) > 0 && pkt[0] == wire.RelayType }

// handleRelay forwards one relayed datagram. pkt stays valid until the
// batch is flushed, before the next read.
func (s *Server) handleRelay(batch *outBatch, pkt []byte, from netip.AddrPort) {
	id, _, ok := wire.ParseRelay(pkt)
	if !ok || s.relay == nil {
		s.metrics.drop(dropRelayRefused)
		return
	}
	to, ends, verdict := s.relay.route(id, from, len(pkt), s.now())
	switch verdict {
	case relayForward:
		s.metrics.relayed(len(pkt))
		batch.forward(pkt, to)
	case relayKeepalive:
		batch.forward(pkt, from) // the same 17 bytes back: the NAT sees an answer
	case relayUnknown:
		s.metrics.drop(dropRelayRefused)
	case relayOverRate:
		s.metrics.drop(dropRelayRate)
	case relayQuotaReached:
		s.metrics.drop(dropRelayQuota)
		s.relay.forget(id)
		s.log.Info("relay byte cap reached; pairing no longer relayed", "a", ends.addrs[0].String(), "b", ends.addrs[1].String(), "cap", s.relay.maxBytes)
		reason := fmt.Sprintf("the relay's cap of %d bytes per session was reached", s.relay.maxBytes)
		for role, end := range ends.addrs {
			// Both addresses were proven by cookies (the finds, or a
			// RelayBind).
			(&sender{s: s, batch: batch, to: end, proven: true}).send(wire.NewRelayEnded(ends.secrets[role], id, reason))
		}
	}
}

// handleRelayBind moves one end of a relayed pairing to a proven address,
// when the bind is authentic, and answers with a relay keepalive, which
// tells the client it worked. Anything else is dropped without an answer.
func (s *Server) handleRelayBind(out *sender, m *wire.RelayBind, now time.Time) {
	if s.relay == nil || !s.relay.bind(m, out.to, now) {
		s.metrics.drop(dropRelayRefused)
		return
	}
	s.log.Debug("relay end moved", "role", m.Role.String(), "to", out.to.String())
	out.batch.add(wire.AppendRelayHeader(out.batch.buffer(), m.PairingID), out.to)
}
