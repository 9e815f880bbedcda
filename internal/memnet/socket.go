package memnet

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Socket is one address of a Network: an unconnected datagram socket, as
// a *net.UDPConn is (it is a net.PacketConn too). Reads and writes may run
// concurrently with each other, with SetReadDeadline and with Close.
type Socket struct {
	net   *Network
	addr  netip.AddrPort
	queue chan packet // datagrams delivered, not yet read
	done  chan struct{}
	once  sync.Once

	mu       sync.Mutex
	deadline time.Time     // of reads; zero: none
	moved    chan struct{} // closed, and replaced, when the deadline changes
}

var _ net.PacketConn = (*Socket)(nil)

// packet is a datagram waiting in a socket's queue.
type packet struct {
	from netip.AddrPort
	data []byte // the network's own copy, shared by duplicates: never written
}

func newSocket(n *Network, addr netip.AddrPort) *Socket {
	return &Socket{
		net:   n,
		addr:  addr,
		queue: make(chan packet, n.cfg.QueueLen),
		done:  make(chan struct{}),
		moved: make(chan struct{}),
	}
}

// Addr returns the socket's address.
func (s *Socket) Addr() netip.AddrPort { return s.addr }

// LocalAddr returns the socket's address as a *net.UDPAddr, as a
// *net.UDPConn's LocalAddr does.
func (s *Socket) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.addr) }

// ReadFromUDPAddrPort waits for the next datagram and copies it into b,
// cut to len(b). It fails once the read deadline has passed, or the socket
// is closed, even with datagrams waiting.
func (s *Socket) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	for {
		s.mu.Lock()
		deadline, moved := s.deadline, s.moved
		s.mu.Unlock()
		select {
		case <-s.done:
			return 0, netip.AddrPort{}, s.opError("read", net.ErrClosed)
		default:
		}
		var expired <-chan time.Time
		var timer *time.Timer
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, netip.AddrPort{}, s.opError("read", os.ErrDeadlineExceeded)
			}
			timer = time.NewTimer(d)
			expired = timer.C
		}
		select {
		case p := <-s.queue:
			stop(timer)
			return copy(b, p.data), p.from, nil
		case <-s.done:
			stop(timer)
			return 0, netip.AddrPort{}, s.opError("read", net.ErrClosed)
		case <-expired:
			return 0, netip.AddrPort{}, s.opError("read", os.ErrDeadlineExceeded)
		case <-moved:
			stop(timer) // a new deadline: wait again under it
		}
	}
}

func stop(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// WriteToUDPAddrPort sends b to to. It never blocks: a datagram the
// network cannot deliver is lost, as UDP loses it. It fails for a closed
// socket, an address without a port and a datagram longer than UDP allows.
func (s *Socket) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	select {
	case <-s.done:
		return 0, s.opError("write", net.ErrClosed)
	default:
	}
	switch {
	case !to.IsValid() || to.Port() == 0:
		return 0, s.opError("write", errors.New("invalid destination address"))
	case len(b) > maxDatagram:
		return 0, s.opError("write", syscall.EMSGSIZE)
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	s.net.send(s.addr, to, bytes.Clone(b))
	return len(b), nil
}

// ReadFrom is ReadFromUDPAddrPort for net.PacketConn.
func (s *Socket) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := s.ReadFromUDPAddrPort(b)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// WriteTo is WriteToUDPAddrPort for net.PacketConn; addr must be a
// *net.UDPAddr.
func (s *Socket) WriteTo(b []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, s.opError("write", errors.New("not a UDP address"))
	}
	return s.WriteToUDPAddrPort(b, a.AddrPort())
}

// SetReadDeadline bounds the reads waiting now and later; the zero time
// removes the bound.
func (s *Socket) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	close(s.moved)
	s.moved = make(chan struct{})
	return nil
}

// SetWriteDeadline does nothing: writes never block.
func (s *Socket) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline (writes never block).
func (s *Socket) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

// Close closes the socket: waiting and later reads and writes fail, the
// datagrams still queued are dropped, and the address is free again.
func (s *Socket) Close() error {
	err := error(s.opError("close", net.ErrClosed))
	s.once.Do(func() {
		close(s.done)
		s.net.forget(s)
		err = nil
	})
	return err
}

// enqueue delivers p, or reports false when the socket is closed or its
// queue is full.
func (s *Socket) enqueue(p packet) bool {
	select {
	case <-s.done:
		return false
	default:
	}
	select {
	case s.queue <- p:
		return true
	default:
		return false
	}
}

func (s *Socket) opError(op string, err error) *net.OpError {
	return &net.OpError{Op: op, Net: "udp", Source: s.LocalAddr(), Err: err}
}
