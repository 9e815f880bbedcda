package rendezvous_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// stamping reports whether conn has the kernel's receive timestamps on.
func stamping(t *testing.T, conn *net.UDPConn) bool {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var serr error
	raw.Control(func(fd uintptr) { on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS) })
	if serr != nil {
		t.Fatal(serr)
	}
	return on != 0
}

// TestFindStamps: a Find's match says when its answer arrived (between the
// Find's start and its return), and every Find leaves the socket's receive
// timestamps off, matched or given up: the session's batched reads that
// follow on the socket have no room for them.
func TestFindStamps(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ua, ub := listen(), listen()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var ma, mb rendezvous.Match
	var errA, errB error
	start := time.Now()
	wg.Go(func() {
		ma, errA = (&rendezvous.Client{Conn: ua, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b"})
	})
	wg.Go(func() {
		mb, errB = (&rendezvous.Client{Conn: ub, Server: srv.Addr}).Find(ctx, rendezvous.FindRequest{Session: "s", Name: "b", Peer: "a"})
	})
	wg.Wait()
	end := time.Now()
	if errA != nil || errB != nil {
		t.Fatalf("find: %v / %v", errA, errB)
	}
	for name, m := range map[string]rendezvous.Match{"a": ma, "b": mb} {
		if m.Received.Before(start) || m.Received.After(end) {
			t.Errorf("%s: match received at %v, outside the finds [%v, %v]", name, m.Received, start, end)
		}
	}
	if stamping(t, ua) || stamping(t, ub) {
		t.Error("a matched Find left the receive timestamps on")
	}
	// Given up: nobody comes.
	uc := listen()
	cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer ccancel()
	_, err := (&rendezvous.Client{Conn: uc, Server: srv.Addr}).Find(cctx, rendezvous.FindRequest{Session: "s", Name: "c", Peer: "nobody"})
	if err == nil || !errors.Is(err, rendezvous.ErrPeerNotFound) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a find for nobody: %v", err)
	}
	if stamping(t, uc) {
		t.Error("a Find that gave up left the receive timestamps on")
	}
}
