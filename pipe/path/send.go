package path

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"
	"unsafe"
)

// Send sends b to the confirmed peer address, or before confirmation to
// every candidate (and through the relay once it may carry copies).
func (c *Conn) Send(b []byte) error {
	if c.holdBack(b) {
		return nil
	}
	r := c.route()
	if r.peer.IsValid() {
		if err := c.write(b, r.peer); err != nil && errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	for _, t := range r.targets {
		if err := c.write(b, t); errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	if r.relay {
		return c.sendRelay(b)
	}
	return nil // a lost datagram is the reliability layer's business
}

// write sends one datagram to to, unless Options.ProbeDelay holds it back
// or the amplification bound (amplify.go) forbids it: those are lost
// without an error, as the network would lose them.
func (c *Conn) write(b []byte, to netip.AddrPort) error {
	if c.heldBackFrom(to) {
		return nil // held back: lost, as a datagram the network dropped
	}
	if !c.spend(to, len(b)) {
		return nil
	}
	_, err := c.sock.WriteToUDPAddrPort(b, to)
	if err != nil && icmpError(err) {
		// An ICMP error about an earlier datagram (IP_RECVERR reports it
		// at the next send): read it, and send this one again.
		c.readErrQueue()
		_, err = c.sock.WriteToUDPAddrPort(b, to)
	}
	return err
}

// route says where the next datagram goes.
type route struct {
	peer    netip.AddrPort   // the confirmed direct peer, or a direct trial
	targets []netip.AddrPort // before confirmation: every candidate
	relay   bool             // through the relay (too)
}

func (c *Conn) route() route {
	c.sent.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	var r route
	switch {
	case !c.peer.IsValid():
		r.targets = slices.Clone(c.candidates)
		r.relay = c.relayUsable() && !c.relayAt.IsZero() && !time.Now().Before(c.relayAt)
	case c.peer == c.server:
		r.relay = true
		now := time.Now()
		if c.directHint.IsValid() && now.Sub(c.hintAt) < 3*time.Second && now.Sub(c.lastTrial) >= 200*time.Millisecond && now.After(c.noTrialUntil) {
			c.lastTrial = now
			r.peer = c.directHint // a copy, to move the peer to the direct path
		}
	default:
		r.peer = c.peer
		if c.relayUsable() {
			now := time.Now()
			c.sentDirect(now)
			r.relay = c.directLost(now) // a copy, to fall back to the relay
		}
	}
	return r
}

// SendBatch sends bufs in order, with as few system calls as the kernel
// allows: runs of equal-size datagrams to the confirmed peer go out as one
// GSO send, or without GSO the whole batch as one sendmmsg. A datagram the
// kernel refuses is lost, like any other; only a closed socket is an error.
// It does not retain bufs.
func (c *Conn) SendBatch(bufs [][]byte) error {
	c.mu.Lock()
	peer := c.peer
	c.mu.Unlock()
	if !peer.IsValid() || peer == c.server || c.relayUsable() && c.directLost(time.Now()) {
		// Fan-out, the relay, or a fallback in progress: one by one.
		for _, b := range bufs {
			if err := c.Send(b); err != nil {
				return err
			}
		}
		return nil
	}
	c.sent.Add(1)
	if c.relayUsable() {
		c.sentDirect(time.Now())
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if !c.gso {
		return c.sendPlainLocked(bufs, peer)
	}
	for len(bufs) > 0 {
		// A run: datagrams of one size, the last may be shorter.
		size := len(bufs[0])
		n := 1
		for n < len(bufs) && n < maxGSOSegments && len(bufs[n]) == size && (n+1)*size <= maxGSOBytes {
			n++
		}
		if n < len(bufs) && n < maxGSOSegments && len(bufs[n]) < size && (n+1)*size <= maxGSOBytes {
			n++
		}
		if err := c.sendRunLocked(bufs[:n], size, peer); err != nil {
			return err
		}
		bufs = bufs[n:]
	}
	return nil
}

func (c *Conn) sendRunLocked(run [][]byte, size int, peer netip.AddrPort) error {
	if len(run) == 1 {
		if err := c.write(run[0], peer); errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
	b, ok := contiguous(run)
	if !ok {
		b = c.gsoBuf[:0]
		for _, d := range run {
			b = append(b, d...)
		}
	}
	_, _, err := c.udp.WriteMsgUDPAddrPort(b, gsoControl(c.oobOut, size), peer)
	if err != nil && icmpError(err) { // about an earlier datagram, as in write
		c.readErrQueue()
		_, _, err = c.udp.WriteMsgUDPAddrPort(b, gsoControl(c.oobOut, size), peer)
	}
	if err == nil || errors.Is(err, net.ErrClosed) {
		return err
	}
	if errors.Is(err, syscall.EMSGSIZE) {
		return nil // too large for the path: lost, like any oversized datagram
	}
	// Some devices refuse segmentation offload (EIO without checksum
	// offload): turn it off for this socket and send the run without it,
	// losing nothing.
	c.gso = false
	c.log.Debug("udp GSO failed; sending without it from now on", "err", err)
	return c.sendPlainLocked(run, peer)
}

// sendEachLocked sends bufs to peer one datagram per system call: the
// last resort, where the system has no sendmmsg.
func (c *Conn) sendEachLocked(bufs [][]byte, peer netip.AddrPort) error {
	for _, b := range bufs {
		if err := c.write(b, peer); errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return nil
}

// contiguous returns the datagrams of run as one slice when they lie back
// to back in memory (the secure layer seals a batch that way), so a GSO send
// needs no copy.
func contiguous(run [][]byte) ([]byte, bool) {
	total := 0
	for i, d := range run {
		if len(d) == 0 || i > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(d))) != uintptr(unsafe.Pointer(unsafe.SliceData(run[i-1])))+uintptr(len(run[i-1])) {
			return nil, false
		}
		total += len(d)
	}
	return unsafe.Slice(unsafe.SliceData(run[0]), total), true
}
