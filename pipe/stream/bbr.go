package stream

import (
	"math"
	"time"
)

// bbr is a congestion controller in the spirit of BBR (Cardwell et al.,
// draft-cardwell-iccrg-bbr-congestion-control): it estimates the bottleneck
// bandwidth (windowed max of delivery-rate samples) and the path's minimum
// RTT, paces at gain × bandwidth and caps the data in flight at
// gain × bandwidth × min RTT. Isolated random losses do not move either
// estimate, so 1% random loss costs ~1% of throughput instead of halving the
// window as Reno/CUBIC do.
//
// It still backs off from a congested path:
//   - the in-flight cap (2 × BDP in steady state) bounds the queue it can
//     build to about one BDP, so growth of the RTT beyond min RTT does not
//     feed more data in;
//   - sustained high loss (more than highLossRate of the data of two
//     consecutive rounds) sets inflightHi, an extra cap at 70% of what was
//     in flight, and ends startup; the cap is raised again by 25% per
//     round without high loss (in the spirit of BBRv2's inflight_hi).
//
// Unlike BBR it has no ProbeRTT phase: the min-RTT estimate expires after
// minRTTWindow and is replaced by the next sample.
type bbr struct {
	mss int

	mode       int
	pacingGain float64
	cwndGain   float64

	// Bandwidth filter: the largest sample of each of the last bwRounds
	// rounds, in bytes per second.
	bwSlots [bwRounds]struct {
		round uint64
		bw    float64
	}
	maxBW float64

	minRTT   time.Duration
	minRTTAt time.Duration

	round              uint64
	nextRoundDelivered uint64

	fullBW      float64
	fullBWCount int
	filledPipe  bool

	cycleIndex int
	cycleStart time.Duration

	roundLost, roundAcked int
	highLossRounds        int
	inflightHi            int // 0: no cap

	// Ack aggregation (Linux BBR's extra_acked): how much more data acks
	// delivered in a burst than the bandwidth estimate explains. Delayed,
	// decimated or batched acks and scheduling stalls look like this; the
	// window must cover it or the sender idles between bursts.
	aggEpochStart time.Duration
	aggEpochAcked int
	extraAcked    [2]int // max per half of the window
	extraRound    uint64

	cwnd       int
	pacingRate float64 // bytes per second
}

const (
	bbrStartup = iota
	bbrDrain
	bbrProbeBW

	bwRounds       = 10
	minRTTWindow   = 10 * time.Second
	startupGain    = 2.885 // 2/ln 2: doubles the sending rate every round
	probeCwndGain  = 2
	initialCwndPkt = 32
	minCwndPkt     = 4
	highLossRate   = 0.10
)

var probeGains = [...]float64{1.25, 0.75, 1, 1, 1, 1, 1, 1}

func newBBR(mss int) bbr {
	b := bbr{
		mss:        mss,
		mode:       bbrStartup,
		pacingGain: startupGain,
		cwndGain:   startupGain,
		cwnd:       initialCwndPkt * mss,
	}
	b.pacingRate = startupGain * float64(b.cwnd) / initialRTT.Seconds()
	return b
}

// rateSample is one delivery-rate measurement, taken per ACK from the most
// recently sent packet it acknowledged.
type rateSample struct {
	valid          bool
	priorDelivered uint64 // connection's delivered count when that packet was sent
	delivered      uint64 // bytes delivered over interval
	interval       time.Duration
	appLimited     bool
}

// onAck updates the model after an ACK frame was processed.
// delivered is the connection's total delivered byte count, rtt the RTT
// sample of this ack (0 if none), inFlight the bytes still in flight.
func (b *bbr) onAck(now time.Duration, rs rateSample, delivered uint64, rtt, srtt time.Duration, inFlight, acked int) {
	if rtt > 0 && (b.minRTT == 0 || rtt <= b.minRTT || now-b.minRTTAt > minRTTWindow) {
		b.minRTT, b.minRTTAt = rtt, now
	}
	roundStart := false
	if rs.valid && rs.priorDelivered >= b.nextRoundDelivered {
		b.nextRoundDelivered = delivered
		b.round++
		roundStart = true
		b.endRound(inFlight)
	}
	if rs.valid && rs.interval > 0 && (rs.interval >= b.minRTT || b.minRTT == 0) {
		bw := float64(rs.delivered) / rs.interval.Seconds()
		if !rs.appLimited || bw >= b.maxBW {
			b.addBW(bw)
		}
	}

	b.updateAckAggregation(now, acked)

	switch b.mode {
	case bbrStartup:
		if roundStart {
			if b.maxBW >= b.fullBW*1.25 {
				b.fullBW, b.fullBWCount = b.maxBW, 0
			} else if !rs.appLimited {
				b.fullBWCount++
			}
			if b.fullBWCount >= 3 {
				b.filledPipe = true
			}
		}
		if b.filledPipe {
			b.mode, b.pacingGain, b.cwndGain = bbrDrain, 1/startupGain, startupGain
		}
	case bbrDrain:
		if inFlight <= b.bdp() {
			b.enterProbeBW(now)
		}
	case bbrProbeBW:
		b.advanceCycle(now, inFlight)
	}
	b.setRateAndWindow(srtt, acked)
}

func (b *bbr) enterProbeBW(now time.Duration) {
	b.mode = bbrProbeBW
	b.cwndGain = probeCwndGain
	// Start anywhere but the draining phase (as BBR does), deterministically.
	b.cycleIndex = 2 + int(b.round%uint64(len(probeGains)-2))
	b.cycleStart = now
	b.pacingGain = probeGains[b.cycleIndex]
}

