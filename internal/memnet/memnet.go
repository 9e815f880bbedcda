// Package memnet is an in-memory datagram network for tests: sockets with
// addresses that send each other datagrams without the kernel, so that a
// test written for UDP sockets runs over a fake as well as over loopback
// (wireguard-go runs its tests over a channel bind and real UDP alike).
//
// A Network's sockets behave as unconnected UDP sockets do, in what the
// path layer relies on (pipe/path.Socket):
//
//   - A datagram goes whole or not at all; one longer than the reader's
//     buffer is cut to it. A datagram to an address nobody listens on, or
//     to a socket whose queue is full (Config.QueueLen), is lost without a
//     word, as UDP loses it.
//   - Datagrams between two sockets keep their order, unless the
//     impairment reorders them.
//   - A read waits for a datagram. At the read deadline it fails with an
//     error that wraps os.ErrDeadlineExceeded, after Close with one that
//     wraps net.ErrClosed (each a *net.OpError, as the net package's).
//
// With Config.Impairment each direction between two addresses loses,
// duplicates, reorders, delays and rate-limits datagrams by
// internal/netem's model (the rules at the top of netem's model.go), with
// its own random generator seeded by (Config.Seed, the pair of addresses):
// one impairment model for the userspace proxy and the fake.
//
// memnet imports only the standard library and internal/netem.
package memnet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
)

// maxDatagram is the largest UDP payload over IPv4; a longer write fails,
// as it does on a real socket.
const maxDatagram = 65507

// defaultQueueLen is Config.QueueLen's default.
const defaultQueueLen = 1024

// firstPort is where the ports Listen picks start, as the ephemeral range
// of most systems does.
const firstPort = 49152

// Config describes a Network. The zero value is a perfect wire: no loss,
// no delay, order kept.
type Config struct {
	// Impairment is what every direction between two sockets does to
	// datagrams (see netem.Impairment). Each direction has its own model.
	Impairment netem.Impairment
	// Seed makes the impairment's random decisions reproducible, as far as
	// the order of the datagrams is (netem's model.go says how far).
	Seed int64
	// QueueLen is how many datagrams a socket holds unread before it drops
	// the next ones, like a socket's receive buffer. Zero means 1024.
	QueueLen int
}

// Network joins the Sockets that Listen opens on it. Its methods and its
// sockets' are safe for concurrent use.
type Network struct {
	cfg    Config
	impair bool // cfg.Impairment is not a perfect wire
	start  time.Time

	mu     sync.Mutex
	socks  map[netip.AddrPort]*Socket
	links  map[[2]netip.AddrPort]*link // by (from, to), with an impairment only
	next   uint16                      // the next port Listen tries
	closed bool
	stats  netem.DirStats
}

// New returns an empty network, or an error if cfg.Impairment is not
// valid.
func New(cfg Config) (*Network, error) {
	if _, err := netem.NewModel(cfg.Impairment, cfg.Seed, 0); err != nil {
		return nil, fmt.Errorf("memnet: %w", err)
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = defaultQueueLen
	}
	return &Network{
		cfg:    cfg,
		impair: cfg.Impairment != netem.Impairment{},
		start:  time.Now(),
		socks:  make(map[netip.AddrPort]*Socket),
		links:  make(map[[2]netip.AddrPort]*link),
		next:   firstPort,
	}, nil
}

// ErrAddrInUse: Listen was given an address another socket of the network
// has.
var ErrAddrInUse = errors.New("address already in use")

// Listen opens a socket at addr. An invalid addr means 127.0.0.1, and port
// 0 a free port of the network's choosing; an IPv4-mapped IPv6 address is
// its IPv4 address. Any address may be used, not only loopback: a test can
// give each side the address it would have behind its NAT.
func (n *Network) Listen(addr netip.AddrPort) (*Socket, error) {
	if !addr.IsValid() {
		addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr), Err: net.ErrClosed}
	}
	if addr.Port() == 0 {
		port, ok := n.freePortLocked(addr.Addr())
		if !ok {
			return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr), Err: errors.New("no free port")}
		}
		addr = netip.AddrPortFrom(addr.Addr(), port)
	}
	if n.socks[addr] != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr), Err: ErrAddrInUse}
	}
	s := newSocket(n, addr)
	n.socks[addr] = s
	return s, nil
}

