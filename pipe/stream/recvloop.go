// The receive loop and packet handling: recvLoop reads each datagram and
// applies it under the lock (handlePacketLocked), sending an immediate ack
// itself when the send loop is idle. Conn methods that run on the receive
// loop live here.

package stream

import (
	"fmt"
	"time"

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
	bodyLen := -1
	if body != nil {
		bodyLen = len(body)
	}
	// Validate the whole packet before applying any of it.
	sum, ok := c.checkFramesLocked(frames, f, body, bodyLen)
	if !ok {
		c.stats.badFrames++
		return false, false
	}
	c.stats.packetsRecv++
	c.lastRecv = now
	r := &c.rcv
	if sum.hasData && !r.hasRoom(sum.dataOff, sum.dataEnd) {
		// No room for it: leave it unacknowledged, so it comes again.
		c.stats.badFrames++
		return false, false
	}
	dup, reordered := r.onPacketNumber(pn, now)
	if dup {
		c.stats.dup++
		if sum.eliciting {
			r.ackWanted, r.ackNow = true, true // our ack may have been lost
		}
		return r.ackNow, false
	}
	if wake, ok = c.applyFramesLocked(frames, f, body, bodyLen, now); !ok {
		return false, false // the peer aborted
	}
	if sum.eliciting {
		if c.closing.peerStillSending(now, c.snd.rtt.pto()) {
			wake = true
		}
		if r.onEliciting(now, reordered) && c.sleepUntil != 0 && r.ackDeadline < c.sleepUntil {
			wake = true // the send loop sleeps past the new ack deadline
		}
	}
	return r.ackWanted && r.ackNow, wake
}

// packetSummary is what validating a packet's frames found.
type packetSummary struct {
	eliciting        bool // a frame asks for an ack
	hasData          bool // it carries a DATA or DATA_FIN frame, of [dataOff, dataEnd)
	dataOff, dataEnd uint64
}

// checkFramesLocked parses every frame of a packet without applying any:
// it reports false for a packet that is malformed, holds two DATA frames,
// or comes with a body that no DATA frame claims.
func (c *Conn) checkFramesLocked(frames []byte, f *frame, body []byte, bodyLen int) (sum packetSummary, ok bool) {
	claimed := false
	for rest := frames; len(rest) > 0; {
		var err error
		if rest, err = parseFrameWith(rest, f, body, bodyLen); err != nil {
			c.log.Debug("stream: dropping malformed packet", "err", err)
			return sum, false
		}
		claimed = claimed || f.claimed
		switch f.typ {
		case frameData, frameDataFin:
			if sum.hasData { // the wire format allows one per packet
				return sum, false
			}
			sum.hasData, sum.dataOff, sum.dataEnd = true, f.offset, f.offset+uint64(len(f.data))
			sum.eliciting = true
		case framePing, frameDone, frameClose:
			sum.eliciting = true
		}
	}
	if body != nil && !claimed {
		return sum, false // a body no DATA frame claims
	}
	return sum, true
}

// applyFramesLocked applies the frames of a packet that checkFramesLocked
// passed, in order. It reports whether the send loop should run, and false
// when a CLOSE frame ended the Conn.
func (c *Conn) applyFramesLocked(frames []byte, f *frame, body []byte, bodyLen int, now time.Duration) (wake, ok bool) {
	for rest := frames; len(rest) > 0; {
		rest, _ = parseFrameWith(rest, f, body, bodyLen)
		switch f.typ {
		case frameAck:
			if c.onAckFrameLocked(f, now) {
				wake = true
			}
		case frameData, frameDataFin:
			c.onDataFrameLocked(f)
		case frameDone:
			if c.onDoneFrameLocked(now) {
				wake = true
			}
		case frameClose:
			c.onCloseFrameLocked(f)
			return false, false
		}
	}
	return wake, true
}

// onAckFrameLocked applies an ACK frame to the sender and to the close
// handshake. It reports whether it acknowledged anything new.
func (c *Conn) onAckFrameLocked(f *frame, now time.Duration) (progress bool) {
	progress, freed := c.snd.onAck(f, now)
	if freed {
		c.writable.Broadcast()
	}
	if c.closing.onAck(f) {
		progress = true
	}
	return progress
}

// onDataFrameLocked stores a DATA or DATA_FIN frame.
func (c *Conn) onDataFrameLocked(f *frame) {
	r := &c.rcv
	fin := f.typ == frameDataFin
	readable, old := r.onData(f.offset, f.data, fin)
	if readable {
		c.readable.Broadcast()
	}
	if old || fin || f.offset > r.nxt {
		r.ackNow = true // duplicate, FIN or a hole: tell the sender now
	}
}

// onCloseFrameLocked fails the Conn: the peer aborted. Its code and
// reason are kept, the reason made safe to print.
func (c *Conn) onCloseFrameLocked(f *frame) {
	code := AbortCode(f.code)
	if f.code > uint64(AbortOutputClosed) {
		code = AbortError
	}
	c.failLocked(&PeerAbortError{Code: code, Reason: textsafe.Line(string(f.reason))})
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