func (b *bbr) advanceCycle(now time.Duration, inFlight int) {
	elapsed := now-b.cycleStart > b.minRTT
	next := elapsed
	switch probeGains[b.cycleIndex] {
	case 1.25:
		next = elapsed && inFlight >= int(1.25*float64(b.bdp()))
		if now-b.cycleStart > 2*b.minRTT+timerGrain {
			next = true // could not fill the pipe; do not probe forever
		}
	case 0.75:
		next = elapsed || inFlight <= b.bdp()
	}
	if next {
		b.cycleIndex = (b.cycleIndex + 1) % len(probeGains)
		b.cycleStart = now
		b.pacingGain = probeGains[b.cycleIndex]
	}
}

func (b *bbr) endRound(inFlight int) {
	total := b.roundLost + b.roundAcked
	high := total > 0 && b.roundLost >= 3*b.mss && float64(b.roundLost) > highLossRate*float64(total)
	b.roundLost, b.roundAcked = 0, 0
	if !high {
		b.highLossRounds = 0
		if b.inflightHi > 0 {
			b.inflightHi += b.inflightHi / 4
			if b.inflightHi > 4*b.cwndTarget() {
				b.inflightHi = 0
			}
		}
		return
	}
	b.highLossRounds++
	if b.highLossRounds < 2 {
		return
	}
	b.highLossRounds = 0
	cap := max(inFlight, b.cwnd) * 7 / 10
	if b.inflightHi == 0 || cap < b.inflightHi {
		b.inflightHi = cap
	}
	b.inflightHi = max(b.inflightHi, minCwndPkt*b.mss)
	if !b.filledPipe {
		b.filledPipe = true
	}
}

func (b *bbr) updateAckAggregation(now time.Duration, acked int) {
	if acked == 0 || b.maxBW == 0 {
		return
	}
	if b.round >= b.extraRound+bwRounds/2 {
		b.extraRound = b.round
		b.extraAcked[0], b.extraAcked[1] = b.extraAcked[1], 0
	}
	expected := int(b.maxBW * (now - b.aggEpochStart).Seconds())
	if b.aggEpochStart == 0 || b.aggEpochAcked <= expected {
		b.aggEpochStart, b.aggEpochAcked, expected = now, 0, 0
	}
	b.aggEpochAcked += acked
	extra := min(b.aggEpochAcked-expected, b.cwnd, int(b.maxBW*0.1)) // 100 ms of data at most
	b.extraAcked[1] = max(b.extraAcked[1], extra)
}

func (b *bbr) addBW(bw float64) {
	slot := &b.bwSlots[b.round%bwRounds]
	if slot.round != b.round {
		slot.round, slot.bw = b.round, 0
	}
	if bw > slot.bw {
		slot.bw = bw
	}
	b.maxBW = 0
	for i := range b.bwSlots {
		s := b.bwSlots[i]
		if s.round+bwRounds > b.round && s.bw > b.maxBW {
			b.maxBW = s.bw
		}
	}
}

func (b *bbr) bdp() int {
	if b.maxBW == 0 || b.minRTT == 0 {
		return initialCwndPkt * b.mss
	}
	// The window covers at least one timer granularity of data: below
	// that the sender cannot refill the pipe between wake-ups (loopback and
	// LAN paths have min RTTs of tens of µs but deliver acks in batches).
	return int(b.maxBW * max(b.minRTT, timerGrain).Seconds())
}

// quantum is the burst the pacer may send at once: about 1 ms of data.
func (b *bbr) quantum() int {
	return min(max(int(b.pacingRate/1000), 2*b.mss), 64<<10)
}

func (b *bbr) cwndTarget() int {
	return int(b.cwndGain*float64(b.bdp())) + 3*b.quantum() + max(b.extraAcked[0], b.extraAcked[1])
}

func (b *bbr) setRateAndWindow(srtt time.Duration, acked int) {
	if b.maxBW > 0 {
		rate := b.pacingGain * b.maxBW
		// In startup never slow down: a lower estimate is noise.
		if b.filledPipe || rate > b.pacingRate {
			b.pacingRate = rate
		}
	} else if srtt > 0 {
		b.pacingRate = startupGain * float64(b.cwnd) / srtt.Seconds()
	}
	target := b.cwndTarget()
	if b.filledPipe {
		b.cwnd = min(b.cwnd+acked, target)
	} else if b.cwnd < target || b.maxBW == 0 {
		b.cwnd += acked
	}
	if b.inflightHi > 0 {
		b.cwnd = min(b.cwnd, b.inflightHi)
	}
	b.cwnd = max(b.cwnd, minCwndPkt*b.mss)
}

func (b *bbr) onLoss(bytes int)  { b.roundLost += bytes }
func (b *bbr) onAcked(bytes int) { b.roundAcked += bytes }

// onPersistentCongestion is called when probe timeouts keep firing: the
// path may have changed completely, so fall back to the minimum window.
func (b *bbr) onPersistentCongestion() {
	b.cwnd = minCwndPkt * b.mss
}

// pacingInterval is the time one packet of size bytes occupies at the
// current pacing rate.
func (b *bbr) pacingInterval(size int) time.Duration {
	if b.pacingRate <= 0 || math.IsInf(b.pacingRate, 0) {
		return 0
	}
	return time.Duration(float64(size) / b.pacingRate * 1e9)
}

// setMSS changes the packet size after a path MTU probe succeeded; the
// window must hold a few packets of the new size.
func (b *bbr) setMSS(mss int) {
	b.mss = mss
	b.cwnd = max(b.cwnd, minCwndPkt*mss)
}
