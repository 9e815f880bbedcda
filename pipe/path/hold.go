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
// then goes to the address the hold is open for, if any, at once.
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
	c.mu.Unlock()
	if open := c.holdOpen.Load(); open != nil {
		_ = c.write(b, *open)
	}
	return true
}

// heldBackFrom reports whether the hold keeps datagrams to to back: it is
// on, and not open for to.
func (c *Conn) heldBackFrom(to netip.AddrPort) bool {
	if !c.holding.Load() {
		return false
	}
	open := c.holdOpen.Load()
	return open == nil || *open != to
}

// openHold ends the hold for from, where a probe of the peer came from
// (the first such address only): it gets a probe and the kept datagram
// now.
func (c *Conn) openHold(from netip.AddrPort) {
	if !c.holding.Load() || !c.holdOpen.CompareAndSwap(nil, &from) {
		return
	}
	c.log.Debug("hold: a probe of the peer came, so its NAT is open toward us: sending to it now", "addr", from.String())
	_ = c.write(c.probe(), from)
	c.mu.Lock()
	b := slices.Clone(c.held)
	c.mu.Unlock()
	if b != nil {
		_ = c.write(b, from)
	}
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
