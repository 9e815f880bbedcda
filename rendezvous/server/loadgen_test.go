package server_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// loadGen is a benchmark client: two sockets (the A and B sides of many
// pairs) with their cookies, sending finds back to back.
type loadGen struct {
	server   netip.AddrPort
	a, b     *net.UDPConn
	ca, cb   []byte
	buf      []byte
	sendBufs [][]byte
}

func newLoadGen(tb testing.TB, server netip.AddrPort) *loadGen {
	g := &loadGen{server: server, buf: make([]byte, 2048)}
	var err error
	for _, c := range []**net.UDPConn{&g.a, &g.b} {
		if *c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			tb.Fatal(err)
		}
		(*c).SetReadBuffer(4 << 20)
		tb.Cleanup(func() { (*c).Close() })
	}
	g.ca = g.cookie(tb, g.a)
	g.cb = g.cookie(tb, g.b)
	return g
}

func (g *loadGen) cookie(tb testing.TB, c *net.UDPConn) []byte {
	c.WriteToUDPAddrPort(wire.Pad((&wire.Hello{ReqID: 1, Session: "bench"}).AppendTo(nil)), g.server)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := c.ReadFromUDPAddrPort(g.buf)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := wire.Decode(g.buf[:n])
	if err != nil {
		tb.Fatal(err)
	}
	return m.(*wire.Challenge).Cookie
}

// pairs runs n pairings: n finds from A (each answered "waiting"), then n
// from B (each answered with a match, and each pushing a match to A). It
// returns how many B sides were matched.
func (g *loadGen) pairs(tb testing.TB, w int, lo int64, n int) int {
	names := func(i int) (string, string) {
		return fmt.Sprintf("a%d-%d", w, lo+int64(i)), fmt.Sprintf("b%d-%d", w, lo+int64(i))
	}
	send := func(c *net.UDPConn, cookie []byte, side int) {
		msgs := make([]ipv4.Message, n)
		to := net.UDPAddrFromAddrPort(g.server)
		for i := range n {
			a, b := names(i)
			if side == 1 {
				a, b = b, a
			}
			f := &wire.Find{ReqID: uint64(lo) + uint64(i), Cookie: cookie, Session: "bench", Name: a, Peer: b}
			msgs[i] = ipv4.Message{Buffers: [][]byte{f.AppendTo(nil)}, Addr: to}
		}
		pc := ipv4.NewPacketConn(c)
		for sent := 0; sent < n; {
			k, err := pc.WriteBatch(msgs[sent:], 0)
			if err != nil {
				return
			}
			sent += k
		}
	}
	recv := func(c *net.UDPConn, want int, status wire.FindStatus) int {
		got := 0
		// A real client re-sends after 250 ms; an answer lost to a full
		// socket buffer costs this generator no more than that.
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		for got < want {
			nn, _, err := c.ReadFromUDPAddrPort(g.buf)
			if err != nil {
				return got // lost on a full socket buffer: counted as unmatched
			}
			m, err := wire.Decode(g.buf[:nn])
			if r, ok := m.(*wire.FindResp); err == nil && ok && r.Status == status {
				got++
			}
		}
		return got
	}
	send(g.a, g.ca, 0)
	recv(g.a, n, wire.FindWaiting)
	send(g.b, g.cb, 1)
	matched := recv(g.b, n, wire.FindMatched)
	recv(g.a, n, wire.FindMatched)
	return matched
}
