// Package stream turns the authenticated datagrams of a Transport into a
// reliable, ordered, flow- and congestion-controlled byte stream in each
// direction, with TCP-like half-close.
//
// Reliability is selective repeat, QUIC style (RFC 9000/9002): packet
// numbers are never reused, acks carry packet-number ranges, losses are
// detected by a packet threshold (3) and a time threshold (9/8 RTT) plus a
// probe timeout, and lost data is sent again in new packets. Congestion
// control is BBR-like (bbr.go) and paced. Flow control: each ack carries
// the receive window, so the sender never has more than RecvBuffer bytes
// beyond what the peer's reader consumed, and Write blocks while the
// SendBuffer is full: memory is bounded on both sides.
//
// The package owns everything between the secure layer's datagrams
// (pipe/secure, behind the Transport interfaces) and the caller's byte
// stream: the wire format, reliability, flow and congestion control, path
// MTU discovery and the end of a session. It imports only the standard
// library and internal/textsafe (for the peer's abort reason), and nothing
// of the layers around it.
//
// # Layout
//
// Each file opens with what it holds. The Conn's methods live with the
// concern they serve:
//
//   - conn.go: the Conn and its API (open, read, write, close, stats).
//   - recvloop.go: the receive loop and packet handling.
//   - sendloop.go: the send loop and packet production.
//   - close.go: the close handshake, a small state machine.
//   - pmtu.go: path MTU discovery.
//
// and the parts the Conn holds, each testable without one: sender.go (the
// sending half: packet records, loss detection, probe timeout, pacing),
// receiver.go (the receiving half: reassembly and the ack policy), bbr.go
// (congestion control), rtt.go (the RTT estimate), ranges.go (span sets
// and byte rings) and wire.go (the wire format, which it opens with).
//
// # Ending a session
//
// A side is complete when its own data and FIN were acknowledged, the
// peer's FIN arrived, and every byte before it was handed to Read. The
// peer's acknowledgements only say that our bytes reached its buffer; only
// its DONE says that it handed them all to its reader. So:
//
//   - A complete side sends DONE, again after a probe timeout (PTO),
//     doubling up to the keepalive interval, and at once whenever the peer
//     sends an ack-eliciting packet (a retransmission shows it has not seen
//     DONE yet). DONE is ack-eliciting.
//   - DONE also acknowledges the whole stream (the peer is complete, so it
//     holds all our data and FIN), so a side whose last ack was lost
//     becomes complete on the peer's DONE.
//   - A complete side finishes, cleanly, once it has the peer's DONE and
//     the peer acknowledged a packet that carried ours. With the peer's
//     DONE but no acknowledgement of ours, it lingers for 3 × PTO,
//     extended to 3 × PTO after each packet from the peer but never past
//     maxLinger (3 s), answering with DONE, and then finishes cleanly
//     anyway: the peer confirmed that it has everything, and only lacks
//     our word that we do.
//   - A complete side without the peer's DONE waits for it as long as the
//     peer is alive (its acknowledgements of our DONEs and keepalives keep
//     the idle timeout away: a peer whose stdout drains slowly is not
//     dead). When the peer falls silent first, the Conn fails with
//     ErrUnconfirmedEnd (which matches ErrIdleTimeout): everything of ours
//     reached the peer, but it never said it wrote it out.
//
// Finishing this way is a clean end: Done is closed, Err returns nil and
// Shutdown returns nil. This replaces TCP's TIME_WAIT guesswork: a clean
// end means every byte was delivered to the other side's reader and
// acknowledged, both ways.
package stream
