package stream

import (
	"slices"
	"testing"
	"time"
)

// hookLog records what a sender tells its hooks.
type hookLog struct {
	probesAcked, probesLost []uint64
	repeatedPTOs            int
}

func (h *hookLog) onProbeAckedLocked(pn uint64) { h.probesAcked = append(h.probesAcked, pn) }
func (h *hookLog) onProbeLostLocked(pn uint64)  { h.probesLost = append(h.probesLost, pn) }
func (h *hookLog) onRepeatedPTOLocked()         { h.repeatedPTOs++ }

const testMSS = 1000

// newTestSender returns a sender, without a Conn, whose stream holds size
// written bytes, and the log of its hooks.
func newTestSender(size int) (*sender, *hookLog) {
	h := &hookLog{}
	s := newSender(1<<20, testMSS, &counters{}, h)
	s.peerWindow = 1 << 20
	s.buf.fit(0, uint64(size))
	s.end = uint64(size)
	return &s, h
}

// sendData records a packet carrying the next n new stream bytes, as the
// Conn's packet production does, and returns its number.
func sendData(s *sender, now time.Duration, n int) uint64 {
	pn := s.nextPN
	p := s.ring.push()
	p.off, p.n = s.nxt, uint32(n)
	s.nxt += uint64(n)
	s.recordSent(p, now, n+20, true)
	return pn
}

// ackFrame is an ACK frame for the inclusive ranges given in descending
// order, with the cumulative stream acknowledgement stream.
func ackFrame(stream uint64, ranges ...pnRange) *frame {
	f := &frame{typ: frameAck, largest: ranges[0].hi, stream: stream, window: 1 << 20}
	f.nRanges = copy(f.ranges[:], ranges)
	return f
}

func TestSenderAck(t *testing.T) {
	s, _ := newTestSender(5000)
	for i := range 5 {
		sendData(s, time.Duration(i)*time.Millisecond, 1000)
	}
	if s.bytesInFlight != 5*1020 || s.elicitingInFlight != 5 {
		t.Fatalf("in flight %d bytes, %d packets; want %d, 5", s.bytesInFlight, s.elicitingInFlight, 5*1020)
	}
	if d := s.ptoDeadline(); d == 0 {
		t.Fatal("no probe timeout with packets in flight")
	}
	progress, freed := s.onAck(ackFrame(5000, pnRange{0, 4}), 50*time.Millisecond)
	if !progress || !freed {
		t.Fatalf("onAck = %v, %v; want progress and room freed", progress, freed)
	}
	if s.una != 5000 || s.bytesInFlight != 0 || s.elicitingInFlight != 0 || s.ring.count != 0 {
		t.Fatalf("after the ack: una %d, in flight %d bytes (%d packets), %d records", s.una, s.bytesInFlight, s.elicitingInFlight, s.ring.count)
	}
	if got := s.rtt.latest; got != 46*time.Millisecond {
		t.Errorf("RTT sample %v, want 46ms (from the largest acknowledged)", got)
	}
	if s.ptoDeadline() != 0 {
		t.Error("probe timeout armed with nothing in flight")
	}
	// The same ack again is no progress.
	if progress, _ := s.onAck(ackFrame(5000, pnRange{0, 4}), 60*time.Millisecond); progress {
		t.Error("a repeated ack made progress")
	}
	// An ack of a number never sent is malformed.
	if progress, _ := s.onAck(ackFrame(5000, pnRange{9, 9}), 60*time.Millisecond); progress || s.stats.badFrames != 1 {
		t.Errorf("ack of an unsent packet: progress %v, %d bad frames", progress, s.stats.badFrames)
	}
}

func TestSenderLossByThresholds(t *testing.T) {
	s, _ := newTestSender(6000)
	for range 6 {
		sendData(s, 0, 1000)
	}
	// Packets 0, 1 and 2 are three or more below the largest acknowledged,
	// 5: lost by the packet threshold. 3 and 4 are not, and become lost
	// only by the time threshold.
	s.onAck(ackFrame(0, pnRange{5, 5}), time.Millisecond)
	if s.stats.lost != 3 {
		t.Fatalf("%d packets lost, want 3 (packet threshold)", s.stats.lost)
	}
	want := []retxRange{{0, 1000, false}, {1000, 1000, false}, {2000, 1000, false}}
	if !slices.Equal(s.retx, want) {
		t.Fatalf("data queued again %v, want %v", s.retx, want)
	}
	if !slices.Equal(s.holes, []uint64{3, 4}) || s.lossTime == 0 {
		t.Fatalf("holes %v, loss timer %v; want [3 4] and a timer", s.holes, s.lossTime)
	}
	if s.bytesInFlight != 2*1020 {
		t.Fatalf("in flight %d bytes, want %d", s.bytesInFlight, 2*1020)
	}
	// The time threshold: 9/8 of the RTT after they were sent.
	if want := s.rtt.lossDelay(); s.lossTime != want {
		t.Fatalf("loss timer at %v, want %v", s.lossTime, want)
	}
	s.detectLosses(s.lossTime - 1)
	if s.stats.lost != 3 {
		t.Fatal("lost before the loss timer")
	}
	s.detectLosses(s.lossTime)
	if s.stats.lost != 5 || len(s.holes) != 0 || s.bytesInFlight != 0 || len(s.retx) != 5 {
		t.Fatalf("after the loss timer: %d lost, holes %v, in flight %d, retx %v", s.stats.lost, s.holes, s.bytesInFlight, s.retx)
	}
	// An ack of a number never sent is malformed.
	s.onAck(ackFrame(0, pnRange{6, 6}), 2*time.Millisecond)
	if s.stats.badFrames != 1 {
		t.Fatalf("%d bad frames, want 1", s.stats.badFrames)
	}
}

