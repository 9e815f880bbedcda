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
	if c.holdUntil.IsZero() || !time.Now().Before(c.holdUntil) {
		return false
	}
	c.mu.Lock()
	c.held = append(c.held[:0], b...)
	c.mu.Unlock()
	return true
}

// sendHeld sends the datagram kept during the hold, at its end.
func (c *Conn) sendHeld() {
	if d := time.Until(c.holdUntil); d > 0 {
		time.Sleep(d) // a timer may fire a hair early on a coarse clock
	}
	c.mu.Lock()
	b := c.held
	c.held = nil
	c.mu.Unlock()
	if b != nil {
		_ = c.Send(b) // on a closed Conn: nothing, as any send
	}
}
