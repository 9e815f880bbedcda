package path

import "net/netip"

// Until a packet from an address authenticates, what we send there is
// bounded, as QUIC bounds a server before address validation (RFC 9000
// section 8.1): at most ampFactor times the bytes received from it, plus,
// for a candidate the rendezvous server gave (we must send first to punch),
// a first allowance of givenAllowance bytes (some 25 probes and the Hello's
// first copies). An address learned from a probe, which anyone can claim
// by spoofing a probe's source, has no allowance; an address we know
// nothing of gets nothing at all. So neither a spoofed probe nor a
// malicious peer's or server's list of candidates makes a path a
// reflector: per address named, at most givenAllowance bytes, then three
// times what came back.
const (
	ampFactor      = 3
	givenAllowance = 4096
)

// ampBudget is what came from and went to an address that has not proven
// itself yet (proven: no bound).
type ampBudget struct {
	allowance, received, sent int
	proven                    bool
}

// knowGiven makes a a known address with the first allowance of a
// candidate the server gave.
func (c *Conn) knowGiven(a netip.AddrPort) {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	if c.known[a] == nil {
		c.known[a] = &ampBudget{allowance: givenAllowance}
	}
}

// learn makes a, the source of an n-byte probe, a known address (without
// allowance) or adds n to what came from it. It reports whether a was new.
// At most 2*MaxCandidates addresses are known; past that a probe from a new
// one is not learned.
func (c *Conn) learn(a netip.AddrPort, n int) (isNew bool) {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	b := c.known[a]
	if b == nil {
		if len(c.known) >= 2*MaxCandidates {
			return false
		}
		b = &ampBudget{}
		c.known[a] = b
		isNew = true
	}
	b.received += n
	return isNew
}

// isKnown reports whether a is one of the addresses we may send to.
func (c *Conn) isKnown(a netip.AddrPort) bool {
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	return c.known[a] != nil
}

// receivedFrom adds n bytes that came from a to its budget.
func (c *Conn) receivedFrom(a netip.AddrPort, n int) {
	c.ampMu.Lock()
	if b := c.known[a]; b != nil {
		b.received += n
	}
	c.ampMu.Unlock()
}

// spend reports whether n more bytes may go to a, and counts them: always
// to the server and to a proven address, within the budget to a known one,
// never to an address we know nothing of.
func (c *Conn) spend(a netip.AddrPort, n int) bool {
	if a == c.server {
		return true
	}
	if p := c.provenPeer.Load(); p != nil && *p == a {
		return true // the data path's case: no lock
	}
	c.ampMu.Lock()
	defer c.ampMu.Unlock()
	b := c.known[a]
	switch {
	case b == nil:
		c.ampLimited.Add(1)
		return false
	case b.proven:
		return true
	case b.sent+n > b.allowance+ampFactor*b.received:
		c.ampLimited.Add(1)
		return false
	}
	b.sent += n
	return true
}

// proven lifts the bound on a: a packet from it authenticated.
func (c *Conn) proven(a netip.AddrPort) {
	c.ampMu.Lock()
	if b := c.known[a]; b != nil {
		b.proven = true
	} else {
		c.known[a] = &ampBudget{proven: true}
	}
	c.ampMu.Unlock()
	c.provenPeer.Store(&a)
}
