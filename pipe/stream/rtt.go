// The RTT estimate and the timer constants derived from it (RFC 9002).

package stream

import "time"

const (
	initialRTT  = 100 * time.Millisecond // before the first sample
	maxAckDelay = 5 * time.Millisecond   // the delayed-ack timer of our peer
	timerGrain  = time.Millisecond       // RFC 9002's kGranularity
	maxPTO      = 2 * time.Second        // cap on the backed-off probe timeout
)

// rttEstimator follows RFC 6298 / RFC 9002 section 5. Packet numbers are
// never reused, so every sample is unambiguous and Karn's rule is moot.
type rttEstimator struct {
	latest, smoothed, variance, min time.Duration
	has                             bool
}

func (r *rttEstimator) update(sample, ackDelay time.Duration) {
	if sample <= 0 {
		sample = time.Microsecond
	}
	r.latest = sample
	if !r.has {
		r.has = true
		r.min, r.smoothed, r.variance = sample, sample, sample/2
		return
	}
	if sample < r.min {
		r.min = sample
	}
	// Subtract the peer's ack delay only when that keeps the sample
	// plausible (not below the minimum).
	adjusted := sample
	if ackDelay > 0 && sample-ackDelay >= r.min {
		adjusted -= ackDelay
	}
	diff := r.smoothed - adjusted
	if diff < 0 {
		diff = -diff
	}
	r.variance = (3*r.variance + diff) / 4
	r.smoothed = (7*r.smoothed + adjusted) / 8
}

func (r *rttEstimator) srtt() time.Duration {
	if !r.has {
		return initialRTT
	}
	return r.smoothed
}

// pto is the probe timeout before backoff (RFC 9002 section 6.2.1).
func (r *rttEstimator) pto() time.Duration {
	if !r.has {
		return 3 * initialRTT
	}
	return r.smoothed + max(4*r.variance, timerGrain) + maxAckDelay
}

// lossDelay is the time threshold of RFC 9002 section 6.1.2: 9/8 of the
// larger of the smoothed and latest RTT.
func (r *rttEstimator) lossDelay() time.Duration {
	d := max(r.srtt(), r.latest)
	return max(d+d/8, timerGrain)
}
