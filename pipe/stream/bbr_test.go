package stream

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
	"time"
)

// measuredRun is what a one-way transfer measured at the receiver and on
// the sender's link, from a mark (the first warmup bytes read) to the end.
type measuredRun struct {
	goodput  float64 // bytes/s read after the mark
	lossRate float64 // of the datagrams sent after the mark, the share the link lost
	total    linkCounts
	sender   Stats
	lt       ltState // the sender's policer detection at the end
}

// transferMeasured sends data a→b, checks it arrives exact, and measures
// goodput and link loss from the moment b has read warmup bytes. The mark
// is set by the reader itself, so no timer decides what is measured.
func transferMeasured(t testing.TB, ta, tb Transport, ab *memLink, data []byte, warmup int) measuredRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	a, b := newConnPair(t, ta, tb, Config{})
	type mark struct {
		at     time.Time
		counts linkCounts
	}
	type result struct {
		sum        [32]byte
		n          int
		start, end mark
		err        error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		if warmup == 0 {
			r.start = mark{time.Now(), ab.counts()}
		}
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := b.Read(buf)
			h.Write(buf[:n])
			before := r.n
			r.n += n
			if before < warmup && r.n >= warmup {
				r.start = mark{time.Now(), ab.counts()}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				r.err = err
				break
			}
		}
		r.end = mark{time.Now(), ab.counts()}
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	wrote := make(chan error, 1)
	go func() { wrote <- pump(a, data, 1) }()
	var r result
	select {
	case r = <-got:
	case <-ctx.Done():
		t.Fatalf("timed out; sender %+v; link %+v", a.Stats(), ab.counts())
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if r.err != nil || r.n != len(data) || r.sum != sha256.Sum256(data) {
		t.Fatalf("read %d of %d bytes, err %v, sha256 equal %v", r.n, len(data), r.err, r.sum == sha256.Sum256(data))
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, a)
		done <- err
	}()
	a.mu.Lock()
	lt := a.snd.cc.lt
	a.mu.Unlock()
	shut := make(chan error, 1)
	go func() { shut <- a.Shutdown(ctx) }()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("b.Shutdown: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("a.Shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sent := r.end.counts.sent - r.start.counts.sent
	lost := r.end.counts.policed + r.end.counts.dropped + r.end.counts.overflow -
		r.start.counts.policed - r.start.counts.dropped - r.start.counts.overflow
	return measuredRun{
		goodput:  float64(len(data)-warmup) / r.end.at.Sub(r.start.at).Seconds(),
		lossRate: float64(lost) / float64(max(sent, 1)),
		total:    r.end.counts,
		sender:   a.Stats(),
		lt:       lt,
	}
}

// TestPolicedLink: a token-bucket policer (2 MB/s, one second deep, full
// at first) in front of the link, as the rendezvous relay runs one. Once
// the bucket is spent the sender must find the policed rate and pace at
// it: few of its packets dropped by the policer, the goodput close to the
// policed rate.
func TestPolicedLink(t *testing.T) {
	// 20 ms: a WAN path; 1 ms: the relay on loopback or a LAN, where
	// rounds are short and bursts dominate rate samples.
	for _, rtt := range []time.Duration{20 * time.Millisecond, time.Millisecond} {
		t.Run(rtt.String(), func(t *testing.T) {
			checkGoroutines(t)
			const rate = 2e6
			ta, tb, ab, _ := newMemPair(
				linkConfig{delay: rtt / 2, police: rate, seed: 1},
				linkConfig{delay: rtt / 2, seed: 2})
			// The bucket and two more seconds are the warmup; three
			// seconds at the policed rate are measured.
			const warmup = rate + 2*rate
			run := transferMeasured(t, ta, tb, ab, randomBytes(warmup+3*rate, 5), warmup)
			t.Logf("after warmup: goodput %.2f MB/s, %.1f%% of the datagrams dropped; link in all %+v; %d trials (%d failed), policed %.2f MB/s",
				run.goodput/1e6, 100*run.lossRate, run.total, run.lt.trials, run.lt.failed, run.lt.policed/1e6)
			// Real time on a loaded 2-core machine (CI runs this under
			// -race beside other packages) lets the scheduler stall the
			// sender and the policer's bucket refill meanwhile, which
			// raises the drops. The tight bound (< 5%) is
			// TestPolicerModel's, which is deterministic; this one checks
			// the whole stream end to end.
			if run.lossRate > 0.15 {
				t.Errorf("the policer dropped %.1f%% of the datagrams after warmup, want < 15%%", 100*run.lossRate)
			}
			// The same stalls cost goodput without a single drop (under
			// -race on 2 cores more than on a free machine): the drop
			// rate above is the exact check.
			if run.goodput < 0.75*rate {
				t.Errorf("goodput %.2f MB/s, want at least 75%% of the policed %.2f MB/s", run.goodput/1e6, rate/1e6)
			}
		})
	}
}

