package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
	"sync"
	"time"
)

// cookieLen is the size of a cookie: a 4-byte issue time (unix seconds) and a
// 16-byte MAC over it and the client's address.
const cookieLen = 20

// cookieJar issues and checks stateless address-validation cookies, as QUIC
// Retry tokens and DTLS HelloVerifyRequest do: a client that echoes a valid
// cookie has shown that it receives packets at its source address, so the
// server may keep state for it and send it replies larger than its requests.
// The key is random per process: a restart only costs clients one more
// round trip.
type cookieJar struct {
	key  [32]byte
	ttl  time.Duration
	macs sync.Pool // of hash.Hash keyed with key: hmac.New is costly per packet
}

func newCookieJar(ttl time.Duration) *cookieJar {
	j := &cookieJar{ttl: ttl}
	rand.Read(j.key[:])
	return j
}

func (j *cookieJar) mac(issued uint32, addr netip.AddrPort) [16]byte {
	m, _ := j.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, j.key[:])
	}
	defer func() { m.Reset(); j.macs.Put(m) }()
	var b [4 + 16 + 2]byte
	binary.BigEndian.PutUint32(b[:4], issued)
	ip := addr.Addr().Unmap().As16()
	copy(b[4:20], ip[:])
	binary.BigEndian.PutUint16(b[20:], addr.Port())
	m.Write(b[:])
	var sum [32]byte
	return [16]byte(m.Sum(sum[:0]))
}

// issue returns a cookie for addr, valid for the jar's ttl from now.
func (j *cookieJar) issue(addr netip.AddrPort, now time.Time) []byte {
	issued := uint32(now.Unix())
	mac := j.mac(issued, addr)
	c := make([]byte, cookieLen)
	binary.BigEndian.PutUint32(c, issued)
	copy(c[4:], mac[:])
	return c
}

// cookieState is the outcome of checking a cookie.
type cookieState int

const (
	cookieValid cookieState = iota
	cookieMissing
	cookieStale // well-formed and ours, but too old (or from the future)
	cookieBad   // not ours, or for another address
)

func (j *cookieJar) check(c []byte, addr netip.AddrPort, now time.Time) cookieState {
	if len(c) == 0 {
		return cookieMissing
	}
	if len(c) != cookieLen {
		return cookieBad
	}
	issued := binary.BigEndian.Uint32(c)
	mac := j.mac(issued, addr)
	if !hmac.Equal(mac[:], c[4:]) {
		return cookieBad
	}
	age := now.Sub(time.Unix(int64(issued), 0))
	if age < -time.Minute || age > j.ttl {
		return cookieStale
	}
	return cookieValid
}
