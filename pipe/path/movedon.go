package path

import (
	"bytes"
	"time"
)

// The moved-on notice: a side whose punch attempt found no path, and that
// meets the peer again from a new socket, tells the peer so through the
// relay of the attempt's pairing (the server forwards it to the peer's
// address of that pairing, which the peer's NAT lets in, as it answers the
// peer's own rendezvous traffic there): a Probe, which is never relayed
// otherwise. The peer's attempt, which may have heard nothing (its router
// dropped our probes in silence, where ours answered its probes with ICMP),
// ends at once instead of waiting out its own timeout, and both meet again
// together. Like an ICMP error it is not authenticated, and like one it
// can only end an attempt early: it moves no path and reaches no handshake
// (PROTOCOL.md 3.7.1).

// SendMovedOn sends the moved-on notice through the relay, when the
// server offered one for this pairing; a few copies, 5 ms apart, as the
// notice is a single datagram that may be lost.
func (c *Conn) SendMovedOn() {
	if !c.relayUsable() {
		return
	}
	for i := range movedOnCopies {
		if i > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		if c.sendRelay(c.probe()) != nil {
			return
		}
	}
}

// movedOnCopies: how many times SendMovedOn sends its notice.
const movedOnCopies = 2

// noteMovedOn handles a Probe that came through the relay: the peer's
// moved-on notice when it carries our pairing id.
func (c *Conn) noteMovedOn(p []byte) {
	if len(p) != probeLen || !bytes.Equal(p[1:17], c.pairingID[:]) || !allZero(p[17:]) {
		c.count(func(s *Stats) { s.Dropped++ })
		return
	}
	c.movedOn.Do(func() { close(c.movedOnC) })
}

// MovedOn is closed when the peer's moved-on notice came through the relay:
// it left this attempt for another.
func (c *Conn) MovedOn() <-chan struct{} { return c.movedOnC }
