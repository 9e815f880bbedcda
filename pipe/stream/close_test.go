package stream

import (
	"testing"
	"time"
)

// TestCloseHandshakeTransitions walks the close handshake through every
// path of its state diagram, and checks that transitions that do not
// apply change nothing.
func TestCloseHandshakeTransitions(t *testing.T) {
	const pto = 100 * time.Millisecond
	ackOf := func(pn uint64) *frame { return ackFrame(0, pnRange{pn, pn}) }
	type step struct {
		name string
		do   func(h *closeHandshake) bool
		ok   bool
		want closeState
	}
	complete := func(h *closeHandshake) bool { return h.becomeComplete(time.Second, pto) }
	peerDone := func(h *closeHandshake) bool { return h.onPeerDone(time.Second, pto) }
	sendDone := func(h *closeHandshake) bool {
		if h.next(h.doneNext, 10*time.Second) != closeSendDone {
			return false
		}
		h.sentDone(7)
		return true
	}
	doneAcked := func(h *closeHandshake) bool { return h.onAck(ackOf(7)) }
	otherAck := func(h *closeHandshake) bool { return h.onAck(ackOf(6)) }
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"ours first, acked, then the peer's", []step{
			{"ack before complete", doneAcked, false, closeOpen},
			{"complete", complete, true, closeComplete},
			{"complete again", complete, false, closeComplete},
			{"ack of no DONE", doneAcked, false, closeComplete},
			{"send DONE", sendDone, true, closeComplete},
			{"ack of another packet", otherAck, false, closeComplete},
			{"ack of DONE", doneAcked, true, closeAcked},
			{"ack of DONE again", doneAcked, false, closeAcked},
			{"peer's DONE", peerDone, true, closeConfirmed},
			{"peer's DONE again", peerDone, false, closeConfirmed},
		}},
		{"ours first, the peer's before its ack", []step{
			{"complete", complete, true, closeComplete},
			{"send DONE", sendDone, true, closeComplete},
			{"peer's DONE", peerDone, true, closeLinger},
			{"ack of DONE", doneAcked, true, closeConfirmed},
		}},
		{"the peer's first", []step{
			{"peer's DONE", peerDone, true, closePeerDone},
			{"peer's DONE again", peerDone, false, closePeerDone},
			{"complete", complete, true, closeLinger},
			{"send DONE", sendDone, true, closeLinger},
			{"ack of DONE", doneAcked, true, closeConfirmed},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h closeHandshake
			for _, st := range tc.steps {
				if ok := st.do(&h); ok != st.ok || h.state != st.want {
					t.Fatalf("%s: applied %v, state %v; want %v, %v", st.name, ok, h.state, st.ok, st.want)
				}
			}
		})
	}
}

// TestCloseHandshakeTimers: DONE goes out at once on becoming complete,
// then after a PTO, doubling up to the keepalive; lingering with the
// peer's DONE ends after lingerPTOs PTOs (capped by maxLinger), is extended while
// the peer keeps sending, and then finishes.
func TestCloseHandshakeTimers(t *testing.T) {
	const pto, keepalive = 100 * time.Millisecond, 250 * time.Millisecond
	var h closeHandshake
	if h.next(0, keepalive) != closeNothing || !h.needPeer() || h.peerStillSending(0, pto) {
		t.Fatal("an open handshake owes something")
	}
	if l, d := h.timers(); l != 0 || d != 0 {
		t.Fatalf("open: timers %v, %v; want none", l, d)
	}
	now := time.Second
	h.becomeComplete(now, pto)
	for i, at := range []time.Duration{0, 100, 300, 550, 800} {
		at := now + at*time.Millisecond
		if got := h.next(at-1, keepalive); got != closeNothing && i > 0 {
			t.Fatalf("DONE %d: %v just before it is due", i, got)
		}
		if got := h.next(at, keepalive); got != closeSendDone {
			t.Fatalf("DONE %d at %v: %v, want it sent", i, at, got)
		}
		h.sentDone(uint64(i))
	}
	if !h.needPeer() {
		t.Fatal("complete without the peer's DONE: we no longer need the peer")
	}
	now = 2 * time.Second
	h.onPeerDone(now, pto)
	if h.state != closeLinger || h.needPeer() {
		t.Fatalf("state %v, needPeer %v; want linger, false", h.state, h.needPeer())
	}
	if l, d := h.timers(); l != now+lingerPTOs*pto || d != now {
		t.Fatalf("lingering: timers %v, %v; want %v, %v", l, d, now+lingerPTOs*pto, now)
	}
	if got := h.next(now, keepalive); got != closeSendDone {
		t.Fatalf("on the peer's DONE: %v, want ours sent at once", got)
	}
	// The peer keeps sending: linger on, but never past maxLinger after
	// becoming complete.
	h.peerStillSending(now+200*time.Millisecond, pto)
	if want := now + 200*time.Millisecond + lingerPTOs*pto; h.lingerEnd != want {
		t.Fatalf("linger end %v, want %v", h.lingerEnd, want)
	}
	h.peerStillSending(time.Second+maxLinger, pto)
	if want := time.Second + maxLinger; h.lingerEnd != want {
		t.Fatalf("linger end %v, want capped at %v", h.lingerEnd, want)
	}
	if got := h.next(h.lingerEnd, keepalive); got != closeFinish {
		t.Fatalf("at the linger end: %v, want finish", got)
	}
}