// TestRandomLossIsNotPolicing: random loss below the policer rule's ~20%
// on a 20 ms, 4 MB/s path whose buffer never overflows. Losses that do not
// go away when the sender slows down are not a policer's: no rate may be
// taken for one, below ltTrialLossRate none is even tried, and the
// throughput stays close to the link's (at 15% loss highLossRate caps the
// window). The throughput bound is loose on purpose: this runs in real
// time, and under -race beside other packages on 2 cores a stalled
// receiver looks like a slow link. The policer checks above it are the
// exact ones.
func TestRandomLossIsNotPolicing(t *testing.T) {
	for _, tc := range []struct{ loss, want float64 }{{0.01, 0.6}, {0.05, 0.5}, {0.15, 0}} {
		t.Run(fmt.Sprintf("loss=%v", tc.loss), func(t *testing.T) {
			checkGoroutines(t)
			const rate = 4e6
			link := func(seed uint64) linkConfig {
				return linkConfig{delay: 10 * time.Millisecond, rate: rate, queue: time.Second, loss: tc.loss, seed: seed}
			}
			ta, tb, ab, _ := newMemPair(link(1), link(2))
			const warmup = 1e6
			run := transferMeasured(t, ta, tb, ab, randomBytes(warmup+4e6, 6), warmup)
			t.Logf("after warmup: goodput %.2f MB/s (%.0f%% of the link); link %+v; %d trials (%d failed)",
				run.goodput/1e6, 100*run.goodput/rate, run.total, run.lt.trials, run.lt.failed)
			if run.lt.policed != 0 {
				t.Errorf("random loss was taken for a policer at %.2f MB/s", run.lt.policed/1e6)
			}
			if tc.loss < ltTrialLossRate && run.lt.trials > 0 {
				t.Errorf("%d trials of a policed rate, want none", run.lt.trials)
			}
			if run.goodput < tc.want*rate {
				t.Errorf("goodput %.2f MB/s, want at least %.0f%% of the link's %.2f MB/s", run.goodput/1e6, 100*tc.want, rate/1e6)
			}
		})
	}
}

// BenchmarkPolicedPath: 32 MiB through a 10 MB/s token-bucket policer (one
// second deep, full at first, like the relay's default) on a 20 ms path.
// Reports the goodput, the share of all datagrams the policer dropped
// (most of them when startup overshoots as the full bucket runs dry), and
// the share after the bucket and one more second.
func BenchmarkPolicedPath(b *testing.B) {
	const size, rate = 32 << 20, 10e6
	data := randomBytes(size, 7)
	var dropped, sent uint64
	var took time.Duration
	var steady float64
	for i := 0; i < b.N; i++ {
		ta, tb, ab, _ := newMemPair(
			linkConfig{delay: 10 * time.Millisecond, police: rate, seed: uint64(2*i + 1)},
			linkConfig{delay: 10 * time.Millisecond, seed: uint64(2*i + 2)})
		start := time.Now()
		run := transferMeasured(b, ta, tb, ab, data, 2*rate)
		took += time.Since(start)
		dropped += run.total.policed
		sent += run.total.sent
		steady += run.lossRate
	}
	b.ReportMetric(float64(size)*float64(b.N)/took.Seconds()/1e6, "MB/s")
	b.ReportMetric(100*float64(dropped)/float64(sent), "%policed")
	b.ReportMetric(100*steady/float64(b.N), "%policed-after-2s")
}

