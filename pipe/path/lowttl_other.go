//go:build !linux

package path

import "net/netip"

// writeLowTTL: per-datagram TTLs are Linux-only here.
func (c *Conn) writeLowTTL(b []byte, to netip.AddrPort) bool { return false }
