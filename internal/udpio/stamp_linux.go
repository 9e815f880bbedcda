package udpio

import (
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// StampReceives turns the kernel's receive timestamps (SO_TIMESTAMPNS) on
// for conn, so that ReceiveTime finds each datagram's arrival in the
// control message a ReadMsgUDPAddrPort returns; stop turns them off again
// (the session's batched reads have no room for them). ok is false where
// the socket does not have them.
func StampReceives(conn *net.UDPConn) (stop func(), ok bool) {
	set := func(on int) error {
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, on)
		}); err != nil {
			return err
		}
		return serr
	}
	if set(1) != nil {
		return func() {}, false
	}
	return func() { set(0) }, true
}

// StampSpace is the control message room ReceiveTime's timestamp needs.
var StampSpace = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))

// ReceiveTime returns the arrival time in oob, the control messages of one
// read, when they carry one.
func ReceiveTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			return time.Unix(ts.Unix()), true
		}
	}
	return time.Time{}, false
}

// HoldStamps keeps the kernel's receive timestamping on until release is
// called, with a socket of its own that carries nothing. The kernel turns
// timestamping on for all sockets at once, in deferred work, when the
// first socket asks for it and off when the last stops: a socket that
// asks (StampReceives) a moment before its datagram arrives may find it
// stamped only when read. Held from before the first Find, it is on by
// the time any later Find's answer arrives.
func HoldStamps() (release func()) {
	// On loopback, where nobody else sends to it; where loopback is not
	// up (a bare network namespace), on any address with the smallest
	// receive buffer the kernel allows.
	s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		if s, err = net.ListenUDP("udp", nil); err != nil {
			return func() {}
		}
		s.SetReadBuffer(1)
	}
	if _, ok := StampReceives(s); !ok {
		s.Close()
		return func() {}
	}
	return func() { s.Close() }
}