// fluidPath is a path in a fluid model, one round trip per step: send
// bytes go in; delivered bytes come out (of these or earlier ones),
// dropped bytes are lost, and the delivered ones met the queue delay.
type fluidPath func(send float64, step time.Duration) (delivered, dropped float64, queued time.Duration)

// policer is a token bucket of rate bytes/s, burst bytes deep, full at
// first, in front of an unlimited link.
func policer(rate, burst float64) fluidPath {
	tokens := burst
	return func(send float64, step time.Duration) (float64, float64, time.Duration) {
		tokens = min(burst, tokens+rate*step.Seconds())
		got := min(send, tokens)
		tokens -= got
		return got, send - got, 0
	}
}

// lossyBottleneck loses share loss of what is sent, then queues the rest
// at a link of rate bytes/s with a drop-tail buffer of queue (0: a buffer
// that never overflows).
func lossyBottleneck(loss, rate float64, queue time.Duration) fluidPath {
	backlog := 0.0
	return func(send float64, step time.Duration) (float64, float64, time.Duration) {
		dropped := send * loss
		backlog += send - dropped
		out := min(backlog, rate*step.Seconds())
		backlog -= out
		if limit := rate * queue.Seconds(); queue > 0 && backlog > limit {
			dropped += backlog - limit // the tail is dropped
			backlog = limit
		}
		return out, dropped, time.Duration(backlog / rate * float64(time.Second))
	}
}

// fluidRun is what simulate measured over the second half of the run.
type fluidRun struct {
	delivered float64 // bytes/s
	lossRate  float64 // lost/sent
}

// simulate drives b over path for d of model time in steps of one round
// trip (rtt plus the queue delay): each step sends what the pacing rate
// and the window allow, and one ack then reports what was delivered and
// declares the rest lost. Deterministic, and far faster than real time.
func simulate(b *bbr, path fluidPath, rtt, d time.Duration) fluidRun {
	var now time.Duration
	var delivered uint64
	var half fluidRun
	var halfSent, halfLost float64
	queued := time.Duration(0)
	for now < d {
		step := rtt + queued
		send := min(b.pacingRate*step.Seconds(), float64(b.cwnd))
		got, dropped, q := path(send, step)
		queued = q
		lost := int(dropped)
		now += step
		if lost > 0 {
			b.onLoss(lost)
		}
		rs := rateSample{valid: true, priorDelivered: delivered, delivered: uint64(got), interval: step}
		delivered += uint64(got)
		b.onAck(now, rs, delivered, step, step, 0, int(got))
		if now >= d/2 {
			halfSent += send
			half.delivered += got
			halfLost += float64(lost)
		}
	}
	secs := (d / 2).Seconds()
	half.lossRate = halfLost / max(halfSent, 1)
	half.delivered /= secs
	return half
}

// TestPolicerModel: against a token bucket (one second deep, full at
// first), in the fluid model, the controller finds the policed rate and
// keeps the loss low, on WAN and LAN round trips.
func TestPolicerModel(t *testing.T) {
	for _, rtt := range []time.Duration{50 * time.Millisecond, 20 * time.Millisecond, time.Millisecond} {
		for _, rate := range []float64{1e6, 10e6, 100e6} {
			b := newBBR(1150)
			run := simulate(&b, policer(rate, rate), rtt, time.Minute)
			t.Logf("rtt %v, policer %.0f MB/s: delivered %.2f MB/s, loss %.2f%%, %d trials (%d failed), policed %.2f MB/s",
				rtt, rate/1e6, run.delivered/1e6, 100*run.lossRate, b.lt.trials, b.lt.failed, b.lt.policed/1e6)
			if run.lossRate > 0.05 || run.delivered < 0.9*rate {
				t.Errorf("rtt %v, policer %.0f MB/s: %.1f%% lost, %.2f MB/s delivered; want < 5%% and at least 90%% of the rate",
					rtt, rate/1e6, 100*run.lossRate, run.delivered/1e6)
			}
		}
	}
}