// freePortLocked picks a port no socket at ip has, from the ephemeral
// range, round robin as a kernel does, so a closed socket's port is not
// given again at once.
func (n *Network) freePortLocked(ip netip.Addr) (uint16, bool) {
	for range 65536 - firstPort {
		port := n.next
		n.next++
		if n.next == 0 {
			n.next = firstPort
		}
		if n.socks[netip.AddrPortFrom(ip, port)] == nil {
			return port, true
		}
	}
	return 0, false
}

// Stats returns what the network did with the datagrams sent on it, in
// netem's counters: Received counts the datagrams sent, Undelivered the
// copies that found no socket, a closed one or a full queue.
func (n *Network) Stats() netem.DirStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Close closes every socket and drops the datagrams still on their way.
// Listen fails after it.
func (n *Network) Close() error {
	n.mu.Lock()
	n.closed = true
	socks := make([]*Socket, 0, len(n.socks))
	for _, s := range n.socks {
		socks = append(socks, s)
	}
	links := n.links
	n.links = make(map[[2]netip.AddrPort]*link)
	n.mu.Unlock()
	for _, l := range links {
		l.stop()
	}
	for _, s := range socks {
		s.Close()
	}
	return nil
}

// forget removes s, which closed, from the network.
func (n *Network) forget(s *Socket) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.socks[s.addr] == s {
		delete(n.socks, s.addr)
	}
}

// now is the network's clock for the impairment models.
func (n *Network) now() time.Duration { return time.Since(n.start) }

// send carries a datagram b (the network's own copy) from from to to.
func (n *Network) send(from, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	n.stats.Received++
	var l *link
	if n.impair && !n.closed {
		l = n.linkLocked(from, to)
	}
	n.mu.Unlock()
	if l == nil {
		n.deliverTo(to, from, b)
		return
	}
	l.send(b)
}

// linkLocked returns the impaired direction from from to to, made at its
// first datagram.
func (n *Network) linkLocked(from, to netip.AddrPort) *link {
	key := [2]netip.AddrPort{from, to}
	l := n.links[key]
	if l == nil {
		m, _ := netem.NewModel(n.cfg.Impairment, n.cfg.Seed, stream(from, to)) // checked in New
		l = newLink(n, from, to, m)
		n.links[key] = l
	}
	return l
}

// deliverTo queues b, from from, at the socket at to, if there is one.
func (n *Network) deliverTo(to, from netip.AddrPort, b []byte) {
	n.mu.Lock()
	dst := n.socks[to]
	n.mu.Unlock()
	ok := dst != nil && dst.enqueue(packet{from: from, data: b})
	n.mu.Lock()
	if ok {
		n.stats.Delivered++
	} else {
		n.stats.Undelivered++
	}
	n.mu.Unlock()
}

// count adds one datagram's fate to the counters.
func (n *Network) count(f netem.Fate) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case f.Lost:
		n.stats.DroppedLoss++
		return
	case f.Duplicated:
		n.stats.Duplicated++
	}
	n.stats.DroppedQueue += uint64(f.QueueDropped)
	n.stats.Reordered += uint64(f.Reordered)
}

// stream names the direction from from to to for its random generator: it
// depends on the addresses alone, so the same addresses and seed give the
// same decisions in every run.
func stream(from, to netip.AddrPort) uint64 {
	h := fnv.New64a()
	for _, a := range []netip.AddrPort{from, to} {
		b, _ := a.MarshalBinary()
		h.Write(b)
	}
	return h.Sum64()
}
