package udpio

import (
	"net"
	"testing"
	"time"
)

// TestStampReceives: with the stamps on, a datagram read with its control
// messages carries its arrival time, between the send and the read; with
// them off again, it carries none.
func TestStampReceives(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer HoldStamps()()
	stop, ok := StampReceives(conn)
	if !ok {
		t.Fatal("StampReceives: not available on Linux")
	}
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	buf, oob := make([]byte, 64), make([]byte, StampSpace)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	before := time.Now()
	conn.WriteToUDPAddrPort([]byte("x"), to)
	_, oobn, _, _, err := conn.ReadMsgUDPAddrPort(buf, oob)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	at, ok := ReceiveTime(oob[:oobn])
	if !ok {
		t.Fatal("no receive time in the control messages")
	}
	// A microsecond of slack either way: the kernel's clock reading and
	// ours are not the same call.
	if at.Before(before.Add(-time.Microsecond)) || at.After(after.Add(time.Microsecond)) {
		t.Errorf("receive time %v outside [%v, %v]", at, before, after)
	}
	stop()
	conn.WriteToUDPAddrPort([]byte("y"), to)
	_, oobn, _, _, err = conn.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ReceiveTime(oob[:oobn]); ok {
		t.Error("a receive time after the stamps were turned off")
	}
}
