//go:build !linux

package udpio

import (
	"net"
	"time"
)

// StampReceives: no kernel receive timestamps here (see stamp_linux.go).
func StampReceives(conn *net.UDPConn) (stop func(), ok bool) { return func() {}, false }

// StampSpace is the control message room ReceiveTime needs: none here.
var StampSpace = 0

// ReceiveTime finds no timestamp here.
func ReceiveTime(oob []byte) (time.Time, bool) { return time.Time{}, false }

// HoldStamps: nothing to hold here.
func HoldStamps() (release func()) { return func() {} }
