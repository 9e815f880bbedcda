// The close handshake (see the package documentation, "Ending a
// session"): its states and transitions, and the Conn methods that drive
// it from the receive loop (the peer's DONE, acks of ours) and the send
// loop (becoming complete, sending DONE, finishing).

package stream

import "time"

// closeState is where a Conn stands in the close handshake. A side is
// complete when its own data and FIN were acknowledged, the peer's FIN
// arrived, and every byte before it was handed to Read; its DONE says so.
//
//	closeOpen ────becomeComplete───▶ closeComplete ──onAck──▶ closeAcked
//	    │                                  │                       │
//	onPeerDone                        onPeerDone              onPeerDone
//	    ▼                                  ▼                       ▼
//	closePeerDone ──becomeComplete──▶ closeLinger ────onAck──▶ closeConfirmed
//
// (onAck: an ACK frame that acknowledges a packet that carried our DONE.)
//
// In closeConfirmed, and in closeLinger once lingerEnd passed, the Conn
// finishes cleanly (after acknowledging the peer's DONE). The Conn's
// terminal state (Conn.finished) is apart from these: a failure reaches it
// from any state.
type closeState uint8

const (
	closeOpen      closeState = iota // not complete; no DONE from the peer
	closePeerDone                    // the peer's DONE arrived; we are not complete yet
	closeComplete                    // complete: we send DONE and wait for the peer's
	closeAcked                       // complete, the peer acknowledged our DONE; we wait for its DONE
	closeLinger                      // complete with the peer's DONE, ours not acknowledged: linger until lingerEnd
	closeConfirmed                   // complete, with the peer's DONE and its ack of ours: finish
)

var closeStateNames = [...]string{"open", "peer-done", "complete", "acked", "linger", "confirmed"}

func (s closeState) String() string { return closeStateNames[s] }

// closeHandshake is the close handshake's state and timers. Its methods
// are the transitions; each reports whether it applied, and one that does
// not apply in the current state changes nothing. Guarded by Conn.mu.
type closeHandshake struct {
	state      closeState
	completeAt time.Duration
	lingerEnd  time.Duration // with the peer's DONE: finish by then even without an ack of ours
	doneNext   time.Duration // when our DONE goes out next
	doneEvery  time.Duration // DONE's resend interval, doubling up to the keepalive
	doneSent   int
	donePNs    [8]uint64 // the last packets that carried our DONE
}

// lingerPTOs is how many of our probe timeouts a side that has the peer's
// DONE, but no ack of its own, stays to answer the peer's resent DONE. The
// peer resends after its own PTO, then doubling, and its PTO may be larger
// than ours (a loaded machine measures more RTT variance): three of ours
// were sometimes less than one of the peer's, which then waited for its
// idle timeout and ended unconfirmed after a clean transfer. Lingering
// costs nothing when the peer acknowledges our DONE: that ends it at once.
const lingerPTOs = 8

// closeAction is what the send loop owes the close handshake now.
type closeAction uint8

const (
	closeNothing  closeAction = iota
	closeSendDone             // send our DONE
	closeFinish               // finish cleanly
)

// complete reports whether we are complete.
func (h *closeHandshake) complete() bool { return h.state >= closeComplete }

// peerDone reports whether the peer's DONE arrived.
func (h *closeHandshake) peerDone() bool {
	return h.state == closePeerDone || h.state >= closeLinger
}

// needPeer reports whether we still need the peer: until we are complete
// and have its DONE.
func (h *closeHandshake) needPeer() bool { return h.state < closeLinger }

// becomeComplete is the transition on becoming complete, at now with the
// probe timeout pto: DONE goes out at once, then after pto, doubling.
func (h *closeHandshake) becomeComplete(now, pto time.Duration) bool {
	switch h.state {
	case closeOpen:
		h.state = closeComplete
	case closePeerDone:
		h.state = closeLinger
	default:
		return false
	}
	h.completeAt = now
	h.lingerEnd = now + min(lingerPTOs*pto, maxLinger)
	h.doneNext, h.doneEvery = now, pto
	return true
}

// onPeerDone is the transition on the peer's first DONE. A complete side
// answers at once and lingers from now on.
func (h *closeHandshake) onPeerDone(now, pto time.Duration) bool {
	switch h.state {
	case closeOpen:
		h.state = closePeerDone
		return true
	case closeComplete:
		h.state = closeLinger
	case closeAcked:
		h.state = closeConfirmed
	default:
		return false
	}
	h.lingerEnd = now + min(lingerPTOs*pto, maxLinger)
	h.doneNext = now // answer at once
	return true
}

