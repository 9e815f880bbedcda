package path

// Batched plain I/O, Linux only, on a *net.UDPConn. Without GSO and GRO
// (Options.NoOffload, a kernel without them, or GSO switched off after a
// failure) the system call, not the datagram, is most of what a datagram
// costs when each takes one; sendmmsg and recvmmsg carry many per call
// instead:
//
//   - SendBatch to the confirmed direct peer hands the batch to sendmmsg,
//     sendBatchSize datagrams per call. A datagram the kernel refuses (too
//     large for the interface, say) is skipped and the rest go on; a closed
//     socket ends the batch with net.ErrClosed.
//   - Recv reads up to recvBatchSize datagrams per recvmmsg into a ring of
//     slots and returns them one at a time, each through inbound, as
//     recvGRO does with a coalesced read.
//   - Where a call is missing (ENOSYS: an old kernel, a seccomp filter),
//     that direction goes back to one datagram per system call for good.
//
// The receive slots: a datagram may be up to 64 KiB (loopback, with path
// MTU probing), and one larger than its slot is truncated, that is lost;
// so every slot holds 64 KiB. There are only 8 of them (512 KiB of address
// space per Conn, allocated at the first Recv): the kernel writes only the
// pages a datagram covers, so with 1200-byte datagrams about 32 KiB become
// resident. Eight per call already divide the per-call cost by eight; more
// slots would save little and would grow the resident set with large
// datagrams, where batching matters least (few datagrams per byte).
// Mixing small and large slots would truncate whichever large datagram
// lands in a small one. When the caller's buffer holds 64 KiB, the first
// datagram of each read goes straight into it, so a lone datagram (the
// usual case for large ones) is not copied.
//
// Recv calls recvmmsg itself through x/sys/unix, parsing the sender's
// address in place: x/net's ReadBatch allocates a net.UDPAddr for every
// datagram. SendBatch uses x/net's WriteBatch (as the rendezvous server
// does), which allocates nothing once the peer's *net.UDPAddr is cached.

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

const (
	sendBatchSize = 64       // datagrams per sendmmsg; a secure batch is at most 64 KiB, 55 datagrams
	recvBatchSize = 8        // datagrams per recvmmsg (see above)
	recvSlotSize  = 64 << 10 // any UDP datagram
)

// plainSender sends batches with sendmmsg. Its zero value is ready: the
// first batch sets it up (GSO may be turned off long after New).
type plainSender struct {
	conn  udpio.BatchConn // nil until the first batch
	off   bool            // no sendmmsg here: one datagram per call
	msgs  []ipv4.Message
	peer  netip.AddrPort // whom addr is for
	addr  *net.UDPAddr   // cached: one per batch would allocate
	calls uint64         // sendmmsg calls, for tests
}

// plainReceiver reads datagrams with recvmmsg into a ring of slots. Its
// zero value is ready: the first Recv sets it up.
type plainReceiver struct {
	raw     syscall.RawConn // nil until the first Recv
	off     bool            // no recvmmsg here: one datagram per call
	hdrs    []unix.Mmsghdr
	iovs    []unix.Iovec
	names   []unix.RawSockaddrInet6 // the senders; an IPv4 sockaddr fits too
	slots   []byte                  // recvBatchSize × recvSlotSize
	n, next int                     // datagrams read by the last call; the next to return

	// recvmmsgFn is r.recvmmsg, bound once: a method value made at every
	// read would allocate. It leaves its results in got and errno.
	recvmmsgFn func(fd uintptr) bool
	got        int
	errno      syscall.Errno

	zoneID uint32 // the last IPv6 scope seen, and its name
	zone   string
	calls  uint64 // recvmmsg calls that returned datagrams, for tests
}

