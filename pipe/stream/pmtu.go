// Path MTU discovery, in the spirit of RFC 8899 (DPLPMTUD).
//
// A Conn starts with the Transport's MaxPayload, which every path carries.
// When the Transport can carry more (LargeTransport), the Conn probes
// upward once the peer's first ack shows that its end is running:
//
//   - A probe is one packet holding a PING frame padded with PADDING to the
//     size tried. It carries no stream data, so losing it loses nothing, and
//     it is outside congestion control: its loss says nothing of congestion.
//   - One probe is outstanding at a time. When the peer acknowledges it,
//     its size becomes the Conn's packet size for the rest of the session.
//   - A probe declared lost (by the usual loss detection) is tried again,
//     up to maxProbes times per size; then the next smaller candidate is
//     tried. Candidates, largest first: the Transport's limit (64 KiB
//     datagrams: loopback), 16 KiB, 8 KiB (jumbo frames), 1400 bytes
//     (Ethernet, with room for IPv6 and a tunnel).
//
// The path layer sets the don't-fragment bit, so a size the path cannot
// carry is lost rather than fragmented.
//
// Conn methods that serve path MTU discovery live here; the sender tells
// them of acknowledged and lost probes and of repeated probe timeouts
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

// maxProbes is how often one size is tried before a smaller one (RFC 8899's
// MAX_PROBES).
const maxProbes = 3

// pmtuState is the prober. Guarded by Conn.mu.
type pmtuState struct {
	candidates []int // sizes still to try, largest first
	tries      int   // probes of candidates[0] declared lost
	probing    bool  // a probe is outstanding
	probePN    uint64
}

func newPMTUState(base, limit int) pmtuState {
	var p pmtuState
	for _, size := range []int{limit, 16 << 10, 8 << 10, 1400} {
		if size > base && size <= limit && (len(p.candidates) == 0 || size < p.candidates[len(p.candidates)-1]) {
			p.candidates = append(p.candidates, size)
		}
	}
	return p
}

// due reports whether a probe should go out now.
func (p *pmtuState) due(s *sender) bool {
	return len(p.candidates) > 0 && !p.probing && s.hasAcked
}

// buildMTUProbeLocked builds a probe of the next candidate size into b.
func (c *Conn) buildMTUProbeLocked(b []byte, now time.Duration) []byte {
	s := &c.snd
	size := c.pmtu.candidates[0]
	c.pmtu.probing, c.pmtu.probePN = true, s.nextPN
	c.log.Debug("stream: path MTU probe sent", "payload", size, "pn", s.nextPN)
	b = binary.AppendUvarint(b, s.nextPN)
	b = append(b, framePing)
	hdr := len(b)
	b = b[:size]
	clear(b[hdr:]) // PADDING frames are zero bytes
	c.lastSent = now
	s.recordProbe(s.ring.push(), now, size)
	return b
}

func (c *Conn) onProbeAckedLocked(pn uint64) {
	if !c.pmtu.probing || pn != c.pmtu.probePN {
		return
	}
	size := c.pmtu.candidates[0]
	c.pmtu = pmtuState{} // done: the largest candidate left got through
	if size > c.maxPayload {
		c.maxPayload = size
		c.snd.cc.setMSS(size)
		c.log.Debug("stream: path MTU probe acknowledged", "payload", size)
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

// checkPathLocked starts path MTU discovery over when the path changed: the
// new path may carry less than the old one (a relay takes at most about
// 1450 bytes, a loopback path 64 KiB), and waiting for repeated probe
// timeouts to show it would stall the session for seconds.
func (c *Conn) checkPathLocked() {
	pt, ok := c.tr.(PathTransport)
	if !ok {
		return
	}
	if n := pt.PathSwitches(); n != c.pathSwitches {
		c.pathSwitches = n
		c.log.Debug("stream: the path changed; back to the base packet size")
		c.onRepeatedPTOLocked()
	}
}

func (c *Conn) onProbeLostLocked(pn uint64) {
	if !c.pmtu.probing || pn != c.pmtu.probePN {
		return
	}
	c.pmtu.probing = false
	c.pmtu.tries++
	if c.pmtu.tries >= maxProbes {
		c.log.Debug("stream: path MTU probes lost", "payload", c.pmtu.candidates[0])
		c.pmtu.candidates, c.pmtu.tries = c.pmtu.candidates[1:], 0
	}
}
