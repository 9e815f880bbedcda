package secure

import (
	"net/netip"
	"time"
)

// Link is the punched path below the secure layer (implemented by
// pipe/path). Send may be called concurrently with Recv and with itself.
type Link interface {
	// Send sends b as one datagram to the peer's current address. It does
	// not retain b.
	Send(b []byte) error
	// Recv reads the next datagram from anyone into buf. It returns an
	// error after Close.
	Recv(buf []byte) (n int, from netip.AddrPort, err error)
	// Confirm reports that a packet from `from` authenticated: the link
	// should use it as the peer's address from now on (peer-reflexive
	// address learning, roaming).
	Confirm(from netip.AddrPort)
	Close() error
}

// DeadlineLink is a Link that can bound a blocked Recv (pipe/path: the
// socket's read deadline), so that a Handshaker stops at its deadline and
// can go on later over the same link. Over a Link without it, a deadline
// closes the link.
type DeadlineLink interface {
	Link
	SetReadDeadline(t time.Time) error
}

// HeardLink is a Link that is told of every authentic packet from the
// peer (pipe/path: liveness, and whether a direct path works), so that
// nothing unauthenticated moves its state. Heard is called on the receive
// path and must be cheap.
type HeardLink interface {
	Link
	Heard(from netip.AddrPort)
}

// BatchLink is a Link that can send several datagrams with one system call
// (pipe/path does, with UDP GSO).
type BatchLink interface {
	Link
	SendBatch(bufs [][]byte) error
}
