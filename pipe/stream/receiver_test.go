package stream

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestReceiverReassembly: data out of order is held until the hole fills,
// duplicates are recognised, and the FIN ends the stream once read.
func TestReceiverReassembly(t *testing.T) {
	r := newReceiver(minBuffer)
	data := randomBytes(3000, 9)
	if readable, old := r.onData(1000, data[1000:2000], false); readable || old {
		t.Fatalf("data after a hole: readable %v, old %v", readable, old)
	}
	if !r.hasRoom(2000, 3000) || r.hasRoom(0, r.window()+1) {
		t.Fatal("hasRoom disagrees with the window")
	}
	if r.nxt != 0 || r.ooo.len() != 1 || r.streamAck() != 0 {
		t.Fatalf("nxt %d, %d held ranges, stream ack %d", r.nxt, r.ooo.len(), r.streamAck())
	}
	if readable, _ := r.onData(2000, data[2000:], true); readable || !r.finKnown || r.finOff != 3000 {
		t.Fatalf("FIN after a hole: readable %v, FIN known %v at %d", readable, r.finKnown, r.finOff)
	}
	if readable, _ := r.onData(0, data[:1000], false); !readable || r.nxt != 3000 || r.ooo.len() != 0 {
		t.Fatalf("the hole filled: readable %v, nxt %d, %d held ranges", readable, r.nxt, r.ooo.len())
	}
	if r.streamAck() != 3001 {
		t.Fatalf("stream ack %d, want 3001 (the FIN takes one position)", r.streamAck())
	}
	if _, old := r.onData(500, data[500:1500], false); !old {
		t.Fatal("data received twice is not old")
	}
	got := make([]byte, 4000)
	n := r.read(got)
	if !bytes.Equal(got[:n], data) {
		t.Fatalf("read %d bytes, not the stream", n)
	}
	if !r.allDelivered() || r.readErr() != io.EOF {
		t.Fatalf("after the last byte: delivered %v, read error %v", r.allDelivered(), r.readErr())
	}
}

// TestReceiverAckPolicy: an ack every second ack-eliciting packet or by
// the delayed-ack deadline, at once on reordering; decimated past the
// start; and the ACK frame reports what arrived.
func TestReceiverAckPolicy(t *testing.T) {
	r := newReceiver(minBuffer)
	now := time.Second
	for pn := uint64(0); pn < 2; pn++ {
		dup, reordered := r.onPacketNumber(pn, now)
		if dup || reordered {
			t.Fatalf("packet %d: dup %v, reordered %v", pn, dup, reordered)
		}
		started := r.onEliciting(now, reordered)
		if started != (pn == 0) || r.ackNow != (pn == 1) || !r.ackWanted {
			t.Fatalf("packet %d: timer started %v, ack now %v, wanted %v", pn, started, r.ackNow, r.ackWanted)
		}
	}
	if r.ackDeadline != now+maxAckDelay {
		t.Fatalf("ack deadline %v, want %v", r.ackDeadline, now+maxAckDelay)
	}
	if dup, _ := r.onPacketNumber(1, now); !dup {
		t.Fatal("a packet number seen before is not a duplicate")
	}
	_, reordered := r.onPacketNumber(5, now+time.Millisecond)
	if !reordered {
		t.Fatal("a gap in packet numbers is not reordering")
	}
	b := r.appendAck(nil, now+3*time.Millisecond, 1000)
	if r.ackWanted || r.ackNow || r.elicited != 0 {
		t.Fatal("an ACK frame left the ack owed")
	}
	var f frame
	if rest, err := parseFrame(b, &f); err != nil || len(rest) != 0 || f.typ != frameAck {
		t.Fatalf("ACK frame %x: %v", b, err)
	}
	if f.largest != 5 || f.nRanges != 2 || f.ranges[0] != (pnRange{5, 5}) || f.ranges[1] != (pnRange{0, 1}) {
		t.Fatalf("ACK largest %d, ranges %v", f.largest, f.ranges[:f.nRanges])
	}
	if f.ackDelay != 2000 || f.window != minBuffer {
		t.Fatalf("ACK delay %dµs, window %d; want 2000, %d", f.ackDelay, f.window, minBuffer)
	}
	// Past decimateAfter packets, acks go out every decimatedAckEvery.
	r.elicitedAll = decimateAfter
	for i := 1; i <= decimatedAckEvery; i++ {
		r.onEliciting(now, false)
		if r.ackNow != (i == decimatedAckEvery) {
			t.Fatalf("decimated, packet %d: ack now %v", i, r.ackNow)
		}
	}
	if r.ackDeadline != now+decimatedAckDelay {
		t.Fatalf("decimated ack deadline %v, want %v", r.ackDeadline, now+decimatedAckDelay)
	}
}
