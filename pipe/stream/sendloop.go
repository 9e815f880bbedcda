// The send loop and packet production: sendLoop runs every timer and sends
// the bursts that produceLocked builds (data, acks, PINGs, DONEs, path MTU
// probes), paced and within the congestion and flow-control windows. Conn
// methods that build packets live here.

package stream

import (
	"encoding/binary"
	"time"
)

// buildPureAckLocked builds a packet holding only an ACK frame.
func (c *Conn) buildPureAckLocked(b []byte) []byte {
	now := c.now()
	b = binary.AppendUvarint(b, c.snd.nextPN)
	b = c.rcv.appendAck(b, now, c.maxPayload-len(b))
	c.recordSentLocked(c.snd.ring.push(), now, len(b), false)
	return b
}

// recordSentLocked records the packet numbered nextPN in p (see
// sender.recordSent).
func (c *Conn) recordSentLocked(p *sentPacket, now time.Duration, size int, eliciting bool) {
	c.lastSent = now
	c.snd.recordSent(p, now, size, eliciting)
}

// sendLoop sends data, acks and control packets, and runs every timer.
func (c *Conn) sendLoop() {
	defer c.wg.Done()
	defer c.closeTransport()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Packets are built back to back in one arena, so the layer below can
	// hand them to the kernel in one GSO send without copying them.
	arena := make([]byte, batchBytes+c.bufSize)
	var bufs, bodies [sendBatch][]byte
	for {
		c.sendMu.Lock()
		c.mu.Lock()
		now := c.now()
		n, more, next := c.produceLocked(now, arena, &bufs, &bodies)
		pinned := c.snd.pinned
		finished := c.finished
		if more {
			c.sleepUntil = 0
		} else if next == 0 {
			c.sleepUntil = sleepForever
		} else {
			c.sleepUntil = next
		}
		c.mu.Unlock()
		c.transmit(bufs[:n], bodies[:n])
		if pinned {
			c.unpin()
		}
		c.sendMu.Unlock()
		if finished {
			return
		}
		if more {
			continue
		}
		if next > 0 {
			timer.Reset(max(next-now, 0))
		} else {
			timer.Stop()
		}
		select {
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// transmit hands a burst to the Transport, in as few calls as it takes.
// A failed send is a lost packet: recovery resends it. The caller holds
// sendMu.
func (c *Conn) transmit(bufs, bodies [][]byte) {
	n := len(bufs)
	if c.split != nil && n > 0 {
		_ = c.split.SendSplitBatch(bufs, bodies)
		clear(bodies)
	} else if bt, ok := c.tr.(BatchTransport); ok && n > 1 {
		_ = bt.SendBatch(bufs)
	} else {
		for i := 0; i < n; i++ {
			_ = c.tr.Send(bufs[i])
		}
	}
}

// unpin releases the send buffer once a split batch is sent: the bodies
// are sealed, and the writer may reuse their room.
func (c *Conn) unpin() {
	c.mu.Lock()
	if c.snd.pin < c.snd.una {
		c.writable.Broadcast() // the pin held the writer back
	}
	c.snd.pinned = false
	c.mu.Unlock()
}

// burstPlan is what the send loop decided, before building a burst, to
// send besides data and acks.
type burstPlan struct {
	sendDone    bool // our DONE is due
	ping        bool // a keepalive PING is due
	finishAfter bool // finish cleanly once the burst (it acknowledges the peer's DONE) is built
}

// produceLocked runs due timers and builds the next burst of packets into
// arena, back to back, with bufs[:n] pointing at them. A burst is one
// packet, or as many as fit in the pacer's quantum (about 1 ms of data at
// the pacing rate, at least two packets, at most batchBytes: one GSO
// send) and sendBatch, so that bursts on a slow path stay small. It
// reports whether more could be sent at once, and otherwise when it wants
// to run next (0: only when woken).
//
// With a SplitTransport a DATA frame's bytes are not copied into the arena:
// bodies[i] is packet i's body in the send buffer (nil when the packet is
// whole in bufs[i]), and the buffer is pinned (sender.pinned) until the
// batch is sent.
func (c *Conn) produceLocked(now time.Duration, arena []byte, bufs, bodies *[sendBatch][]byte) (n int, more bool, next time.Duration) {
	if c.finished {
		return 0, false, 0
	}
	// We need the peer until we are complete and have its DONE: until
	// then its silence for the idle timeout ends the Conn, and we keep it
	// talking (keepalives, DONEs), so that a live peer is never taken for
	// a dead one.
	needPeer := c.closing.needPeer()
	if !c.runTimersLocked(now, needPeer) {
		return 0, false, 0
	}
	var plan burstPlan
	if !c.closeStepLocked(now, &plan) {
		return 0, false, 0
	}
	plan.ping = needPeer && now-c.lastSent >= c.keepalive
	n, more = c.buildBurstLocked(now, arena, bufs, bodies, plan)
	if c.finished {
		return n, false, 0
	}
	next = c.nextWakeLocked(needPeer, more)
	s := &c.snd
	if !s.hasRetx() && !s.newDataReady() && s.windowOpen(c.maxPayload) {
		s.markAppLimited() // nothing to send though the window allows
	}
	return n, more, next
}

// runTimersLocked runs the timers due at now: the idle timeout (while we
// need the peer), the loss timer and the probe timeout, and the check for
// a path change. It reports false when the Conn failed.
func (c *Conn) runTimersLocked(now time.Duration, needPeer bool) bool {
	s := &c.snd
	if needPeer && now-c.lastRecv >= c.idle {
		if c.closing.complete() {
			c.failLocked(ErrUnconfirmedEnd)
		} else {
			c.failLocked(ErrIdleTimeout)
		}
		return false
	}
	if s.lossTime != 0 && now >= s.lossTime {
		s.detectLosses(now)
		s.ring.popSettled()
	}
	if d := s.ptoDeadline(); d != 0 && now >= d {
		s.onPTO()
	}
	c.checkPathLocked()
	return true
}

// buildBurstLocked builds the burst of produceLocked: the path MTU probes
// that are due, then packets while something may go out (data the windows
// and pacer allow, or probe data after a PTO, an ack that is due, the
// plan's DONE or PING) and the burst has room. It reports whether it
// stopped for room rather than for want of anything to send.
func (c *Conn) buildBurstLocked(now time.Duration, arena []byte, bufs, bodies *[sendBatch][]byte, plan burstPlan) (n int, more bool) {
	s, r := &c.snd, &c.rcv
	used := 0  // bytes of arena taken
	total := 0 // bytes of packets built, bodies included
	// The probes due go out together, before the first data (pmtu.go); a
	// side that has never had data to send (it only acknowledges, or sends
	// a FIN alone) needs none.
	for i := c.pmtu.due(); i >= 0 && s.end > 0 && !c.closing.complete() && used+c.pmtu.cands[i].size <= len(arena); i = c.pmtu.due() {
		bufs[n] = c.buildMTUProbeLocked(arena[used:used], now, i)
		used += len(bufs[n])
		total += len(bufs[n])
		n++
	}
	budget := min(s.cc.quantum(), batchBytes)
	for {
		if n == sendBatch || n > 0 && total+c.maxPayload > budget {
			return n, true
		}
		probe := s.probes > 0
		hasData := s.hasRetx() || s.newDataReady()
		canData := hasData && (probe || s.canSend(now, c.maxPayload))
		ackDue := r.ackWanted && (r.ackNow || now >= r.ackDeadline)
		pingNow := (plan.ping || (probe && !hasData)) && !canData
		if !canData && !plan.sendDone && !pingNow && !ackDue {
			return n, false
		}
		b, body, eliciting := c.buildPacketLocked(arena[used:used], now, plan.sendDone, pingNow, canData)
		plan.sendDone = false
		if pingNow {
			plan.ping = false
		}
		if probe && eliciting {
			s.probes--
		}
		bufs[n], bodies[n] = b, body
		used += len(b)
		total += len(b) + len(body)
		n++
		if plan.finishAfter {
			c.failLocked(nil)
			return n, false
		}
	}
}

// buildPacketLocked builds one packet into b and records it: an ACK frame
// if one is owed, then as asked our DONE, a PING and a DATA frame (whose
// bytes are body when they stay in the send buffer). A packet with only an
// ACK or DONE is not ack-eliciting for the sender.
func (c *Conn) buildPacketLocked(b []byte, now time.Duration, done, ping, data bool) (head, body []byte, eliciting bool) {
	s := &c.snd
	b = binary.AppendUvarint(b, s.nextPN)
	if c.rcv.ackWanted {
		b = c.rcv.appendAck(b, now, min(c.maxPayload-len(b)-32, maxAckLen(maxAckRanges)))
	}
	if done {
		b = append(b, frameDone)
		c.closing.sentDone(s.nextPN)
	}
	if ping {
		b = append(b, framePing)
		eliciting = true
	}
	p := s.ring.push()
	if data {
		b, body = c.appendDataLocked(b, p)
		eliciting = true
	}
	c.recordSentLocked(p, now, len(b)+len(body), eliciting)
	return b, body, eliciting
}

// nextWakeLocked is when the send loop must run next on its own, 0 for
// never: the earliest of its timers.
func (c *Conn) nextWakeLocked(needPeer, more bool) time.Duration {
	s, r := &c.snd, &c.rcv
	var next time.Duration
	if needPeer {
		next = c.lastRecv + c.idle
	}
	at := func(t time.Duration) {
		if t > 0 && (next == 0 || t < next) {
			next = t
		}
	}
	if needPeer {
		at(c.lastSent + c.keepalive)
	}
	at(s.lossTime)
	at(s.ptoDeadline())
	if r.ackWanted {
		at(r.ackDeadline)
	}
	lingerEnd, doneNext := c.closing.timers()
	at(lingerEnd)
	at(doneNext)
	hasData := s.hasRetx() || s.newDataReady()
	if hasData && s.windowOpen(c.maxPayload) && !more {
		at(s.paceNext)
	}
	return next
}

// appendDataLocked appends one DATA frame, lost data first, and fills the
// record p.
func (c *Conn) appendDataLocked(b []byte, p *sentPacket) (head, body []byte) {
	s := &c.snd
	room := c.maxPayload - len(b)
	rr, retx := s.nextRetx()
	off, avail := s.nxt, int(min(s.end-s.nxt, s.peerWindow-min(s.peerWindow, s.nxt)))
	finAll := s.finWritten && s.nxt+uint64(avail) == s.end // all that is left, FIN included
	if retx {
		off, avail, finAll = rr.off, int(rr.n), rr.fin
	}
	n := min(avail, room-dataHeaderLen(off, avail))
	// A body sealed straight from the send buffer (SplitTransport) costs a
	// byte on the wire: give it up only when the packet goes split.
	split := false
	if c.split != nil && n >= splitMinBody && len(b)+dataHeaderLen(off, n) <= splitMaxHead {
		k := n
		if len(b)+dataHeaderLen(off, k)+k == c.maxPayload {
			k--
		}
		if split = len(s.buf.span(off, k)) == k; split {
			n = k
		}
	}
	fin := finAll && n == avail
	if retx {
		rr.off += uint64(n)
		rr.n -= uint32(n)
		if rr.n == 0 && (fin || !rr.fin) {
			s.retxHead++
		}
		c.stats.retransmits++
	} else {
		s.nxt += uint64(n)
		if fin {
			s.finSent = true
		}
	}
	p.off, p.n, p.fin = off, uint32(n), fin
	b = appendDataHeader(b, fin, off, n)
	if split {
		// Kept for the batch being built: the writer stays off this room
		// until the batch is sealed (even if an ack frees it meanwhile).
		if !s.pinned || off < s.pin {
			s.pin = off
		}
		s.pinned = true
		return b, s.buf.span(off, n)
	}
	return s.buf.appendTo(b, off, n), nil
}
