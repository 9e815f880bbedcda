package path

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Birthday-paradox punching, for a peer pair where one side's NAT maps
// every destination to a new port (endpoint-dependent mapping, a
// "symmetric" NAT) and the other's does not. The hard side cannot tell
// which port its NAT will use toward the peer, so it opens many sockets
// and probes the peer's public address from each (BirthdayPunch): that
// opens as many mappings toward the peer. The easy side, whose public
// address does not change with the destination, sends probes to as many
// random ports of the hard side's public IP (Options.Spray); each one both
// opens its own NAT toward that port and, when the port is one of the hard
// side's mappings, gets through to it. With s sockets and p probes over
// the n ports a NAT allocates from, a probe meets a mapping with
// probability 1-(1-s/n)^p: 384 sockets and 1024 probes over 64,512 ports
// meet in about 998 of 1,000 tries (256 sockets in about 98 of 100).
//
// Order matters where the easy side's router lets an unsolicited packet
// claim a port mapping (the NAT lab's "clash"): the easy side's probes go
// first, and the hard side's sockets send only after SprayDuration, when
// the easy side's NAT already expects every port it sprayed.
//
// The bounds, which nothing raises:
//   - the easy side sends at most SprayProbes probes (default
//     DefaultSprayProbes, capped at MaxSprayProbes), sprayBurst every
//     sprayTick on average (sprayCatchUp bounds a burst), to distinct ports of the one IP the server saw the peer
//     at, and stops at the first probe that comes back from one of them
//     or when the path is confirmed;
//   - the hard side opens at most MaxBirthdaySockets sockets, each sending
//     at most birthdayRounds probes, birthdayRepeat apart, only to the
//     peer's observed address, for at most the budget its caller gives;
//     every socket but the winner is closed before BirthdayPunch returns.
//     One probe per socket opens its mapping (which the NAT then keeps for
//     tens of seconds); the repeats are for loss, and the cap keeps what a
//     malicious server can aim at one address (by naming it as the peer)
//     at 128 bytes × 3 × 512 per attempt (pipe/birthday.go's batches).
const (
	DefaultSprayProbes = 1024
	MaxSprayProbes     = 4096
	MaxBirthdaySockets = 512
	sprayBurst         = 4
	sprayTick          = time.Millisecond // so at most 4000 probes a second
	// SprayDuration is how long the default spray takes.
	SprayDuration  = DefaultSprayProbes / sprayBurst * sprayTick
	birthdayRepeat = 200 * time.Millisecond
	birthdayRounds = 3
	// sprayLowPort: NATs map an unprivileged source port to an
	// unprivileged one.
	sprayLowPort = 1024
)

// BirthdayResult is the outcome of BirthdayPunch.
type BirthdayResult struct {
	Sock    *net.UDPConn   // the winning socket (nil: none), now the caller's
	Peer    netip.AddrPort // where the peer's probe came from
	Sockets int            // sockets opened
	Probes  int            // probes sent, from all of them
	Took    time.Duration
}

// BirthdayPunch opens n sockets (at most MaxBirthdaySockets), waits wait
// (the peer's spray goes first), then probes peer from every socket each
// birthdayRepeat until one of them receives a probe with pairingID from
// peer's IP, or budget (counted from the call) runs out. It returns that
// socket, with the socket buffers of a session; it closes every other one
// and leaves no goroutine behind.
func BirthdayPunch(ctx context.Context, peer netip.AddrPort, pairingID [16]byte, n int, wait, budget time.Duration, log *slog.Logger) (BirthdayResult, error) {
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(budget))
	defer cancel()
	socks, err := openSockets(min(n, MaxBirthdaySockets), peer.Addr().Is4())
	if err != nil {
		return BirthdayResult{}, err
	}
	b := &birthday{peer: peer, probe: newProbe(pairingID), won: make(chan int, 1)}
	for i, s := range socks {
		b.wg.Add(1)
		go b.listen(ctx, i, s)
	}
	res := BirthdayResult{Sockets: len(socks)}
	res.Probes = b.send(ctx, socks, wait)
	winner := -1
	select {
	case winner = <-b.won:
	default:
	}
	for i, s := range socks {
		if i != winner {
			s.Close()
		}
	}
	cancel()
	b.wg.Wait()
	res.Took = time.Since(start)
	if winner >= 0 {
		res.Sock, res.Peer = socks[winner], b.from
		res.Sock.SetReadDeadline(time.Time{})
		RaiseBuffers(res.Sock, 8<<20, log)
	}
	return res, nil
}

// birthday is the state BirthdayPunch's goroutines share.
type birthday struct {
	peer  netip.AddrPort
	probe []byte
	won   chan int // the first socket that heard the peer
	wg    sync.WaitGroup
	once  sync.Once
	from  netip.AddrPort // written once, before won is sent on
}

