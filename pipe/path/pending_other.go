//go:build !unix

package path

// Pending cannot look at the socket's queue here: it says true (a
// datagram may wait), so that nothing ends an attempt for silence on its
// account (pending_unix.go).
func (c *Conn) Pending() bool { return true }
