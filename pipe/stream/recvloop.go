// The receive loop and packet handling: recvLoop reads each datagram and
// applies it under the lock (handlePacketLocked), sending an immediate ack
// itself when the send loop is idle. Conn methods that run on the receive
// loop live here.

package stream

import (
	"fmt"

	"github.com/p2pcat/p2pcat/internal/textsafe"
)

// recvLoop reads datagrams and applies them. It owns rbuf.
func (c *Conn) recvLoop() {
	defer c.wg.Done()
	rbuf := make([]byte, max(64<<10, c.bufSize))
	abuf := make([]byte, 0, c.maxPayload)
	var f frame
	place := c.placeBody // bound once: a method value allocates
	for {
		var n int
		var body []byte // a DATA frame's bytes, already in the receive buffer
		var err error
		if c.split != nil {
			n, body, err = c.split.RecvPlaced(rbuf, place)
		} else {
			n, err = c.tr.Recv(rbuf)
		}
		if err != nil {
			c.mu.Lock()
			c.failLocked(fmt.Errorf("stream: transport: %w", err))
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		wantAck, wantSend := c.handlePacketLocked(rbuf[:n], body, &f)
		fin := c.finished
		c.mu.Unlock()
		if fin {
			return
		}
		if wantAck {
			// Send the ack from here if the send loop is not busy: this
			// saves a goroutine hand-off per ack.
			if c.sendMu.TryLock() {
				c.mu.Lock()
				var pkt []byte
				if c.rcv.ackNow && !c.finished {
					pkt = c.buildPureAckLocked(abuf[:0])
				}
				c.mu.Unlock()
				if pkt != nil {
					_ = c.tr.Send(pkt) // a failed send is a lost packet
				}
				c.sendMu.Unlock()
			} else {
				wantSend = true
			}
		}
		if wantSend {
			c.wakeSender()
		}
	}
}

// handlePacketLocked applies one received packet. body, when not nil, is
// the packet's last frame's bytes, which follow p and already lie in the
// receive buffer where they belong (placeBody). It reports whether an
// immediate ack is due and whether the send loop should run.
func (c *Conn) handlePacketLocked(p, body []byte, f *frame) (ackNow, wake bool) {
	if c.finished {
		return false, false
	}
	now := c.now()
	pn, frames, err := parsePacketNumber(p)
	if err != nil {
		c.stats.badFrames++
		return false, false
	}
	// Validate the whole packet before applying any of it.
	eliciting, hasData, dataOff, dataEnd := false, false, uint64(0), uint64(0)
	bodyLen, claimed := -1, false
	if body != nil {
		bodyLen = len(body)
	}
	for rest := frames; len(rest) > 0; {
		if rest, err = parseFrameWith(rest, f, body, bodyLen); err != nil {
			c.stats.badFrames++
			c.log.Debug("stream: dropping malformed packet", "err", err)
			return false, false
		}
		claimed = claimed || f.claimed
		switch f.typ {
		case frameData, frameDataFin:
			if hasData { // the wire format allows one per packet
				c.stats.badFrames++
				return false, false
			}
			hasData, dataOff, dataEnd = true, f.offset, f.offset+uint64(len(f.data))
			eliciting = true
		case framePing, frameDone, frameClose:
			eliciting = true
		}
	}
	if body != nil && !claimed {
		c.stats.badFrames++ // a body no DATA frame claims
		return false, false
	}
	c.stats.packetsRecv++
	c.lastRecv = now
	r := &c.rcv
	if hasData && (dataEnd > r.window() || dataOff > r.nxt && r.ooo.len() >= maxOOOSpans) {
		// No room for it: leave it unacknowledged, so it comes again.
		c.stats.badFrames++
		return false, false
	}
	dup, reordered := r.onPacketNumber(pn, now)
	if dup {
		c.stats.dup++
		if eliciting {
			r.ackWanted, r.ackNow = true, true // our ack may have been lost
		}
		return r.ackNow, false
	}
	for rest := frames; len(rest) > 0; {
		rest, _ = parseFrameWith(rest, f, body, bodyLen)
		switch f.typ {
		case frameAck:
			progress, freed := c.snd.onAck(f, now)
			if freed {
				c.writable.Broadcast()
			}
			if progress {
				wake = true
			}
			if c.doneSent > 0 && !c.doneAcked && c.ackCoversDoneLocked(f) {
				c.doneAcked = true
				wake = true
			}
		case frameData, frameDataFin:
			fin := f.typ == frameDataFin
			readable, old := r.onData(f.offset, f.data, fin)
			if readable {
				c.readable.Broadcast()
			}
			if old || fin || f.offset > r.nxt {
				r.ackNow = true // duplicate, FIN or a hole: tell the sender now
			}
		case frameDone:
			if c.snd.finSent && !r.peerDone {
				// The peer is complete: it holds our whole stream, and
				// handed all of it to its reader.
				r.peerDone = true
				c.snd.onPeerDone()
				c.writable.Broadcast()
				if c.complete {
					c.lingerEnd = now + min(3*c.snd.rtt.pto(), maxLinger)
					c.doneNext = now // answer at once
				}
				c.log.Debug("stream: the peer confirmed the end", "complete", c.complete)
				wake = true
			}
		case frameClose:
			code := AbortCode(f.code)
			if f.code > uint64(AbortOutputClosed) {
				code = AbortError
			}
			c.failLocked(&PeerAbortError{Code: code, Reason: textsafe.Line(string(f.reason))})
			return false, false
		}
	}
	if eliciting && c.complete {
		// The peer still sends: it has not seen our DONE (which also
		// acknowledges everything). Answer with DONE now, and, lingering
		// with its DONE, stay around while it keeps trying, within
		// maxLinger.
		c.doneNext = now
		if r.peerDone {
			c.lingerEnd = min(max(c.lingerEnd, now+3*c.snd.rtt.pto()), c.completeAt+maxLinger)
		}
		wake = true
	}
	if eliciting {
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
			if c.sleepUntil != 0 && r.ackDeadline < c.sleepUntil {
				wake = true
			}
		}
	}
	return r.ackWanted && r.ackNow, wake
}

// placeBody is the place function of SplitTransport.RecvPlaced: for a
// packet whose head ends with a DATA frame of bodyLen bytes, it returns
// where in the receive buffer those bytes go, when that room holds nothing
// yet (new data, inside the window, no out-of-order range in it) and is
// contiguous; otherwise nil, and the body is copied in as usual. Only the
// receive loop writes to the buffer beyond nxt, so the room stays free
// until the packet is applied.
func (c *Conn) placeBody(head []byte, bodyLen int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || bodyLen <= 0 {
		return nil
	}
	_, frames, err := parsePacketNumber(head)
	if err != nil {
		return nil
	}
	f := &c.placeFrame
	claimed := false
	for rest := frames; len(rest) > 0; {
		if rest, err = parseFrameWith(rest, f, nil, bodyLen); err != nil {
			return nil
		}
		claimed = f.claimed // only the last frame can claim the body
	}
	if !claimed {
		return nil
	}
	r := &c.rcv
	off, end := f.offset, f.offset+uint64(bodyLen)
	if off < r.nxt || end > r.window() || r.ooo.overlaps(off, end) {
		return nil
	}
	r.buf.fit(r.readOff, end)
	if room := r.buf.span(off, bodyLen); len(room) == bodyLen {
		return room
	}
	return nil
}
