// Path MTU discovery, in the spirit of RFC 8899 (DPLPMTUD).
//
// A Conn starts with the Transport's MaxPayload, which every path carries.
// When the Transport can carry more (LargeTransport), the Conn probes for
// the largest size its path carries, at once: the first packets a side
// sends once it has data are its probes, so that the data reaches full
// packet size one round trip after it starts, not several. A side that
// only acknowledges never probes.
//
//   - A probe is one packet holding a PING frame padded with PADDING to the
//     size tried. It carries no stream data, so losing it loses nothing, and
//     it is outside congestion control: its loss says nothing of congestion.
//   - Candidates, largest first: the Transport's limit (64 KiB datagrams:
//     loopback), 16 KiB, 8 KiB (jumbo frames), 1400 bytes (Ethernet, with
//     room for IPv6 and a tunnel). One probe of each goes out in the first
//     flight, so the search takes one round trip instead of one per size
//     tried. A size larger than the local interface's MTU never leaves the
//     host (the send fails), so on the usual paths only the smallest costs
//     bytes on the wire.
//   - When the peer acknowledges a probe, its size becomes the Conn's packet
//     size if it is larger than the current one; smaller candidates are then
//     dropped, and probing ends when none is left.
//   - A probe declared lost (by the usual loss detection) is sent again, up
//     to maxProbes times per size (RFC 8899's MAX_PROBES); then that size is
//     dropped. Probes lost before the peer's first ack do not count: the
//     peer's end may not have been running yet.
//
// The path layer sets the don't-fragment bit, so a size the path cannot
// carry is lost rather than fragmented.
//
// Conn methods that serve path MTU discovery live here, with the start
// over on a change of path (checkPathLocked); the sender tells them of
// acknowledged and lost probes and of repeated probe timeouts
// (senderHooks).

package stream

import (
	"encoding/binary"
	"time"
)

// LargeTransport is a Transport that can carry payloads above MaxPayload
// on some paths; the Conn probes for the largest its path carries.
type LargeTransport interface {
	Transport
	PayloadLimit() int // the largest payload Send and SendBatch accept
}

// maxProbes is how often one size is tried before it is given up (RFC
// 8899's MAX_PROBES).
const maxProbes = 3

// pmtuProbe is one candidate size and its probe.
type pmtuProbe struct {
	size   int
	tries  int  // probes of this size declared lost that count
	out    bool // a probe of this size is outstanding...
	pn     uint64
	counts bool // ...and went out after the peer's first ack
}

// pmtuState is the prober. Guarded by Conn.mu.
type pmtuState struct {
	cands []pmtuProbe // sizes above the packet size still to try, largest first
}

func newPMTUState(base, limit int) pmtuState {
	var p pmtuState
	for _, size := range []int{limit, 16 << 10, 8 << 10, 1400} {
		if size > base && size <= limit && (len(p.cands) == 0 || size < p.cands[len(p.cands)-1].size) {
			p.cands = append(p.cands, pmtuProbe{size: size})
		}
	}
	return p
}

// largest is the largest size still to try, or 0.
func (p *pmtuState) largest() int {
	if len(p.cands) == 0 {
		return 0
	}
	return p.cands[0].size
}

// due returns the index of the candidate whose probe should go out now,
// or -1.
func (p *pmtuState) due() int {
	for i := range p.cands {
		if !p.cands[i].out {
			return i
		}
	}
	return -1
}

// find returns the index of the candidate whose outstanding probe is pn,
// or -1.
func (p *pmtuState) find(pn uint64) int {
	for i := range p.cands {
		if p.cands[i].out && p.cands[i].pn == pn {
			return i
		}
	}
	return -1
}

// dropUpTo drops the candidates no larger than size.
func (p *pmtuState) dropUpTo(size int) {
	k := 0
	for _, c := range p.cands {
		if c.size > size {
			p.cands[k] = c
			k++
		}
	}
	p.cands = p.cands[:k]
}