// openSockets opens n UDP sockets on any port, or none when one fails
// (out of file descriptors, say).
func openSockets(n int, v4 bool) ([]*net.UDPConn, error) {
	network := "udp6"
	if v4 {
		network = "udp4"
	}
	socks := make([]*net.UDPConn, 0, n)
	for range n {
		s, err := net.ListenUDP(network, nil)
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, fmt.Errorf("opening %d sockets for birthday punching: %w", n, err)
		}
		socks = append(socks, s)
	}
	return socks, nil
}

// send probes the peer from every socket, first after wait and then every
// birthdayRepeat, birthdayRounds times, and waits until a socket wins or
// ctx ends; it returns the probes sent.
func (b *birthday) send(ctx context.Context, socks []*net.UDPConn, wait time.Duration) int {
	sent := 0
	t := time.NewTimer(wait)
	defer t.Stop()
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return sent
		case i := <-b.won:
			b.won <- i // for the caller
			return sent
		case <-t.C:
		}
		if round >= birthdayRounds {
			continue // no more probes: the answers may still come
		}
		for _, s := range socks {
			if _, err := s.WriteToUDPAddrPort(b.probe, b.peer); err == nil {
				sent++
			}
		}
		t.Reset(birthdayRepeat)
	}
}

// listen reads socket i until a probe of the peer's arrives (it then wins,
// if it is the first), ctx ends or the socket closes.
func (b *birthday) listen(ctx context.Context, i int, s *net.UDPConn) {
	defer b.wg.Done()
	readProbes(ctx, s, func(p []byte, from netip.AddrPort) bool {
		if from.Addr() != b.peer.Addr() || !isProbe(p, b.probe) {
			return true
		}
		b.once.Do(func() {
			b.from = from
			b.won <- i
		})
		return false
	})
}

// readProbes reads probe-sized datagrams from s and hands each to take,
// with its source unmapped, until take returns false, ctx ends or s
// closes. ctx's end sets a past read deadline on s; readProbes waits for
// that wake-up to be over, so nothing touches s's deadline after it
// returns.
func readProbes(ctx context.Context, s *net.UDPConn, take func(p []byte, from netip.AddrPort) bool) {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		s.SetReadDeadline(time.Now())
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()
	buf := make([]byte, probeLen+1)
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue // an ICMP error surfacing on the socket
		}
		if !take(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())) {
			return
		}
	}
}

// isProbe reports whether p is the probe want (our pairing's).
func isProbe(p, want []byte) bool {
	return len(p) == len(want) && string(p) == string(want)
}

func newProbe(pairingID [16]byte) []byte {
	p := make([]byte, probeLen)
	p[0] = ProbeType
	copy(p[1:], pairingID[:])
	return p
}

// spray is the easy side's part: probes from the Conn's socket to distinct
// random ports of ip, sprayBurst every sprayTick, until n are sent, a probe
// came back from one of those ports (a candidate on ip learned since the
// spray began), the path is confirmed or ctx ends. It returns the probes
// sent.
func (c *Conn) spray(ctx context.Context, ip netip.Addr, skip uint16, n int) (sent int) {
	n = min(n, MaxSprayProbes)
	probe := c.probe()
	ports := sprayPorts(n, skip)
	c.mu.Lock()
	given := len(c.candidates)
	c.mu.Unlock()
	t := time.NewTicker(sprayTick)
	defer t.Stop()
	defer func() { c.count(func(s *Stats) { s.ProbesSent += uint64(sent) }) }()
	start := time.Now()
	for sent < len(ports) && !c.sprayAnswered(ip, given) {
		// The pace is kept by the clock, not by the ticks, which a busy
		// machine delays: after a late tick, what is due goes at once
		// (at most sprayCatchUp more ticks' worth).
		due := sprayBurst * (1 + int(time.Since(start)/sprayTick))
		due = min(due, sent+sprayCatchUp*sprayBurst, len(ports))
		for _, p := range ports[sent:due] {
			c.sock.WriteToUDPAddrPort(probe, netip.AddrPortFrom(ip, p))
			sent++
		}
		select {
		case <-ctx.Done():
			return sent
		case <-t.C:
		}
	}
	return sent
}

// sprayCatchUp bounds a burst after a late tick, in ticks' worth of
// probes.
const sprayCatchUp = 8

// sprayPorts picks n distinct ports from sprayLowPort up, none of them skip.
func sprayPorts(n int, skip uint16) []uint16 {
	span := 65536 - sprayLowPort
	n = min(n, span-1)
	seen := make(map[uint16]bool, n+1)
	seen[skip] = true
	out := make([]uint16, 0, n)
	for len(out) < n {
		p := uint16(sprayLowPort + rand.IntN(span))
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// sprayAnswered reports whether the spray can stop: the path is confirmed,
// or a probe taught us a candidate on ip (one past the first given).
func (c *Conn) sprayAnswered(ip netip.Addr, given int) bool {
	if c.isConfirmed.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.candidates[min(given, len(c.candidates)):] {
		if a.Addr() == ip {
			return true
		}
	}
	return false
}
