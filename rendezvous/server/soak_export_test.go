package server

// What the soak test (soak_test.go) samples of a running server: the size
// of every table it keeps, so that each can be shown to stay bounded by its
// TTL and to empty once the load stops. Only this package's tests see it.

// SoakSizes is the size of each of a server's tables at one moment.
type SoakSizes struct {
	Pending    int // finds waiting for their peer
	Settled    int // matched and withdrawn entries, kept for re-sends
	PendingIPs int // client IPs with pending finds (the per-IP caps)
	Relays     int // pairings the relay remembers
	RelayOrder int // the relay's eviction queue
	Buckets    int // rate-limit buckets
	Registered int // registrations in the store
	Queued     int // registrations waiting for the disk
}

// SoakSizes reads the sizes, each under its table's own lock.
func (s *Server) SoakSizes() SoakSizes {
	var z SoakSizes
	z.Pending, z.Settled = s.table.counts()
	s.table.mu.Lock()
	z.PendingIPs = len(s.table.perIP)
	s.table.mu.Unlock()
	if s.relay != nil {
		s.relay.mu.RLock()
		z.Relays, z.RelayOrder = len(s.relay.pairs), len(s.relay.order)
		s.relay.mu.RUnlock()
	}
	s.limiter.mu.Lock()
	z.Buckets = len(s.limiter.buckets)
	s.limiter.mu.Unlock()
	z.Registered, _ = s.store.Count()
	z.Queued = len(s.registers)
	return z
}