// buildMTUProbeLocked builds a probe of candidate i into b.
func (c *Conn) buildMTUProbeLocked(b []byte, now time.Duration, i int) []byte {
	s := &c.snd
	p := &c.pmtu.cands[i]
	p.out, p.pn, p.counts = true, s.nextPN, s.hasAcked
	c.log.Debug("stream: path MTU probe sent", "payload", p.size, "pn", s.nextPN, "t", now)
	b = binary.AppendUvarint(b, s.nextPN)
	b = append(b, framePing)
	hdr := len(b)
	b = b[:p.size]
	clear(b[hdr:]) // PADDING frames are zero bytes
	c.lastSent = now
	s.recordProbe(s.ring.push(), now, p.size)
	return b
}

func (c *Conn) onProbeAckedLocked(pn uint64) {
	i := c.pmtu.find(pn)
	if i < 0 {
		return
	}
	if size := c.pmtu.cands[i].size; size > c.maxPayload {
		c.maxPayload = size
		c.snd.cc.setMSS(size)
		c.log.Debug("stream: path MTU probe acknowledged", "payload", size, "t", c.now())
	}
	c.pmtu.dropUpTo(c.maxPayload) // they could only make packets smaller
}

func (c *Conn) onProbeLostLocked(pn uint64) {
	i := c.pmtu.find(pn)
	if i < 0 {
		return
	}
	p := &c.pmtu.cands[i]
	p.out = false
	if p.counts {
		p.tries++
	}
	if p.tries >= maxProbes {
		c.log.Debug("stream: path MTU probes lost", "payload", p.size)
		c.pmtu.cands = append(c.pmtu.cands[:i], c.pmtu.cands[i+1:]...)
	}
}

// onRepeatedPTOLocked is black-hole detection (RFC 8899 section 4.3): probe
// timeouts firing again and again while packets are larger than the base
// size may mean the path's MTU shrank (a route change, a tunnel), and every
// large packet, retransmissions included, is now lost. Fall back to the base
// size, which every path carries; the lost data goes out again in small
// packets. Then probe again from the top: if the timeouts were only a delay
// spike, the path soon gets its large packets back; if the MTU did shrink,
// the probes show which size still gets through.
func (c *Conn) onRepeatedPTOLocked() {
	if c.maxPayload <= c.baseMaxPayload {
		return
	}
	c.log.Debug("stream: large packets keep getting lost; back to the base packet size", "was", c.maxPayload, "now", c.baseMaxPayload)
	c.maxPayload = c.baseMaxPayload
	c.snd.cc.setMSS(c.baseMaxPayload)
	c.pmtu = newPMTUState(c.baseMaxPayload, c.payloadLimit)
}

// PathTransport is a Transport that tells when its datagrams start taking
// another path (the peer roamed, or the session moved to or from a relay):
// PathSwitches counts the moves.
type PathTransport interface {
	PathSwitches() uint64
}

// checkPathLocked starts over when the path changed (RFC 9000 section
// 9.4): path MTU discovery, because the new path may carry less than the
// old one (a relay takes at most about 1450 bytes, a loopback path 64 KiB),
// and waiting for repeated probe timeouts to show it would stall the
// session for seconds; and congestion control and the RTT estimate,
// because the old path's model would hold a direct path to a relay's
// policed rate for seconds, or send a fast path's window into a slow one.
func (c *Conn) checkPathLocked() {
	pt, ok := c.tr.(PathTransport)
	if !ok {
		return
	}
	if n := pt.PathSwitches(); n != c.pathSwitches {
		c.pathSwitches = n
		c.log.Debug("stream: the path changed; packet size, congestion control and RTT estimate start over", "t", c.now())
		c.maxPayload = c.baseMaxPayload
		c.snd.onPathChange(c.baseMaxPayload)
		c.pmtu = newPMTUState(c.baseMaxPayload, c.payloadLimit)
	}
}
