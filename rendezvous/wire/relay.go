package wire

// The relay: when two paired clients find no direct path, each sends its
// session's datagrams to the server wrapped as
//
//	type      uint8     RelayType (0xF1)
//	pairingID [16]byte  from the FindResp that paired them
//	payload   ...       one datagram of the secure layer, opaque to the server
//
// and the server forwards the same bytes, unchanged, to the other client of
// that pairing. A relayed datagram without payload is a keepalive: the
// server answers it with the same 17 bytes and forwards nothing (a client
// on a direct path keeps its NAT mapping toward the server open with it, so
// that the relay can reach it the moment the direct path fails). The server reads nothing inside the payload: the session is
// encrypted and authenticated end to end (PROTOCOL.md, "The relay"). The
// type byte is outside the ranges of STUN (first byte 0x00-0x01), the
// rendezvous messages (0x50, "P2PC"), the secure layer (0xD0-0xE5) and the
// punch probes (0xF0).

// RelayType is the first byte of a relayed datagram.
const RelayType = 0xF1

// RelayHeaderLen is the size of the relay header.
const RelayHeaderLen = 1 + 16

// MaxRelayDatagram is the largest relayed datagram, header included, that a
// server forwards: what fits a 1500-byte Ethernet MTU in IPv4 and UDP
// headers, so that the two legs never fragment.
const MaxRelayDatagram = 1500 - 20 - 8

// MaxRelayPayload is the largest datagram a client can send through the
// relay.
const MaxRelayPayload = MaxRelayDatagram - RelayHeaderLen

// AppendRelayHeader appends the relay header for pairing id to b.
func AppendRelayHeader(b []byte, id [16]byte) []byte {
	b = append(b, RelayType)
	return append(b, id[:]...)
}

// ParseRelay splits a relayed datagram into its pairing id and payload
// (empty for a keepalive).
func ParseRelay(b []byte) (id [16]byte, payload []byte, ok bool) {
	if len(b) < RelayHeaderLen || len(b) > MaxRelayDatagram || b[0] != RelayType {
		return id, nil, false
	}
	return [16]byte(b[1:RelayHeaderLen]), b[RelayHeaderLen:], true
}
