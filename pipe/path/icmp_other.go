//go:build !linux

package path

// ICMP errors are read on Linux only (icmp_linux.go): elsewhere Refused
// never fires and attempts end as they did.
func (c *Conn) enableRecvErr() {}
func (c *Conn) readErrQueue()  {}