// onAck is the transition on an ACK frame f of the peer's that
// acknowledges one of the last packets that carried our DONE.
func (h *closeHandshake) onAck(f *frame) bool {
	var next closeState
	switch h.state {
	case closeComplete:
		next = closeAcked
	case closeLinger:
		next = closeConfirmed
	default:
		return false
	}
	if !h.ackCoversDone(f) {
		return false
	}
	h.state = next
	return true
}

// ackCoversDone reports whether the ACK frame f acknowledges one of the
// last packets that carried our DONE.
func (h *closeHandshake) ackCoversDone(f *frame) bool {
	for i := range min(h.doneSent, len(h.donePNs)) {
		pn := h.donePNs[i]
		for _, r := range f.ranges[:f.nRanges] {
			if pn >= r.lo && pn <= r.hi {
				return true
			}
		}
	}
	return false
}

// peerStillSending notes an ack-eliciting packet from the peer once we
// are complete: it has not seen our DONE (which also acknowledges
// everything). Answer with DONE now, and, lingering with its DONE, stay
// around while it keeps trying, within maxLinger of becoming complete. It
// reports whether it applied (we are complete).
func (h *closeHandshake) peerStillSending(now, pto time.Duration) bool {
	if !h.complete() {
		return false
	}
	h.doneNext = now
	if h.peerDone() {
		h.lingerEnd = min(max(h.lingerEnd, now+lingerPTOs*pto), h.completeAt+maxLinger)
	}
	return true
}

// next says what the send loop owes the handshake at now: to finish, or
// to send our DONE (which schedules the next one, the interval doubling up
// to keepalive), or nothing.
func (h *closeHandshake) next(now, keepalive time.Duration) closeAction {
	switch {
	case !h.complete():
		return closeNothing
	case h.state == closeConfirmed || h.state == closeLinger && now >= h.lingerEnd:
		return closeFinish
	case now >= h.doneNext:
		h.doneNext = now + h.doneEvery
		h.doneEvery = min(2*h.doneEvery, keepalive)
		return closeSendDone
	}
	return closeNothing
}

// sentDone remembers pn as a packet that carried our DONE.
func (h *closeHandshake) sentDone(pn uint64) {
	h.donePNs[h.doneSent%len(h.donePNs)] = pn
	h.doneSent++
}

// timers returns the handshake's deadlines for the send loop's wake-up:
// the end of lingering and the next DONE, each 0 when none.
func (h *closeHandshake) timers() (lingerEnd, doneNext time.Duration) {
	if !h.complete() {
		return 0, 0
	}
	if h.peerDone() {
		lingerEnd = h.lingerEnd
	}
	return lingerEnd, h.doneNext
}

// onDoneFrameLocked applies the peer's DONE: the peer is complete, so it
// holds our whole stream and handed all of it to its reader. It reports
// whether the send loop should run.
func (c *Conn) onDoneFrameLocked(now time.Duration) (wake bool) {
	if !c.snd.finSent || !c.closing.onPeerDone(now, c.snd.rtt.pto()) {
		return false
	}
	c.snd.onPeerDone()
	c.writable.Broadcast()
	c.log.Debug("stream: the peer confirmed the end", "complete", c.closing.complete())
	return true
}

// closeStepLocked advances the close handshake at the start of a burst:
// it notes when we become complete, and fills in plan whether our DONE is
// due and whether the Conn finishes once the burst, which acknowledges the
// peer's DONE, is built. It reports false when the Conn finished at once.
func (c *Conn) closeStepLocked(now time.Duration, plan *burstPlan) bool {
	h, r := &c.closing, &c.rcv
	if !h.complete() && c.snd.finAcked && r.allDelivered() {
		h.becomeComplete(now, c.snd.rtt.pto())
		c.log.Debug("stream: complete", "peerDone", h.peerDone())
	}
	switch h.next(now, c.keepalive) {
	case closeFinish:
		if !r.ackWanted {
			c.failLocked(nil)
			return false
		}
		// Acknowledge the peer's DONE first, so that it need not linger
		// for ours.
		r.ackNow, plan.finishAfter = true, true
	case closeSendDone:
		plan.sendDone = true
	}
	return true
}
