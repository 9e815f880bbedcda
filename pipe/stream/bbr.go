// Congestion control: the bbr controller (bandwidth and min-RTT model,
// pacing rate and window) and its detection of token-bucket policers.

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
// estimate, so random loss costs throughput only in proportion to what is
// lost, instead of halving the window as Reno/CUBIC do.
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
// minRTTWindow and is replaced by the next sample. And on a path with a
// tiny round trip (loopback, a LAN) startup is limited by its window, not
// paced (fastStart), so a session reaches the path's rate within a few
// round trips.
//
// Token-bucket policers (the rendezvous relay, ISPs) need rules of their
// own, because there the loss depends on the sending rate, and the
// delivery rate over short intervals overstates the policed rate whenever
// the bucket has saved up tokens: the bandwidth filter settles above it
// and the policer drops a large share of the packets. Like Linux BBR
// (tcp_bbr.c, "lt_bw") the controller detects them and then paces at the
// long-term delivery rate; see ltSample. Also, a startup round that loses
// most of its data (severeLossRate) ends startup and restarts the
// bandwidth filter from what the round delivered: the burst that a full
// bucket lets through must not be taken for the path's rate.
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
	roundStartAt          time.Duration
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

	lost         uint64 // bytes declared lost, in all
	lostSinceAck int    // bytes declared lost since the last onAck
	lt           ltState

	cwnd        int
	pacingRate  float64 // bytes per second
	nominalRate bool    // pacingRate is the initial one, from initialPacingRTT
}

// ltState is the policer detection's (ltSample).
type ltState struct {
	// The open sampling interval: the connection's counters when it began,
	// and the smoothed RTTs seen in it.
	sampling       bool
	startAt        time.Duration
	startDelivered uint64
	startLost      uint64
	startProbeBW   bool
	srttSum        time.Duration
	srttN          int
	rounds         int     // in the interval, or in the period at a policed rate
	prevBW         float64 // the rate of the last interval that lost ltLossRate (0: none)

	// A period at a policed rate, which is a trial: the loss counts from
	// the moment (checkAt) what was in flight when it began has been
	// acknowledged or lost (settled bytes of delivered+lost).
	useBW      bool
	bw         float64 // bytes/s
	since      time.Duration
	trigger    float64 // the loss rate of the interval (or failed trial) that began it
	retries    int     // failed trials retried at the rate they delivered
	bwBefore   float64 // the filter's bandwidth before the first trial
	settled    uint64
	checkFrom  bool
	checkAt    time.Duration
	checkDeliv uint64
	checkLost  uint64

	// What was learnt of the path.
	policed   float64       // a rate that a trial proved to be a policer's (0: none)
	probeCap  float64       // after a period, the most the model's bandwidth may be (0: no cap)...
	capUntil  time.Duration // ...until then
	notBefore time.Duration // after a failed trial: no trial by our rules (below ltLossRate) before then
	backoff   time.Duration // the wait after the next failed trial
	trials    int           // periods begun, retries included
	failed    int           // trials that failed for good
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
	// Before the first RTT sample, pace as if the RTT were 1 ms, as Linux
	// BBR does without one (bbr_init_pacing_rate_from_rtt): the initial
	// window goes out in about a millisecond, where the 100 ms RTT assumed
	// for timeouts would spread it over a tenth of a second, and the first
	// rate samples would measure that slow start instead of the path.
	initialPacingRTT = time.Millisecond
	fastStartRTT     = 2 * time.Millisecond // fastStart
	hostOnlyMSS      = 9216                 // fastStart: the largest jumbo frames carry about 9 KiB
	highLossRate     = 0.10
	severeLossRate   = 0.5

	// Policer detection (ltSample). Linux tcp_bbr.c's bbr_lt_* values:
	ltMinRounds = 4         // rounds an interval lasts at least (4× at most)
	ltLossRate  = 50. / 256 // the loss rate (lost/delivered) of intervals that look policed
	ltBWRatio   = 1. / 8    // two rates agree within this ratio,
	ltBWDiff    = 4000 / 8  // or within this many bytes/s (4 kbit/s)
	ltUseRounds = 48        // rounds of ProbeBW at a policed rate before probing again
	// and ours:
	ltMinTime       = 50 * time.Millisecond // an interval or trial lasts at least this: a rate over less is burst noise
	ltUseTime       = time.Second           // a period at a policed rate lasts at least this: short RTTs make short rounds
	ltTrialLossRate = 1. / 32               // the least loss rate of an interval that begins a trial
	ltTrialLost     = 8                     // packets lost that are enough to judge a trial failed
	ltMaxRetries    = 3                     // retries of a failed trial at the rate it delivered
	ltQueueSlack    = 5 * time.Millisecond  // a mean smoothed RTT up to minRTT×5/4 + this is no queue
	ltProbeCap      = 1.25                  // after a period the model's bandwidth is at most this × the policed rate
	ltBackoff       = 2 * time.Second       // after a failed trial no other of ours for this long, doubling
	ltMaxBackoff    = 30 * time.Second      // up to this
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
	b.pacingRate, b.nominalRate = startupGain*float64(b.cwnd)/initialPacingRTT.Seconds(), true
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

// onAck updates the model after an ACK frame was processed: acked is the
// bytes it newly acknowledged, delivered the connection's total delivered
// byte count, rtt the RTT sample of this ack (0 if none), inFlight the
// bytes still in flight.
func (b *bbr) onAck(now time.Duration, rs rateSample, delivered uint64, rtt, srtt time.Duration, inFlight, acked int) {
	b.roundAcked += acked
	if rtt > 0 && (b.minRTT == 0 || rtt <= b.minRTT || now-b.minRTTAt > minRTTWindow) {
		b.minRTT, b.minRTTAt = rtt, now
	}
	roundStart := false
	if rs.valid && rs.priorDelivered >= b.nextRoundDelivered {
		b.nextRoundDelivered = delivered
		b.round++
		roundStart = true
		b.endRound(now, inFlight)
	}
	b.ltSample(now, rs, delivered, roundStart, srtt, inFlight)
	b.lostSinceAck = 0
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
	b.pacingGain = b.cycleGain()
}

// cycleGain is the pacing gain of the current ProbeBW phase: none but 1
// while policed, where any more is dropped and any less is wasted.
func (b *bbr) cycleGain() float64 {
	if b.lt.useBW {
		return 1
	}
	return probeGains[b.cycleIndex]
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
		b.pacingGain = b.cycleGain()
	}
}