// TestRandomLossModel: random loss in front of a bottleneck whose buffer
// never overflows (so that all loss is random), in the fluid model. Below
// the policer rule's ~20% (lost/delivered) no rate is ever taken for a
// policer's, below ltTrialLossRate there is not even a trial, and the
// throughput is at least 99% of what the controller got here before the
// policer rules (the before column).
func TestRandomLossModel(t *testing.T) {
	const rate = 10e6
	for _, tc := range []struct{ loss, before float64 }{
		{0, 10.30e6}, {0.01, 10.06e6}, {0.02, 9.97e6}, {0.05, 9.51e6}, {0.10, 9.03e6}, {0.15, 0.47e6},
	} {
		b := newBBR(1150)
		run := simulate(&b, lossyBottleneck(tc.loss, rate, 0), 40*time.Millisecond, time.Minute)
		t.Logf("loss %v: delivered %.2f MB/s, %d trials (%d failed), policed %.2f MB/s", tc.loss, run.delivered/1e6, b.lt.trials, b.lt.failed, b.lt.policed/1e6)
		if b.lt.policed != 0 {
			t.Errorf("loss %v: random loss was taken for a policer at %.2f MB/s", tc.loss, b.lt.policed/1e6)
		}
		if tc.loss < ltTrialLossRate && b.lt.trials > 0 {
			t.Errorf("loss %v: %d trials, want none", tc.loss, b.lt.trials)
		}
		if run.delivered < 0.99*tc.before {
			t.Errorf("loss %v: delivered %.2f MB/s, want at least 99%% of %.2f", tc.loss, run.delivered/1e6, tc.before/1e6)
		}
	}
}

// TestStartupFastOnShortPaths pins the start of a session: before an RTT
// sample the initial window is paced as if the RTT were initialPacingRTT;
// on a path with a tiny RTT (loopback, after its 64 KiB path MTU probe)
// the window is at once initialCwndPkt packets of the new size and the
// pacer does not hold it back; on a long path the first sample sets the
// rate from what it measured, as before.
func TestStartupFastOnShortPaths(t *testing.T) {
	b := newBBR(1150)
	if want := startupGain * float64(b.cwnd) / initialPacingRTT.Seconds(); b.pacingRate != want {
		t.Fatalf("initial pacing rate %.0f, want %.0f", b.pacingRate, want)
	}
	// Loopback: the probe's ack (the first) gives a 100 µs sample.
	b.setMSS(65000)
	rtt := 100 * time.Microsecond
	b.onAck(rtt, rateSample{}, 0, rtt, rtt, 0, 0)
	if b.cwnd < initialCwndPkt*65000 {
		t.Errorf("short path: window %d after the first ack, want at least %d packets of 65000", b.cwnd, initialCwndPkt)
	}
	if want := startupGain * float64(b.cwnd) / rtt.Seconds(); b.pacingRate < want {
		t.Errorf("short path: pacing rate %.0f, want at least the window's rate %.0f", b.pacingRate, want)
	}

	// Loopback on a busy host: a 5 ms sample, but 64 KiB packets.
	b = newBBR(1150)
	b.setMSS(65000)
	rtt = 5 * time.Millisecond
	b.onAck(rtt, rateSample{}, 0, rtt, rtt, 0, 0)
	if b.cwnd < initialCwndPkt*65000 {
		t.Errorf("64 KiB packets: window %d after the first ack, want at least %d packets of 65000", b.cwnd, initialCwndPkt)
	}

	// 40 ms: no fast start, and the nominal initial rate does not survive
	// a sample that shows a slower path.
	b = newBBR(1150)
	rtt = 40 * time.Millisecond
	b.onAck(rtt, rateSample{valid: true, delivered: 2 * 1150, interval: rtt}, 2*1150, rtt, rtt, 30*1150, 2*1150)
	if b.cwnd > initialCwndPkt*1150+2*1150 {
		t.Errorf("long path: window %d after the first ack, want the initial one grown by what was acked", b.cwnd)
	}
	if limit := startupGain * float64(b.cwnd) / rtt.Seconds(); b.pacingRate > limit {
		t.Errorf("long path: pacing rate %.0f after a 40 ms sample, want at most %.0f", b.pacingRate, limit)
	}
}