// sendPlainLocked sends bufs to peer with as few sendmmsg calls as
// possible. The caller holds sendMu.
func (c *Conn) sendPlainLocked(bufs [][]byte, peer netip.AddrPort) error {
	s := &c.plainOut
	if s.off || len(bufs) < 2 || c.udp == nil {
		return c.sendEachLocked(bufs, peer) // for one datagram, sendto is as cheap
	}
	if s.conn == nil {
		s.conn = udpio.NewBatchConn(c.udp)
		s.msgs = make([]ipv4.Message, sendBatchSize)
		for i := range s.msgs {
			s.msgs[i].Buffers = make([][]byte, 1)
		}
	}
	if s.addr == nil || s.peer != peer {
		s.peer, s.addr = peer, net.UDPAddrFromAddrPort(peer)
	}
	for len(bufs) > 0 {
		msgs := s.msgs[:min(len(bufs), len(s.msgs))]
		for i := range msgs {
			msgs[i].Buffers[0] = bufs[i]
			msgs[i].Addr = s.addr
		}
		sent, err := c.writeBatchLocked(msgs)
		for i := range msgs {
			msgs[i].Buffers[0] = nil // SendBatch does not retain bufs
		}
		switch {
		case errors.Is(err, syscall.ENOSYS):
			s.off = true
			c.log.Debug("no sendmmsg; sending one datagram per system call from now on", "err", err)
			return c.sendEachLocked(bufs[sent:], peer)
		case err != nil:
			return err
		}
		bufs = bufs[len(msgs):]
	}
	return nil
}

// writeBatchLocked sends msgs, skipping those the kernel refuses. It
// returns how many went out before an error that ends the batch: a closed
// socket, or ENOSYS.
func (c *Conn) writeBatchLocked(msgs []ipv4.Message) (int, error) {
	s := &c.plainOut
	sent, retried := 0, -1
	for sent < len(msgs) {
		n, err := s.conn.WriteBatch(msgs[sent:], 0)
		s.calls++
		switch {
		case err == nil:
			sent += max(n, 1) // sendmmsg sends at least one or fails; never spin
		case errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ENOSYS):
			return sent, err
		case icmpError(err) && retried != sent:
			// An ICMP error about an earlier datagram, as in write: read
			// it and send this one again (once).
			c.readErrQueue()
			retried = sent
		default:
			// sendmmsg fails only on the first datagram of a call (a later
			// failure ends the call early, and the next call starts with
			// it): skip that one, lost like any other.
			sent++
		}
	}
	return sent, nil
}

// recvPlain returns the next datagram for the secure layer from the ring,
// reading the socket when the ring is empty.
func (c *Conn) recvPlain(buf []byte) (int, netip.AddrPort, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	r := &c.plainIn
	if !r.off && r.raw == nil {
		if c.udp == nil || r.init(c.udp) != nil {
			r.off = true // not a kernel socket, or one without a raw descriptor
		}
	}
	if r.off {
		return c.recvEach(buf)
	}
	for {
		for r.next < r.n {
			i := r.next
			r.next++
			if n, from, err := c.deliverLocked(buf, r.slots[i*recvSlotSize:(i+1)*recvSlotSize], i); err != nil || from.IsValid() {
				return n, from, err
			}
		}
		// With room for any datagram, the first of this read goes straight
		// into buf.
		direct := len(buf) >= recvSlotSize
		var first []byte
		if direct {
			first = buf[:recvSlotSize]
		}
		n, err := r.read(first)
		if err != nil {
			// Any error but an ICMP report ends Recv, rather than a loop
			// that spins on it.
			switch {
			case icmpError(err):
				c.readErrQueue()
				continue
			case errors.Is(err, syscall.ENOSYS):
				r.off = true
				c.log.Debug("no recvmmsg; reading one datagram per system call from now on", "err", err)
				return c.recvEach(buf)
			}
			return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Source: c.sock.LocalAddr(), Err: err}
		}
		r.n, r.next = n, 0
		if direct && n > 0 {
			r.next = 1
			if n, from, err := c.deliverLocked(buf, first, 0); err != nil || from.IsValid() {
				return n, from, err
			}
		}
	}
}

