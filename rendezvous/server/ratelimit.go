package server

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a token bucket per client IP address (not per port: one
// host can open many ports). Buckets that have refilled completely carry no
// information and are dropped by sweep, so memory follows the number of
// recently active addresses, and maxBuckets bounds it outright.
type rateLimiter struct {
	rate       float64 // tokens per second; 0 disables limiting
	burst      float64
	maxBuckets int

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst, maxBuckets int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), maxBuckets: maxBuckets, buckets: make(map[netip.Addr]*bucket)}
}

// allow takes one token for ip, reporting whether there was one.
func (l *rateLimiter) allow(ip netip.Addr, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[ip]
	if b == nil {
		if len(l.buckets) >= l.maxBuckets {
			return false // under a flood of distinct addresses, new ones wait for sweep
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets buckets that are full again.
func (l *rateLimiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ip, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, ip)
		}
	}
}
