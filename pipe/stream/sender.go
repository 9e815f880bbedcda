// The sending half: the sender type (send buffer, records of the packets
// sent, ack processing, loss detection, probe timeout, pacing) and its
// containers. It does not build packets: the send loop (sendloop.go) does,
// and records them here.

package stream

import "time"

// Packet states in the sent ring.
const (
	pktOutstanding uint8 = iota
	pktAcked
	pktLost
)

// sentPacket is what the sender remembers of one packet until it is acked
// or declared lost.
type sentPacket struct {
	sentAt time.Duration
	// Delivery-rate sampling state at send time (see bbr.go).
	deliveredAt time.Duration
	firstSentAt time.Duration
	delivered   uint64

	off          uint64 // stream data carried: [off, off+n), FIN after it if fin
	n            uint32
	size         uint16 // datagram bytes, for congestion control
	fin          bool
	ackEliciting bool
	inFlight     bool
	appLimited   bool
	mtuProbe     bool // a path MTU probe: no data, not in flight
	state        uint8
}

// sentRing holds sentPacket records indexed by packet number: the record
// of pn is at (head + pn - base) mod len. Packet numbers are consecutive,
// so this is a deque without per-packet allocation; it grows by doubling.
type sentRing struct {
	buf   []sentPacket
	head  int
	count int
	base  uint64 // packet number of buf[head]
}

func (r *sentRing) get(pn uint64) *sentPacket {
	if pn < r.base || pn-r.base >= uint64(r.count) {
		return nil
	}
	return &r.buf[(r.head+int(pn-r.base))&(len(r.buf)-1)]
}

// push appends the record of packet number base+count.
func (r *sentRing) push() *sentPacket {
	if r.count == len(r.buf) {
		n := max(2*len(r.buf), 256)
		nb := make([]sentPacket, n)
		for i := 0; i < r.count; i++ {
			nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
		}
		r.buf, r.head = nb, 0
	}
	p := &r.buf[(r.head+r.count)&(len(r.buf)-1)]
	*p = sentPacket{}
	r.count++
	return p
}

// popSettled drops records from the front that are no longer outstanding.
func (r *sentRing) popSettled() {
	for r.count > 0 && r.buf[r.head].state != pktOutstanding {
		r.head = (r.head + 1) & (len(r.buf) - 1)
		r.base++
		r.count--
	}
}

type retxRange struct {
	off uint64
	n   uint32
	fin bool
}

// sender is the sending half: the send buffer and what of it the peer
// holds, the records of the packets sent (numbers, sizes, delivery-rate
// state), loss detection (RFC 9002: packet and time thresholds), the probe
// timeout, the RTT estimate, congestion control and the pacer. It knows
// nothing of the Conn: what concerns others (the fate of path MTU probes,
// repeated probe timeouts) it tells its hooks, and the Conn builds the
// packets it records. Guarded by Conn.mu.
type sender struct {
	buf        byteRing // written bytes from una on
	una        uint64   // the peer holds every byte below una (cumulative ack)
	nxt        uint64   // first byte never sent
	end        uint64   // end of the bytes Write accepted
	finWritten bool     // CloseWrite was called: the stream ends at end
	finSent    bool
	finAcked   bool
	peerWindow uint64 // we may send offsets below it

	retx     []retxRange // lost data to send again, oldest first
	retxHead int

	ring         sentRing
	nextPN       uint64
	pathPN       uint64 // the first packet number sent on the current path
	hasAcked     bool
	largestAcked uint64
	holes        []uint64 // outstanding packet numbers below largestAcked, ascending

	bytesInFlight     int
	elicitingInFlight int
	lastElicitingAt   time.Duration
	ptoCount          int
	probes            int // probe packets owed after a PTO; they ignore cwnd and pacing
	lossTime          time.Duration

	// Delivery-rate sampling (draft-cheng-iccrg-delivery-rate-estimation).
	delivered       uint64
	deliveredAt     time.Duration
	firstSentAt     time.Duration
	appLimitedUntil uint64

	paceNext time.Duration

	// pinned: a batch being sealed reads the buffer from pin on (bodies
	// of a SplitTransport), so the writer must not reuse that room even
	// when it is acknowledged meanwhile.
	pinned bool
	pin    uint64

	rtt   rttEstimator
	cc    bbr
	stats *counters // the Conn's
	hooks senderHooks
}

// senderHooks hears what the sender learns that concerns the rest of the
// Conn: path MTU discovery (pmtu.go) follows its probes and the probe
// timeouts. They run with Conn.mu held, inside the sender's methods.
type senderHooks interface {
	onProbeAckedLocked(pn uint64)
	onProbeLostLocked(pn uint64)
	onRepeatedPTOLocked() // before the congestion window falls back
}

