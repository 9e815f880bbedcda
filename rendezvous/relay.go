package rendezvous

import "net/netip"

// maxDatagram is the largest datagram the server reads.
const maxDatagram = 2048

type relay struct{}

func isRelay(pkt []byte) bool { return false }

func (s *Server) handleRelay(batch *outBatch, pkt []byte, from netip.AddrPort) {}
