// The receiving half: the receiver type (reassembly of the peer's stream,
// packet numbers received, the ack policy and the ACK frames it owes). The
// receive loop (recvloop.go) applies packets to it.

package stream

import (
	"io"
	"time"
)

// Ack policy. An ack is sent after ackEveryPackets ack-eliciting packets,
// or maxAckDelay after the first unacknowledged one, or at once for a
// reordered or duplicate packet or a FIN. Once a session has received
// decimateAfter packets (it is past its start), acks are decimated as
// Chromium's QUIC does: one per decimatedAckEvery packets, or after
// decimatedAckDelay. Each ack costs a datagram, so this cuts the per-packet
// cost of a bulk transfer; the sender's window is large by then, so the
// ack clock does not suffer.
const (
	ackEveryPackets   = 2
	decimateAfter     = 100
	decimatedAckEvery = 10
	decimatedAckDelay = time.Millisecond
	maxOOOSpans       = 4096 // out-of-order stream ranges held before dropping packets
)

// receiver is the receiving half: the reassembly ring (in-order bytes for
// the reader, out-of-order ranges held until the holes fill), the packet
// numbers received, and the ack policy: when an ACK frame is owed and what
// it says. It knows nothing of the Conn. Guarded by Conn.mu.
type receiver struct {
	buf      byteRing // received bytes from readOff on
	readOff  uint64   // next offset handed to Read
	nxt      uint64   // every byte below nxt has arrived
	ooo      spanSet
	finKnown bool
	finOff   uint64

	pns         spanSet // packet numbers received (kept: the ones we still report)
	hasPN       bool
	largestPN   uint64
	largestAt   time.Duration
	ackWanted   bool // an ACK frame is owed
	ackNow      bool // ... and should not wait for the delayed-ack timer
	elicited    int  // ack-eliciting packets since the last ACK frame
	elicitedAll uint64
	ackDeadline time.Duration
	advertised  uint64 // window in the last ACK frame sent

	ackScr [maxAckRanges]pnRange // appendAck's
}

// newReceiver returns a receiver with a receive buffer (and flow-control
// window) of bufSize bytes.
func newReceiver(bufSize int) receiver {
	return receiver{buf: newByteRing(bufSize), advertised: uint64(bufSize)}
}

// window is the flow-control limit we grant: offsets below it fit the ring.
func (r *receiver) window() uint64 { return r.readOff + uint64(r.buf.max) }

// hasRoom reports whether stream data [off, end) may be stored: it is
// inside the window, and when it leaves a hole, the holes are not too
// many already.
func (r *receiver) hasRoom(off, end uint64) bool {
	return end <= r.window() && !(off > r.nxt && r.ooo.len() >= maxOOOSpans)
}

// onEliciting applies the ack policy to an ack-eliciting packet: an ack is
// owed, at once or by the delayed-ack deadline. It reports whether the
// packet started the delayed-ack timer.
func (r *receiver) onEliciting(now time.Duration, reordered bool) (timerStarted bool) {
	r.ackWanted = true
	r.elicited++
	r.elicitedAll++
	every, delay := ackEveryPackets, maxAckDelay
	if r.elicitedAll > decimateAfter {
		every, delay = decimatedAckEvery, decimatedAckDelay
	}
	if r.elicited >= every || reordered {
		r.ackNow = true
	}
	if r.elicited == 1 {
		r.ackDeadline = now + delay
		return true
	}
	return false
}

// streamAck is the cumulative acknowledgement; the FIN takes one position.
func (r *receiver) streamAck() uint64 {
	if r.finKnown && r.nxt == r.finOff {
		return r.nxt + 1
	}
	return r.nxt
}

// allDelivered reports whether the peer's FIN arrived and Read was handed
// every byte before it.
func (r *receiver) allDelivered() bool { return r.finKnown && r.readOff == r.finOff }

// onPacketNumber records pn. It reports whether pn was seen before and
// whether it arrived out of order.
func (r *receiver) onPacketNumber(pn uint64, now time.Duration) (dup, reordered bool) {
	if r.pns.contains(pn) {
		return true, false
	}
	reordered = r.hasPN && pn != r.largestPN+1
	if !r.hasPN || pn > r.largestPN {
		r.hasPN, r.largestPN, r.largestAt = true, pn, now
	}
	r.pns.add(pn, pn+1)
	r.pns.dropOldest(maxAckRanges)
	return false, reordered
}

// onData stores a DATA frame. It reports whether in-order data became
// readable, and whether the frame was entirely old (a duplicate).
func (r *receiver) onData(off uint64, data []byte, fin bool) (readable, old bool) {
	end := off + uint64(len(data))
	newFin := fin && !r.finKnown
	if newFin {
		r.finKnown, r.finOff = true, end
	}
	if lim := r.window(); end > lim { // the peer overran our window: keep what fits
		if off >= lim {
			return false, false
		}
		data = data[:lim-off]
		end = lim
	}
	if end <= r.nxt {
		return newFin, !newFin
	}
	if off < r.nxt {
		data = data[r.nxt-off:]
		off = r.nxt
	}
	r.buf.fit(r.readOff, end)
	if !r.buf.holds(off, data) { // a placed body is already there
		r.buf.write(off, data)
	}
	if off > r.nxt {
		r.ooo.add(off, end)
		return false, false
	}
	r.nxt = end
	for len(r.ooo.s) > 0 && r.ooo.s[0].lo <= r.nxt {
		r.nxt = max(r.nxt, r.ooo.s[0].hi)
		r.ooo.s = append(r.ooo.s[:0], r.ooo.s[1:]...)
	}
	return true, false
}

// appendAck appends an ACK frame no longer than room, of the newest
// packet-number ranges that fit, with the cumulative stream ack and the
// window; nothing when no packet was received. The ack owed is then paid.
func (r *receiver) appendAck(b []byte, now time.Duration, room int) []byte {
	nr := 0
	for i := len(r.pns.s) - 1; i >= 0 && nr < maxAckRanges; i-- {
		if maxAckLen(nr+1) > room {
			break
		}
		r.ackScr[nr] = pnRange{r.pns.s[i].lo, r.pns.s[i].hi - 1}
		nr++
	}
	if nr == 0 {
		return b
	}
	delay := uint64(max(now-r.largestAt, 0) / time.Microsecond)
	r.advertised = r.window()
	b = appendAck(b, r.largestPN, delay, r.streamAck(), r.advertised, r.ackScr[:nr])
	r.ackWanted, r.ackNow, r.elicited = false, false, 0
	return b
}

// read copies in-order bytes into p.
func (r *receiver) read(p []byte) int {
	avail := r.nxt - r.readOff
	if avail == 0 {
		return 0
	}
	n := min(uint64(len(p)), avail)
	r.buf.read(r.readOff, p[:n])
	r.readOff += n
	return int(n)
}

// readErr is what Read returns when no byte is buffered.
func (r *receiver) readErr() error {
	if r.allDelivered() {
		return io.EOF
	}
	return nil
}