// newSender returns a sender with a send buffer of bufSize bytes for
// packets of mss bytes, counting into stats.
func newSender(bufSize, mss int, stats *counters, hooks senderHooks) sender {
	return sender{
		buf: newByteRing(bufSize),
		// Until the first ack, assume the peer's window is the smallest
		// any Conn has.
		peerWindow: minBuffer,
		cc:         newBBR(mss),
		stats:      stats,
		hooks:      hooks,
	}
}

// held is the lowest offset the buffer must keep: una, or pin below it.
func (s *sender) held() uint64 {
	if s.pinned && s.pin < s.una {
		return s.pin
	}
	return s.una
}

func (s *sender) hasRetx() bool { return s.retxHead < len(s.retx) }

// newDataReady reports whether never-sent bytes (or the FIN) may go out.
func (s *sender) newDataReady() bool {
	if s.nxt < s.end {
		return s.nxt < s.peerWindow
	}
	return s.finWritten && !s.finSent
}

// flowBlocked reports whether unsent data waits only for the peer's window.
func (s *sender) flowBlocked() bool { return s.nxt < s.end && s.nxt >= s.peerWindow }

func (s *sender) pushRetx(off uint64, n uint32, fin bool) {
	if s.retxHead == len(s.retx) {
		s.retx, s.retxHead = s.retx[:0], 0
	}
	s.retx = append(s.retx, retxRange{off, n, fin})
}

// nextRetx returns the next lost range still worth sending, trimmed to
// what the peer has not acknowledged cumulatively.
func (s *sender) nextRetx() (r *retxRange, ok bool) {
	for s.retxHead < len(s.retx) {
		r = &s.retx[s.retxHead]
		if end := r.off + uint64(r.n); end <= s.una {
			if !r.fin || s.finAcked {
				s.retxHead++
				continue
			}
			r.off, r.n = end, 0
		} else if r.off < s.una {
			r.n -= uint32(s.una - r.off)
			r.off = s.una
		}
		return r, true
	}
	return nil, false
}

// clearInFlight forgets every outstanding packet: called once the peer has
// acknowledged the whole stream, when nothing is left to recover.
func (s *sender) clearInFlight() {
	for i := 0; i < s.ring.count; i++ {
		p := &s.ring.buf[(s.ring.head+i)&(len(s.ring.buf)-1)]
		if p.state == pktOutstanding {
			p.state = pktAcked
		}
	}
	s.ring.popSettled()
	s.bytesInFlight, s.elicitingInFlight = 0, 0
	s.holes = s.holes[:0]
	s.retx, s.retxHead = s.retx[:0], 0
	s.lossTime = 0
	s.probes = 0
}

// recordSent fills p, the record of the packet numbered nextPN, of size
// bytes, and moves on to the next number. A packet that is not
// ack-eliciting is settled at once: nothing waits for its ack.
func (s *sender) recordSent(p *sentPacket, now time.Duration, size int, eliciting bool) {
	s.nextPN++
	s.stats.packetsSent++
	p.sentAt = now
	p.size = uint16(size)
	if !eliciting {
		p.state = pktAcked // nothing to wait for
		s.ring.popSettled()
		return
	}
	p.ackEliciting, p.inFlight = true, true
	if s.bytesInFlight == 0 {
		s.firstSentAt, s.deliveredAt = now, now
	}
	p.delivered, p.deliveredAt, p.firstSentAt = s.delivered, s.deliveredAt, s.firstSentAt
	p.appLimited = s.appLimitedUntil > 0
	s.bytesInFlight += size
	s.elicitingInFlight++
	s.lastElicitingAt = now
	// Pacing: allow a burst of one quantum after an idle period, and at
	// least what the timer's granularity makes us miss: Go timers may fire
	// a millisecond late, and a pacer that loses that credit sends below
	// its rate, which BBR then measures as the path's bandwidth.
	burst := max(s.cc.pacingInterval(s.cc.quantum()), pacerGranularity)
	if s.paceNext < now-burst {
		s.paceNext = now - burst
	}
	s.paceNext += s.cc.pacingInterval(size)
}

// recordProbe fills p, the record of the path MTU probe numbered nextPN, of
// size bytes: ack-eliciting, but outside congestion control and pacing.
func (s *sender) recordProbe(p *sentPacket, now time.Duration, size int) {
	s.nextPN++
	s.stats.packetsSent++
	p.sentAt, p.size = now, uint16(size)
	p.ackEliciting, p.mtuProbe = true, true
	s.elicitingInFlight++
	s.lastElicitingAt = now
}

// windowOpen reports whether the congestion window has room for another
// packet of size bytes.
func (s *sender) windowOpen(size int) bool { return s.bytesInFlight+size <= s.cc.cwnd }

