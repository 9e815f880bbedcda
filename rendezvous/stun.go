package rendezvous

import "net/netip"

// Placeholder until the STUN service lands.
type stunService struct{}

func isSTUN(pkt []byte) bool { return false }

func (s *Server) handleSTUN(batch *outBatch, pkt []byte, from netip.AddrPort) {}
