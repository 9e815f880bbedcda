package path

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// MaxCandidates bounds the addresses probed, learned ones included: the
// peer's observed address and the wire.MaxCandidates it offered leave
// room for those learned from its probes (pipe/meet.go checks this).
const MaxCandidates = 16

// LocalCandidates lists this host's addresses with port: every up,
// non-loopback interface address (IPv4 and global IPv6), and loopback too
// when withLoopback (the server and peer are on this machine); IPv4 first,
// and no more than a Find message carries (wire.MaxCandidates).
func LocalCandidates(port uint16, withLoopback bool) []netip.AddrPort {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			switch {
			case ip.IsLoopback() && !withLoopback:
				continue
			case ip.Is6() && (ip.IsLinkLocalUnicast() || !ip.IsGlobalUnicast() && !ip.IsLoopback()):
				continue // link-local needs a zone the peer cannot know
			case ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified():
				continue
			}
			out = append(out, netip.AddrPortFrom(ip, port))
		}
	}
	// IPv4 first: it is what most NATs and most peers have.
	slices.SortStableFunc(out, func(a, b netip.AddrPort) int {
		if a.Addr().Is4() == b.Addr().Is4() {
			return 0
		}
		if a.Addr().Is4() {
			return -1
		}
		return 1
	})
	if len(out) > wire.MaxCandidates {
		out = out[:wire.MaxCandidates]
	}
	return out
}

// addCandidateLocked adds a to the addresses probed, unless it is none to
// send to, is there already, or would be one too many; it reports whether
// it did. The caller holds mu (or, in New, is the only one to see c).
func (c *Conn) addCandidateLocked(a netip.AddrPort) bool {
	a = udpio.Unmap(a)
	if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() || slices.Contains(c.candidates, a) || len(c.candidates) >= MaxCandidates {
		return false
	}
	c.candidates = append(c.candidates, a)
	return true
}

func (c *Conn) handleProbe(p []byte, from netip.AddrPort) {
	if len(p) != probeLen || !bytes.Equal(p[1:17], c.pairingID[:]) || !allZero(p[17:]) {
		c.count(func(s *Stats) { s.Dropped++ })
		return
	}
	c.heard()
	// Anyone can claim this address by spoofing a probe: what we send there
	// is bounded by what comes from it until it authenticates (spend).
	isNew := c.learn(from, len(p))
	known := c.isKnown(from)
	c.mu.Lock()
	c.stats.ProbesReceived++
	confirmed := c.peer.IsValid()
	relaying := confirmed && c.peer == c.server
	learned := (!confirmed || relaying) && c.addCandidateLocked(from)
	if relaying && known {
		// A direct path may work: try it (see route).
		c.directHint, c.hintAt = from, time.Now()
	}
	c.mu.Unlock()
	if learned {
		c.log.Debug("learned a peer candidate from its probe", "addr", from.String())
	}
	if c.holding.Load() && !relaying {
		c.openHold(from) // sends our probe there, among others
		return
	}
	if !confirmed && isNew {
		// Open our NAT toward it, and tell it about us, once: the punch
		// routine probes every candidate anyway, and answering every
		// probe would make two unconfirmed sides answer each other's
		// answers forever. (While relaying, both sides probe every second
		// anyway.)
		c.write(c.probe(), from)
	}
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}
