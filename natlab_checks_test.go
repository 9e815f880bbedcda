package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"
)

// labCheckJobs check that the labs are what the matrix takes them for,
// with plain UDP sockets in the lab's namespaces: the delay of a delayed
// lab (when delay > 0), and the routers' IPv6 filtering.
func labCheckJobs(script string, delay time.Duration) []labJob {
	jobs := []labJob{
		ipv6FilterJob(script, "ipv6", false),
		ipv6FilterJob(script, "ipv6open", true),
	}
	if delay > 0 {
		jobs = append(jobs, delayCheckJob(script, delay))
	}
	return jobs
}

// labSocket opens a UDP socket on addr in namespace ns, closed when the
// test ends.
func labSocket(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	c, err := inNetns(ns, func() (*net.UDPConn, error) {
		return net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// received reports whether c receives a datagram within wait.
func received(c *net.UDPConn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, _, err := c.ReadFromUDPAddrPort(make([]byte, 64))
	return err == nil
}

// ipv6FilterJob checks a lab built with option opt (ipv6 or ipv6open)
// behind cone routers: a datagram from the server to alice's IPv6 address
// arrives only when the router is open, until alice has sent to the
// server from that port; then the server's reply arrives in either.
func ipv6FilterJob(script, opt string, open bool) labJob {
	return labJob{opt + "-filter", func(t *testing.T) {
		ctx := testCtx(t, 30*time.Second)
		prefix := fmt.Sprintf("nl%df%d", os.Getpid(), map[bool]int{false: 0, true: 1}[open])
		upNATLabWith(t, ctx, script, prefix, "cone", "cone", labOptions{ipv6: opt})
		srv := labSocket(t, prefix+"-srv", "[2001:db8:100::1]:4000")
		alice := labSocket(t, prefix+"-a", "[2001:db8:1::2]:4000")
		to := netip.MustParseAddrPort("[2001:db8:1::2]:4000")
		if _, err := srv.WriteToUDPAddrPort([]byte("unsolicited"), to); err != nil {
			t.Fatal(err)
		}
		if got := received(alice, 500*time.Millisecond); got != open {
			t.Errorf("an unsolicited datagram from the server reached alice: %v, want %v", got, open)
		}
		if _, err := alice.WriteToUDPAddrPort([]byte("out"), netip.MustParseAddrPort("[2001:db8:100::1]:4000")); err != nil {
			t.Fatal(err)
		}
		if !received(srv, 2*time.Second) {
			t.Fatal("alice's datagram did not reach the server over IPv6")
		}
		if _, err := srv.WriteToUDPAddrPort([]byte("reply"), to); err != nil {
			t.Fatal(err)
		}
		if !received(alice, 2*time.Second) {
			t.Error("the server's reply to alice's datagram did not reach her")
		}
	}}
}

// delayCheckJob checks the delay itself: in a delayed lab with two public
// clients, a UDP echo between them takes at least the round trip the
// delay makes (twice the delay), every time. The median is logged.
func delayCheckJob(script string, delay time.Duration) labJob {
	return labJob{"delay-rtt", func(t *testing.T) {
		ctx := testCtx(t, 30*time.Second)
		prefix := fmt.Sprintf("nl%ddr", os.Getpid())
		upNATLabWith(t, ctx, script, prefix, "public", "public", labOptions{delay: delay})
		a, b := labSocket(t, prefix+"-a", "198.51.100.10:4000"), labSocket(t, prefix+"-b", "198.51.100.20:4000")
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := b.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				b.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
		rtts := echoRTTs(t, a, netip.MustParseAddrPort("198.51.100.20:4000"), 5)
		slices.Sort(rtts)
		t.Logf("UDP echo between the clients across a %v delay: min %v, median %v", delay, rtts[0].Round(time.Microsecond), rtts[len(rtts)/2].Round(time.Microsecond))
		if rtts[0] < 2*delay {
			t.Errorf("echo round trip %v, want at least twice the delay (%v)", rtts[0], 2*delay)
		}
	}}
}

// echoRTTs sends n datagrams from c to an echo at to, one at a time, and
// returns each round trip.
func echoRTTs(t *testing.T, c *net.UDPConn, to netip.AddrPort, n int) []time.Duration {
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range n {
		sent := time.Now()
		if _, err := c.WriteToUDPAddrPort([]byte{byte(i)}, to); err != nil {
			t.Fatal(err)
		}
		// The first may wait for ARP (delayed too); a lost one fails.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			m, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("echo %d: %v", i, err)
			}
			if m == 1 && buf[0] == byte(i) {
				break
			}
		}
		rtts = append(rtts, time.Since(sent))
	}
	return rtts
}
