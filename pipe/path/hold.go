package path

import "time"

// While Options.ProbeDelay (or the low-TTL lead) holds every datagram
// back, the secure layer's latest one is kept and goes out the moment the
// hold ends: the initiator's Hello then leaves with the first full probes
// instead of at its next retransmission (which may be 100 ms or more
// later), and a responder's answer to a Hello that came in during the
// hold is not lost. Earlier datagrams of the hold are lost, as ever: the
// handshake sends its current message again anyway.

// holdBack keeps b when the hold is on, and reports whether it did.
func (c *Conn) holdBack(b []byte) bool {
	if !c.holding.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.holding.Load() { // the hold ended meanwhile: b goes out now
		return false
	}
	c.held = append(c.held[:0], b...)
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
