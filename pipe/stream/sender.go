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

// sendState is the sending half. Guarded by Conn.mu.
type sendState struct {
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
}

// held is the lowest offset the buffer must keep: una, or pin below it.
func (s *sendState) held() uint64 {
	if s.pinned && s.pin < s.una {
		return s.pin
	}
	return s.una
}

func (s *sendState) hasRetx() bool { return s.retxHead < len(s.retx) }

// newDataReady reports whether never-sent bytes (or the FIN) may go out.
func (s *sendState) newDataReady() bool {
	if s.nxt < s.end {
		return s.nxt < s.peerWindow
	}
	return s.finWritten && !s.finSent
}

// flowBlocked reports whether unsent data waits only for the peer's window.
func (s *sendState) flowBlocked() bool { return s.nxt < s.end && s.nxt >= s.peerWindow }

func (s *sendState) pushRetx(off uint64, n uint32, fin bool) {
	if s.retxHead == len(s.retx) {
		s.retx, s.retxHead = s.retx[:0], 0
	}
	s.retx = append(s.retx, retxRange{off, n, fin})
}

// nextRetx returns the next lost range still worth sending, trimmed to
// what the peer has not acknowledged cumulatively.
func (s *sendState) nextRetx() (r *retxRange, ok bool) {
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
func (s *sendState) clearInFlight() {
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

// onAck processes an ACK frame. It reports whether anything was newly
// acknowledged.
func (c *Conn) onAckLocked(f *frame, now time.Duration) (progress bool) {
	s := &c.snd
	if f.largest >= s.nextPN {
		c.stats.badFrames++
		return false
	}
	var rs rateSample
	var priorTime, sendElapsed time.Duration
	var rtt time.Duration
	acked := 0

	ackOne := func(pn uint64) {
		p := s.ring.get(pn)
		if p == nil {
			return
		}
		if p.state != pktOutstanding {
			if p.state == pktLost {
				p.state = pktAcked
				c.stats.spurious++
			}
			return
		}
		p.state = pktAcked
		progress = true
		if p.ackEliciting {
			s.elicitingInFlight--
		}
		if p.mtuProbe {
			c.onProbeAckedLocked(pn)
		}
		if !p.inFlight {
			return
		}
		s.bytesInFlight -= int(p.size)
		acked += int(p.size)
		s.delivered += uint64(p.size)
		s.deliveredAt = now
		if !rs.valid || p.delivered >= rs.priorDelivered {
			rs.valid = true
			rs.priorDelivered = p.delivered
			rs.appLimited = p.appLimited
			priorTime = p.deliveredAt
			sendElapsed = p.sentAt - p.firstSentAt
			s.firstSentAt = p.sentAt
		}
		if pn == f.largest && p.ackEliciting {
			rtt = now - p.sentAt
		}
	}

	// Numbers above the previous largest are new: ack the ranges, and
	// remember the outstanding ones in between as holes.
	if !s.hasAcked || f.largest > s.largestAcked {
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
				ackOne(pn)
			}
			cur = r.hi + 1
		}
		s.hasAcked, s.largestAcked = true, f.largest
	}
	// Older holes may be filled by this ack (reordering, lost acks).
	k := 0
	for _, pn := range s.holes {
		if f.contains(pn) {
			ackOne(pn)
			continue
		}
		if p := s.ring.get(pn); p != nil && p.state == pktOutstanding {
			s.holes[k] = pn
			k++
		}
	}
	s.holes = s.holes[:k]

	if rtt > 0 {
		delay := min(time.Duration(f.ackDelay)*time.Microsecond, maxAckDelay)
		c.rtt.update(rtt, delay)
	}
	if progress {
		s.ptoCount = 0
	}
	if s.appLimitedUntil > 0 && s.delivered > s.appLimitedUntil {
		s.appLimitedUntil = 0
	}

	// Cumulative stream acknowledgement and flow-control window.
	limit := s.nxt
	if s.finSent {
		limit = s.end + 1
	}
	if f.stream > limit {
		c.stats.badFrames++
	} else if f.stream > s.una {
		s.una = min(f.stream, s.end)
		if s.finSent && f.stream == s.end+1 {
			s.finAcked = true
			s.clearInFlight()
		}
		c.writable.Broadcast()
		progress = true
	}
	if f.window > s.peerWindow {
		s.peerWindow = f.window
		progress = true
	}

	c.detectLossesLocked(now)
	s.ring.popSettled()

	if rs.valid {
		ackElapsed := now - priorTime
		rs.interval = max(sendElapsed, ackElapsed)
		rs.delivered = s.delivered - rs.priorDelivered
	}
	c.cc.onAck(now, rs, s.delivered, rtt, c.rtt.srtt(), s.bytesInFlight, acked)
	return progress
}

// detectLossesLocked declares holes lost by the packet threshold (3) or the
// time threshold (9/8 RTT) of RFC 9002 and queues their data again.
func (c *Conn) detectLossesLocked(now time.Duration) {
	s := &c.snd
	s.lossTime = 0
	if !s.hasAcked {
		return
	}
	delay := c.rtt.lossDelay()
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
		c.stats.lost++
		if p.ackEliciting {
			s.elicitingInFlight--
		}
		if p.mtuProbe {
			c.onProbeLostLocked(pn)
		}
		if p.inFlight {
			s.bytesInFlight -= int(p.size)
			c.cc.onLoss(int(p.size))
		}
		if (p.n > 0 && p.off+uint64(p.n) > s.una) || (p.fin && !s.finAcked) {
			s.pushRetx(p.off, p.n, p.fin)
		}
	}
	s.holes = s.holes[:copy(s.holes, s.holes[k:])]
}

// onPTOLocked runs when the probe timeout fires: send up to two probes,
// carrying the oldest unacknowledged data again if there is any.
func (c *Conn) onPTOLocked() {
	s := &c.snd
	s.ptoCount++
	s.probes = 2
	if s.ptoCount >= 3 {
		c.onRepeatedPTOLocked()
	}
	if s.ptoCount >= 3 {
		c.cc.onPersistentCongestion()
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

// ptoDeadline is when the probe timeout fires, or 0.
func (c *Conn) ptoDeadline() time.Duration {
	s := &c.snd
	if s.elicitingInFlight == 0 && !s.flowBlocked() {
		return 0
	}
	d := c.rtt.pto() << min(s.ptoCount, 16)
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
