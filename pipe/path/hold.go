package path

import (
	"net/netip"
	"slices"
	"time"
)

// While Options.ProbeDelay (or the low-TTL lead) holds every datagram
// back, the secure layer's latest one is kept and goes out the moment the
// hold ends: the initiator's Hello then leaves with the first full probes
// instead of at its next retransmission (which may be 100 ms or more
// later), and a responder's answer to a Hello that came in during the
// hold is not lost. Earlier datagrams of the hold are lost, as ever: the
// handshake sends its current message again anyway.

// holdBack keeps b when the hold is on, and reports whether it did; b
// then goes at once to the addresses the hold is open for, if any.
func (c *Conn) holdBack(b []byte) bool {
	if !c.holding.Load() {
		return false
	}
	c.mu.Lock()
	if !c.holding.Load() { // the hold ended meanwhile: b goes out now
		c.mu.Unlock()
		return false
	}
	c.held = append(c.held[:0], b...)
	open := slices.Clone(c.holdOpen)
	c.mu.Unlock()
	for _, to := range open {
		_ = c.write(b, to)
	}
	return true
}

// sendHeld ends the hold, at holdUntil, and sends the datagram kept
// during it.
func (c *Conn) sendHeld() {
	if d := time.Until(c.holdUntil); d > 0 {
		time.Sleep(d) // a timer may fire a hair early on a coarse clock
	}
	c.mu.Lock()
	c.holding.Store(false)
	b := c.held
	c.held = nil
	c.mu.Unlock()
	if b != nil {
		_ = c.Send(b) // on a closed Conn: nothing, as any send
	}
}

// heldBackFrom reports whether the hold keeps datagrams to to back: it is
// on, and not open for to.
func (c *Conn) heldBackFrom(to netip.AddrPort) bool {
	if !c.holding.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holding.Load() && !slices.Contains(c.holdOpen, to)
}

// openHold ends the hold for from, where a probe of the peer came from,
// if it is an address we may send to (a candidate, or one learned from a
// probe): it gets the kept datagram and a probe now, within its
// anti-amplification budget (the datagram first: to an address learned
// from one probe the budget may not cover both).
func (c *Conn) openHold(from netip.AddrPort) {
	if !c.holding.Load() || !c.isKnown(from) {
		return
	}
	c.mu.Lock()
	if !c.holding.Load() || slices.Contains(c.holdOpen, from) || len(c.holdOpen) >= MaxCandidates {
		c.mu.Unlock()
		return
	}
	c.holdOpen = append(c.holdOpen, from)
	b := slices.Clone(c.held)
	c.mu.Unlock()
	c.log.Debug("hold: a probe of the peer came, so its NAT is open toward us: sending to it now", "addr", from.String())
	if b != nil {
		_ = c.write(b, from)
	}
	_ = c.write(c.probe(), from)
}