// canSend reports whether a packet of size bytes may go out now: the
// congestion window has room and the pacer allows it.
func (s *sender) canSend(now time.Duration, size int) bool {
	return s.windowOpen(size) && s.paceNext <= now
}

// markAppLimited notes that nothing waits to be sent though the window
// allows: rate samples taken until what is in flight now is delivered do
// not measure the path.
func (s *sender) markAppLimited() {
	s.appLimitedUntil = max(s.delivered+uint64(s.bytesInFlight), 1)
}

// ackTally collects what one ACK frame newly acknowledged: the delivery-
// rate sample of its most recently sent packet, the RTT sample, and the
// bytes that left the network.
type ackTally struct {
	rs          rateSample
	priorTime   time.Duration // delivery time of the sample's packet when it was sent
	sendElapsed time.Duration
	rtt         time.Duration // of the largest acknowledged, if ack-eliciting; or 0
	acked       int           // in-flight bytes newly acknowledged
	progress    bool          // some packet was newly acknowledged
}

// onAck processes an ACK frame. It reports whether anything was newly
// acknowledged (packets, stream bytes, or window), and whether the
// cumulative acknowledgement freed room in the send buffer.
func (s *sender) onAck(f *frame, now time.Duration) (progress, freed bool) {
	if f.largest >= s.nextPN {
		s.stats.badFrames++
		return false, false
	}
	var t ackTally
	s.ackNewRanges(f, now, &t)
	s.ackHoles(f, now, &t)
	if t.rtt > 0 {
		delay := min(time.Duration(f.ackDelay)*time.Microsecond, maxAckDelay)
		s.rtt.update(t.rtt, delay)
	}
	if t.progress {
		s.ptoCount = 0
	}
	if s.appLimitedUntil > 0 && s.delivered > s.appLimitedUntil {
		s.appLimitedUntil = 0
	}
	freed, grown := s.onStreamAck(f)
	s.detectLosses(now)
	s.ring.popSettled()
	if t.rs.valid {
		ackElapsed := now - t.priorTime
		t.rs.interval = max(t.sendElapsed, ackElapsed)
		t.rs.delivered = s.delivered - t.rs.priorDelivered
	}
	s.cc.onAck(now, t.rs, s.delivered, t.rtt, s.rtt.srtt(), s.bytesInFlight, t.acked)
	return t.progress || freed || grown, freed
}

// ackNewRanges acknowledges the packet numbers of f above the previous
// largest acknowledged, and remembers the outstanding ones in between as
// holes.
func (s *sender) ackNewRanges(f *frame, now time.Duration, t *ackTally) {
	if s.hasAcked && f.largest <= s.largestAcked {
		return
	}
	cur := s.ring.base
	if s.hasAcked && s.largestAcked+1 > cur {
		cur = s.largestAcked + 1
	}
	for i := f.nRanges - 1; i >= 0; i-- {
		r := f.ranges[i]
		if r.hi < cur {
			continue
		}
		lo := max(r.lo, cur)
		for pn := cur; pn < lo; pn++ {
			if p := s.ring.get(pn); p != nil && p.state == pktOutstanding && p.ackEliciting {
				s.holes = append(s.holes, pn)
			}
		}
		for pn := lo; pn <= r.hi; pn++ {
			s.ackPacket(pn, f.largest, now, t)
		}
		cur = r.hi + 1
	}
	s.hasAcked, s.largestAcked = true, f.largest
}

// ackHoles acknowledges the holes that f fills (reordering, lost acks) and
// forgets those that are no longer outstanding.
func (s *sender) ackHoles(f *frame, now time.Duration, t *ackTally) {
	k := 0
	for _, pn := range s.holes {
		if f.contains(pn) {
			s.ackPacket(pn, f.largest, now, t)
			continue
		}
		if p := s.ring.get(pn); p != nil && p.state == pktOutstanding {
			s.holes[k] = pn
			k++
		}
	}
	s.holes = s.holes[:k]
}

// ackPacket settles packet pn as acknowledged by an ACK frame whose
// largest number is largest, and adds it to t. A packet declared lost
// before is counted as a spurious retransmission.
func (s *sender) ackPacket(pn, largest uint64, now time.Duration, t *ackTally) {
	p := s.ring.get(pn)
	if p == nil {
		return
	}
	if p.state != pktOutstanding {
		if p.state == pktLost {
			p.state = pktAcked
			s.stats.spurious++
		}
		return
	}
	p.state = pktAcked
	t.progress = true
	if p.ackEliciting {
		s.elicitingInFlight--
	}
	if p.mtuProbe {
		s.hooks.onProbeAckedLocked(pn)
	}
	// Any ack-eliciting packet sent on the current path gives an RTT
	// sample, a path MTU probe too: the first packets of a session are
	// probes (pmtu.go).
	if pn == largest && p.ackEliciting && pn >= s.pathPN {
		t.rtt = now - p.sentAt
	}
	if !p.inFlight {
		return
	}
	s.bytesInFlight -= int(p.size)
	t.acked += int(p.size)
	s.delivered += uint64(p.size)
	s.deliveredAt = now
	if !t.rs.valid || p.delivered >= t.rs.priorDelivered {
		t.rs.valid = true
		t.rs.priorDelivered = p.delivered
		t.rs.appLimited = p.appLimited
		t.priorTime = p.deliveredAt
		t.sendElapsed = p.sentAt - p.firstSentAt
		s.firstSentAt = p.sentAt
	}
}

