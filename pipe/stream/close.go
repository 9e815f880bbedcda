// The close handshake (see the package documentation, "Ending a
// session").

package stream

// ackCoversDoneLocked reports whether the ACK frame f acknowledges one of
// the last packets that carried our DONE.
func (c *Conn) ackCoversDoneLocked(f *frame) bool {
	for i := range min(c.doneSent, len(c.donePNs)) {
		pn := c.donePNs[i]
		for _, r := range f.ranges[:f.nRanges] {
			if pn >= r.lo && pn <= r.hi {
				return true
			}
		}
	}
	return false
}