func TestSenderReorderedAckFillsHole(t *testing.T) {
	s, _ := newTestSender(3000)
	for range 3 {
		sendData(s, 0, 1000)
	}
	s.onAck(ackFrame(0, pnRange{2, 2}), time.Millisecond)
	if !slices.Equal(s.holes, []uint64{0, 1}) || s.stats.lost != 0 {
		t.Fatalf("holes %v, %d lost; want [0 1], none", s.holes, s.stats.lost)
	}
	// An older ack arrives late: it fills the holes, nothing is lost.
	if progress, _ := s.onAck(ackFrame(0, pnRange{0, 1}), 2*time.Millisecond); !progress {
		t.Fatal("filling the holes made no progress")
	}
	if len(s.holes) != 0 || s.stats.lost != 0 || s.bytesInFlight != 0 {
		t.Fatalf("holes %v, %d lost, %d in flight", s.holes, s.stats.lost, s.bytesInFlight)
	}
}

func TestSenderPTO(t *testing.T) {
	s, h := newTestSender(2000)
	sendData(s, 0, 1000)
	sendData(s, 0, 1000)
	d := s.ptoDeadline()
	if want := s.rtt.pto(); d != want {
		t.Fatalf("probe timeout at %v, want one PTO (%v) after the last send", d, want)
	}
	s.onPTO()
	if s.probes != 2 || len(s.retx) != 1 || s.retx[0] != (retxRange{0, 1000, false}) {
		t.Fatalf("after a PTO: %d probes owed, retx %v; want 2 and the oldest data", s.probes, s.retx)
	}
	if d2 := s.ptoDeadline(); d2 != 2*d {
		t.Fatalf("second probe timeout at %v, want backed off to %v", d2, 2*d)
	}
	s.onPTO()
	if h.repeatedPTOs != 0 {
		t.Fatal("repeated PTO reported after two")
	}
	s.cc.cwnd = 100 * testMSS
	s.onPTO()
	if h.repeatedPTOs != 1 || s.cc.cwnd != minCwndPkt*testMSS {
		t.Fatalf("third PTO: %d reports, cwnd %d; want 1, %d", h.repeatedPTOs, s.cc.cwnd, minCwndPkt*testMSS)
	}
	// An ack that makes progress ends the backoff.
	s.onAck(ackFrame(1000, pnRange{0, 0}), time.Second)
	if s.ptoCount != 0 {
		t.Fatalf("PTO count %d after progress, want 0", s.ptoCount)
	}
}

func TestSenderMTUProbe(t *testing.T) {
	s, h := newTestSender(1000)
	probe := s.nextPN
	s.recordProbe(s.ring.push(), 0, 8000)
	if s.bytesInFlight != 0 || s.elicitingInFlight != 1 {
		t.Fatalf("probe: %d bytes, %d packets in flight; want 0, 1", s.bytesInFlight, s.elicitingInFlight)
	}
	s.onAck(ackFrame(0, pnRange{probe, probe}), time.Millisecond)
	if !slices.Equal(h.probesAcked, []uint64{probe}) {
		t.Fatalf("probes acknowledged %v, want [%d]", h.probesAcked, probe)
	}
	lost := s.nextPN
	s.recordProbe(s.ring.push(), time.Millisecond, 8000)
	for range 3 {
		sendData(s, time.Millisecond, 100)
	}
	s.onAck(ackFrame(0, pnRange{lost + 3, lost + 3}), 2*time.Millisecond)
	if !slices.Equal(h.probesLost, []uint64{lost}) {
		t.Fatalf("probes lost %v, want [%d]", h.probesLost, lost)
	}
}

// TestSenderPacing: after an idle period the pacer allows a burst of one
// quantum (at least the timer granularity); then each packet pushes the
// next send time back by its size at the pacing rate, and the congestion
// window bounds what is in flight.
func TestSenderPacing(t *testing.T) {
	s, _ := newTestSender(1 << 20)
	s.cc.pacingRate = 1e6 // bytes per second: a 1020-byte packet takes 1.02 ms
	now := time.Second
	burst := max(s.cc.pacingInterval(s.cc.quantum()), pacerGranularity)
	sent := 0
	for s.canSend(now, testMSS+20) {
		sendData(s, now, testMSS)
		sent++
	}
	if want := now - burst + time.Duration(sent)*s.cc.pacingInterval(testMSS+20); s.paceNext != want || s.paceNext <= now {
		t.Fatalf("after %d packets the pacer allows the next at %v, want %v", sent, s.paceNext, want)
	}
	if sent < 2 || time.Duration(sent-1)*s.cc.pacingInterval(testMSS+20) > burst {
		t.Fatalf("%d packets sent at once, want the burst of %v", sent, burst)
	}
	if !s.canSend(s.paceNext, testMSS+20) {
		t.Fatal("the pacer does not allow a packet at its time")
	}
	s.cc.cwnd = s.bytesInFlight
	if s.windowOpen(1) || s.canSend(s.paceNext, 1) {
		t.Fatal("a full congestion window allows more")
	}
}