// onStreamAck applies an ACK frame's cumulative stream acknowledgement and
// flow-control window. It reports whether una moved (room was freed) and
// whether the window grew.
func (s *sender) onStreamAck(f *frame) (freed, grown bool) {
	limit := s.nxt
	if s.finSent {
		limit = s.end + 1
	}
	if f.stream > limit {
		s.stats.badFrames++
	} else if f.stream > s.una {
		s.una = min(f.stream, s.end)
		if s.finSent && f.stream == s.end+1 {
			s.finAcked = true
			s.clearInFlight()
		}
		freed = true
	}
	if f.window > s.peerWindow {
		s.peerWindow = f.window
		grown = true
	}
	return freed, grown
}

// onPeerDone settles the whole stream: the peer's DONE says it holds all
// of it, FIN included.
func (s *sender) onPeerDone() {
	s.una = s.end
	s.finAcked = true
	s.clearInFlight()
}

// detectLosses declares holes lost by the packet threshold (3) or the
// time threshold (9/8 RTT) of RFC 9002 and queues their data again.
func (s *sender) detectLosses(now time.Duration) {
	s.lossTime = 0
	if !s.hasAcked {
		return
	}
	delay := s.rtt.lossDelay()
	k := 0
	for ; k < len(s.holes); k++ {
		pn := s.holes[k]
		p := s.ring.get(pn)
		if p == nil || p.state != pktOutstanding {
			continue
		}
		if s.largestAcked < pn+3 && now-p.sentAt < delay {
			s.lossTime = p.sentAt + delay
			break
		}
		p.state = pktLost
		s.stats.lost++
		if p.ackEliciting {
			s.elicitingInFlight--
		}
		if p.mtuProbe {
			s.hooks.onProbeLostLocked(pn)
		}
		if p.inFlight {
			s.bytesInFlight -= int(p.size)
			s.cc.onLoss(int(p.size))
		}
		if (p.n > 0 && p.off+uint64(p.n) > s.una) || (p.fin && !s.finAcked) {
			s.pushRetx(p.off, p.n, p.fin)
		}
	}
	s.holes = s.holes[:copy(s.holes, s.holes[k:])]
}

// onPTO runs when the probe timeout fires: send up to two probes,
// carrying the oldest unacknowledged data again if there is any. From the
// third timeout in a row the path may have changed: the hooks hear of it,
// and the congestion window falls back to its minimum.
func (s *sender) onPTO() {
	s.ptoCount++
	s.probes = 2
	if s.ptoCount >= 3 {
		s.hooks.onRepeatedPTOLocked()
		s.cc.onPersistentCongestion()
	}
	if s.hasRetx() || s.newDataReady() {
		return
	}
	for i := 0; i < s.ring.count; i++ {
		p := &s.ring.buf[(s.ring.head+i)&(len(s.ring.buf)-1)]
		if p.state == pktOutstanding && (p.n > 0 || p.fin) && (p.off+uint64(p.n) > s.una || (p.fin && !s.finAcked)) {
			s.pushRetx(p.off, p.n, p.fin)
			return
		}
	}
}

// onPathChange starts congestion control and the RTT estimate over for a
// new path, with packets of mss bytes: what was learnt of the old path
// says nothing of the new one. Packets still in flight stay counted until
// they are acknowledged or lost, but give no RTT sample.
func (s *sender) onPathChange(mss int) {
	s.cc = newBBR(mss)
	s.rtt = rttEstimator{}
	s.pathPN = s.nextPN
	s.ptoCount = 0
}

// ptoDeadline is when the probe timeout fires, or 0.
func (s *sender) ptoDeadline() time.Duration {
	if s.elicitingInFlight == 0 && !s.flowBlocked() {
		return 0
	}
	d := s.rtt.pto() << min(s.ptoCount, 16)
	return s.lastElicitingAt + min(d, maxPTO)
}

func (f *frame) contains(pn uint64) bool {
	for i := 0; i < f.nRanges; i++ {
		if pn > f.ranges[i].hi {
			return false
		}
		if pn >= f.ranges[i].lo {
			return true
		}
	}
	return false
}