func (b *bbr) endRound(now time.Duration, inFlight int) {
	total := b.roundLost + b.roundAcked
	high := total > 0 && b.roundLost >= 3*b.mss && float64(b.roundLost) > highLossRate*float64(total)
	severe := high && float64(b.roundLost) >= severeLossRate*float64(total)
	roundRate := 0.0
	if d := now - b.roundStartAt; d > 0 {
		roundRate = float64(b.roundAcked) / d.Seconds()
	}
	b.roundLost, b.roundAcked, b.roundStartAt = 0, 0, now
	if severe && !b.filledPipe && roundRate > 0 {
		// Startup overshot by far, typically once a policer's full bucket
		// ran dry: the filter holds the rate of that burst. What this round
		// delivered is what the path carries; every round more at the
		// startup rate would be mostly dropped.
		b.restartBW(roundRate)
		b.filledPipe = true
	}
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

// restartBW empties the bandwidth filter but for one sample, bw.
func (b *bbr) restartBW(bw float64) {
	for i := range b.bwSlots {
		b.bwSlots[i].bw = 0
	}
	b.bwSlots[b.round%bwRounds].round = b.round
	b.bwSlots[b.round%bwRounds].bw = bw
	b.maxBW = bw
}

func (b *bbr) updateAckAggregation(now time.Duration, acked int) {
	if acked == 0 || b.maxBW == 0 {
		return
	}
	if b.round >= b.extraRound+bwRounds/2 {
		b.extraRound = b.round
		b.extraAcked[0], b.extraAcked[1] = b.extraAcked[1], 0
	}
	expected := int(b.bw() * (now - b.aggEpochStart).Seconds())
	if b.aggEpochStart == 0 || b.aggEpochAcked <= expected {
		b.aggEpochStart, b.aggEpochAcked, expected = now, 0, 0
	}
	b.aggEpochAcked += acked
	extra := min(b.aggEpochAcked-expected, b.cwnd, int(b.bw()*0.1)) // 100 ms of data at most
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

// bw is the bandwidth the model uses: the policed rate while policed,
// else the filter's maximum.
func (b *bbr) bw() float64 {
	if b.lt.useBW {
		return b.lt.bw
	}
	if b.lt.probeCap > 0 {
		return min(b.maxBW, b.lt.probeCap)
	}
	return b.maxBW
}

func (b *bbr) bdp() int {
	if b.bw() == 0 || b.minRTT == 0 {
		return initialCwndPkt * b.mss
	}
	// The window covers at least one timer granularity of data: below
	// that the sender cannot refill the pipe between wake-ups (loopback and
	// LAN paths have min RTTs of tens of µs but deliver acks in batches).
	return int(b.bw() * max(b.minRTT, timerGrain).Seconds())
}

// quantum is the burst the pacer may send at once: about 1 ms of data.
func (b *bbr) quantum() int {
	return min(max(int(b.pacingRate/1000), 2*b.mss), 64<<10)
}

func (b *bbr) cwndTarget() int {
	return int(b.cwndGain*float64(b.bdp())) + 3*b.quantum() + max(b.extraAcked[0], b.extraAcked[1])
}

func (b *bbr) setRateAndWindow(srtt time.Duration, acked int) {
	if b.fastStart() {
		b.cwnd = max(b.cwnd, initialCwndPkt*b.mss)
	}
	b.setPacingRate(srtt)
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

// fastStart reports whether startup runs fast: on a path whose min RTT is
// below fastStartRTT (loopback, a LAN), or that carries packets larger
// than any link's frames (above hostOnlyMSS: loopback, whose round trip a
// busy host can stretch past fastStartRTT), the window is at least
// initialCwndPkt packets of the current size (which grows after the path
// MTU probes of the first round trip: 64 KiB on loopback, as TCP's
// initial window counts packets), and the pacing rate is at least what
// the window allows, gain × cwnd / srtt, so that the window, doubling
// every round, is the limit, as in TCP's slow start. Pacing a round trip
// that short gains nothing (the pacer's bursts already cover it), while
// each pacer wait costs a timer's wake-up (a millisecond or more in Go's
// runtime), several times the round trip: startup would take many
// milliseconds to reach the path's rate instead of a few round trips. On
// longer paths startup paces as BBR does.
func (b *bbr) fastStart() bool {
	return !b.filledPipe && b.minRTT > 0 && (b.minRTT < fastStartRTT || b.mss > hostOnlyMSS)
}

// setPacingRate sets the pacing rate from the model: gain × bandwidth,
// or before the first bandwidth sample gain × cwnd / srtt (see also
// fastStart).
func (b *bbr) setPacingRate(srtt time.Duration) {
	if b.minRTT == 0 {
		return // the initial rate holds until the first RTT sample
	}
	if b.nominalRate {
		// The initial rate assumed an RTT; startup's rule below must not
		// keep it on a path slower than it.
		b.pacingRate, b.nominalRate = 0, false
	}
	rate := b.pacingRate
	if b.bw() > 0 {
		rate = b.pacingGain * b.bw()
	} else if b.minRTT > 0 {
		rate = startupGain * float64(b.cwnd) / srtt.Seconds()
	}
	if b.fastStart() {
		rate = max(rate, startupGain*float64(b.cwnd)/max(srtt, b.minRTT).Seconds())
	}
	if !b.filledPipe {
		rate = max(rate, b.pacingRate) // in startup never slow down: a lower estimate is noise
	}
	b.pacingRate = rate
}

func (b *bbr) onLoss(bytes int) {
	b.roundLost += bytes
	b.lost += uint64(bytes)
	b.lostSinceAck += bytes
}

// ltSample detects token-bucket policers, by the rules of Linux BBR
// (bbr_lt_bw_sampling) and a trial of ours that tells a policer from
// random loss:
//   - An interval begins at a loss (so that the policer's bucket is empty
//     and saved-up tokens do not inflate the rate) and ends at a loss
//     after ltMinRounds rounds and ltMinTime; past four times both, or
//     app-limited, it is abandoned. Its rate is delivered bytes/duration,
//     its loss rate lost/delivered bytes.
//   - Linux: two consecutive intervals that lose ltLossRate (~20%) or more
//     at rates that agree (ltBWRatio, ltBWDiff) mean a policer: pace at
//     their mean rate, gain 1, for ltUseRounds rounds of ProbeBW (and
//     ltUseTime), then probe again from the probing phase of the cycle.
//   - Ours: against a deep bucket BBR's gain cycle settles a few percent
//     above the policed rate, each probe funded by the tokens the
//     previous drain saved, and the policer drops a share of the packets
//     that is less than ltLossRate, and more than anyone wants. So a ProbeBW interval
//     that loses ltTrialLossRate (~3%) or more also begins a period at its
//     rate, and one that agrees with a rate proven policed before does so
//     at their mean.
//   - Random loss looks the same at one rate; unlike a policer's, it does
//     not go away at a lower rate. So every period is a trial (ltCheck):
//     if its loss stays high, it retries at the rate it delivered, then
//     gives up, and no trial of ours begins for ltBackoff (doubling).
//     One that ends with little loss proves the rate a policer's.
//   - A policer drops without queueing: an interval whose smoothed RTT
//     grew (a full drop-tail queue, which the window handles) begins
//     nothing.
//   - After a period, probing starts from its rate and may go ltProbeCap
//     above the proven rate for ltUseTime: above a policer every step up
//     costs drops, and the tokens saved during the period first fund a
//     burst that would mislead the filter.
//
// So random loss costs nothing below ltTrialLossRate, and above it a
// failed trial (two short periods at its delivery rate) every ltBackoff or
// more; more often only where intervals lose ltLossRate, where Linux
// would pace at the rate for good.
func (b *bbr) ltSample(now time.Duration, rs rateSample, delivered uint64, roundStart bool, srtt time.Duration, inFlight int) {
	lt := &b.lt
	if lt.useBW {
		b.ltCheck(now, delivered, roundStart, inFlight)
		return
	}
	if lt.probeCap > 0 && now >= lt.capUntil {
		lt.probeCap = 0 // the policer did not show again: probe freely
	}
	losses := b.lostSinceAck > 0
	if !lt.sampling {
		if !losses {
			return
		}
		b.ltResetInterval(now, delivered)
		lt.sampling = true
	}
	if rs.appLimited {
		b.ltReset(now, delivered) // a sender without data measures nothing
		return
	}
	if roundStart {
		lt.rounds++
	}
	lt.srttSum += srtt
	lt.srttN++
	d := now - lt.startAt
	if lt.rounds < ltMinRounds || d < ltMinTime {
		return
	}
	if lt.rounds > 4*ltMinRounds && d > 4*ltMinTime {
		b.ltReset(now, delivered)
		return
	}
	lost, got := b.lost-lt.startLost, delivered-lt.startDelivered
	if !losses || got == 0 {
		return // end at a loss, when the bucket is empty again
	}
	lossRate := float64(lost) / float64(got)
	bw := float64(got) / d.Seconds()
	noQueue := lt.srttSum/time.Duration(lt.srttN) <= b.minRTT+b.minRTT/4+ltQueueSlack
	trial := noQueue && now >= lt.notBefore && lossRate >= ltTrialLossRate
	switch {
	case noQueue && lossRate >= ltLossRate && ltAgree(bw, lt.prevBW):
		b.ltBegin((bw+lt.prevBW)/2, lossRate, now, delivered, inFlight)
	case trial && ltAgree(bw, lt.policed):
		b.ltBegin((bw+lt.policed)/2, lossRate, now, delivered, inFlight)
	case trial && lt.startProbeBW:
		b.ltBegin(bw, lossRate, now, delivered, inFlight)
	case lossRate >= ltLossRate:
		lt.prevBW = bw // the first of two
		b.ltResetInterval(now, delivered)
	}
}

// ltAgree reports whether rate bw agrees with the earlier rate ref.
func ltAgree(bw, ref float64) bool {
	diff := math.Abs(bw - ref)
	return ref > 0 && (diff <= ltBWRatio*ref || diff <= ltBWDiff)
}

// ltBegin begins a trial: a period at rate bw, which must bring the loss
// rate well below lossRate.
func (b *bbr) ltBegin(bw, lossRate float64, now time.Duration, delivered uint64, inFlight int) {
	b.lt.bwBefore, b.lt.retries = b.maxBW, 0
	b.ltUse(bw, lossRate, now, delivered, inFlight)
}

func (b *bbr) ltUse(bw, lossRate float64, now time.Duration, delivered uint64, inFlight int) {
	lt := &b.lt
	lt.useBW, lt.bw, lt.since, lt.trigger = true, bw, now, lossRate
	lt.rounds, lt.checkFrom, lt.probeCap = 0, false, 0
	lt.settled = delivered + b.lost + uint64(max(inFlight, 0))
	lt.trials++
	if b.mode == bbrProbeBW {
		b.pacingGain = b.cycleGain()
	}
	b.filledPipe = true // no startup at a policed rate
}

// ltCheck judges the trial that a period at a policed rate is. Pacing at
// or below a policer's rate leaves next to no loss, so a loss rate of half
// the one that began it (at most ltLossRate/2, at least ltTrialLossRate),
// over ltTrialLost packets and ltMinTime, fails it: random loss, or a rate
// above the policer's (overestimated by tokens saved up before). It is
// retried at the rate delivered meanwhile, which is the policer's if there
// is one: once, and again while the loss rate jumps (the bucket ran dry),
// which random loss does not do. A period that ends (ltUseRounds of
// ProbeBW, ltUseTime) with less proves its rate a policer's.
func (b *bbr) ltCheck(now time.Duration, delivered uint64, roundStart bool, inFlight int) {
	lt := &b.lt
	if !lt.checkFrom {
		// Packets that are neither acknowledged nor declared lost for long
		// must not hold the trial up for ever.
		if delivered+b.lost >= lt.settled || now-lt.since > 4*ltMinTime+2*b.minRTT {
			lt.checkFrom, lt.checkAt, lt.checkDeliv, lt.checkLost = true, now, delivered, b.lost
		}
		return
	}
	if !roundStart {
		return
	}
	lt.rounds++
	lost, got := b.lost-lt.checkLost, delivered-lt.checkDeliv
	lossRate := float64(lost) / float64(max(got, 1))
	failed := lossRate >= max(min(lt.trigger, ltLossRate)/2, ltTrialLossRate)
	if failed && lost >= ltTrialLost*uint64(b.mss) && now-lt.checkAt >= ltMinTime {
		if lt.retries == 0 || lt.retries < ltMaxRetries && lossRate > 2*lt.trigger {
			lt.retries++
			b.ltUse(float64(got)/(now-lt.checkAt).Seconds(), lossRate, now, delivered, inFlight)
			return
		}
		lt.policed, lt.failed = 0, lt.failed+1
		lt.backoff = min(max(2*lt.backoff, ltBackoff), ltMaxBackoff)
		lt.notBefore = now + lt.backoff
		b.ltEndUse(now, delivered, lt.bwBefore) // as if it never happened
		return
	}
	if b.mode == bbrProbeBW && lt.rounds >= ltUseRounds && now-lt.since >= ltUseTime {
		if !failed {
			lt.policed, lt.backoff = lt.bw, 0
		}
		b.ltEndUse(now, delivered, lt.bw)
	}
}

// ltEndUse ends a period at a policed rate and restarts ProbeBW at its
// probing phase from bandwidth bw, so that a raised or lifted limit is
// found.
func (b *bbr) ltEndUse(now time.Duration, delivered uint64, bw float64) {
	if bw > 0 {
		b.restartBW(bw) // the filter holds the period's noise
	}
	if b.lt.policed > 0 {
		b.lt.probeCap, b.lt.capUntil = ltProbeCap*b.lt.policed, now+ltUseTime
	}
	b.ltReset(now, delivered)
	b.cycleIndex, b.cycleStart = 0, now
	b.pacingGain = b.cycleGain()
}

// ltReset stops pacing at a policed rate and closes any open interval;
// what was learnt of the path stays.
func (b *bbr) ltReset(now time.Duration, delivered uint64) {
	b.lt.useBW, b.lt.sampling, b.lt.prevBW = false, false, 0
	b.ltResetInterval(now, delivered)
}

func (b *bbr) ltResetInterval(now time.Duration, delivered uint64) {
	lt := &b.lt
	lt.startAt, lt.startDelivered, lt.startLost = now, delivered, b.lost
	lt.startProbeBW = b.mode == bbrProbeBW
	lt.srttSum, lt.srttN, lt.rounds = 0, 0, 0
}

// onPersistentCongestion is called when probe timeouts keep firing: the
// path may have changed completely, so fall back to the minimum window.
func (b *bbr) onPersistentCongestion() {
	b.cwnd = minCwndPkt * b.mss
	b.lt = ltState{trials: b.lt.trials, failed: b.lt.failed}
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