// deliverLocked passes datagram i of the last read, which lies in slot,
// through inbound, and copies what the secure layer gets into buf with its
// sender. The sender is invalid for a datagram handled or dropped here.
func (c *Conn) deliverLocked(buf, slot []byte, i int) (int, netip.AddrPort, error) {
	r := &c.plainIn
	h := &r.hdrs[i]
	from := r.sender(i)
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 || !from.IsValid() {
		// Truncation cannot happen with 64 KiB slots; a piece of a
		// datagram is never passed on.
		c.count(func(s *Stats) { s.Dropped++ })
		return 0, netip.AddrPort{}, nil
	}
	p, err := c.inbound(slot[:h.Len], from)
	if err != nil || p == nil {
		return 0, netip.AddrPort{}, err
	}
	return copy(buf, p), from, nil
}

func (r *plainReceiver) init(udp *net.UDPConn) error {
	raw, err := udp.SyscallConn()
	if err != nil {
		return err
	}
	r.hdrs = make([]unix.Mmsghdr, recvBatchSize)
	r.iovs = make([]unix.Iovec, recvBatchSize)
	r.names = make([]unix.RawSockaddrInet6, recvBatchSize)
	r.slots = make([]byte, recvBatchSize*recvSlotSize)
	for i := range r.hdrs {
		r.iovs[i].Base = &r.slots[i*recvSlotSize]
		r.iovs[i].SetLen(recvSlotSize)
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}
	r.recvmmsgFn = r.recvmmsg
	r.raw = raw
	return nil
}

// read fills the ring with one recvmmsg, waiting until a datagram is
// there; first, when not nil, takes the first datagram instead of slot 0.
func (r *plainReceiver) read(first []byte) (int, error) {
	for i := range r.hdrs {
		// The kernel wrote these last time.
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	if first != nil {
		r.iovs[0].Base = &first[0]
	}
	err := r.raw.Read(r.recvmmsgFn)
	r.iovs[0].Base = &r.slots[0] // keep no reference to the caller's buffer
	switch {
	case err != nil:
		return 0, err // closed
	case r.errno != 0:
		return 0, os.NewSyscallError("recvmmsg", r.errno)
	}
	r.calls++
	return r.got, nil
}

// recvmmsg runs inside RawConn.Read: false asks it to wait until the
// socket is readable and call again.
func (r *plainReceiver) recvmmsg(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.got, r.errno = int(n), errno
		return true
	}
}

// sender returns the address datagram i came from, IPv4 unmapped, or an
// invalid one.
func (r *plainReceiver) sender(i int) netip.AddrPort {
	sa := &r.names[i]
	if r.hdrs[i].Hdr.Namelen < 4 {
		return netip.AddrPort{}
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]) // network byte order in both families
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr).Unmap()
		if sa.Scope_id != 0 && a.Is6() {
			a = a.WithZone(r.zoneName(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}

// zoneName names an IPv6 scope as the net package does, remembering the
// last one so that a link-local peer costs no allocation per datagram.
func (r *plainReceiver) zoneName(id uint32) string {
	if id != r.zoneID || r.zone == "" {
		r.zoneID = id
		r.zone = strconv.FormatUint(uint64(id), 10)
		if ifc, err := net.InterfaceByIndex(int(id)); err == nil {
			r.zone = ifc.Name
		}
	}
	return r.zone
}

// testOnlyOneByOne makes c send and receive one datagram per system call,
// as where the system has no sendmmsg/recvmmsg. Call it before Recv.
func (c *Conn) testOnlyOneByOne() {
	c.sendMu.Lock()
	c.plainOut.off = true
	c.sendMu.Unlock()
	c.recvMu.Lock()
	c.plainIn.off = true
	c.recvMu.Unlock()
}
