//go:build linux

package pipe

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// TestSilenceWatch: an attempt that hears nothing is over soon after an
// ICMP port unreachable from the peer's address, or at once when the
// peer's moved-on notice comes through the relay, even while no handshake
// reads the socket (the RSA key is still being generated); one whose peer
// probes is not over; and nothing is over after the watch was stopped.
func TestSilenceWatch(t *testing.T) {
	id := [16]byte{5}
	observed := rendezvous.Match{
		Observed:     netip.MustParseAddrPort("198.51.100.7:1"),
		PeerObserved: netip.MustParseAddrPort("198.51.100.9:1"),
	}
	start := func(t *testing.T, server netip.AddrPort, peer netip.AddrPort, m rendezvous.Match) (*attempt, *net.UDPConn) {
		t.Helper()
		sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		a := &attempt{cfg: &Config{Logger: slog.New(slog.DiscardHandler)}, match: m}
		a.link = path.New(sock, server, id, []netip.AddrPort{peer}, a.cfg.Logger, path.Options{Relay: true})
		a.watchSilence()
		t.Cleanup(func() { a.end() })
		return a, sock
	}
	udp := func(t *testing.T) *net.UDPConn {
		s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	addr := func(s *net.UDPConn) netip.AddrPort { return s.LocalAddr().(*net.UDPAddr).AddrPort() }

	t.Run("refused", func(t *testing.T) {
		closed := udp(t)
		dead := addr(closed)
		closed.Close()
		began := time.Now()
		a, _ := start(t, addr(udp(t)), dead, observed)
		select {
		case <-a.unheard:
			if took := time.Since(began); took >= unheardTimeout {
				t.Fatalf("over after %v: the ICMP did not shorten it", took)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("never over")
		}
	})
	t.Run("refused behind one NAT", func(t *testing.T) {
		// Both seen at the same public address: our own router refused
		// the hairpin; only the timeout ends it.
		closed := udp(t)
		dead := addr(closed)
		closed.Close()
		same := observed
		same.PeerObserved = netip.AddrPortFrom(observed.Observed.Addr(), 2)
		began := time.Now()
		a, _ := start(t, addr(udp(t)), dead, same)
		select {
		case <-a.unheard:
			if took := time.Since(began); took < unheardTimeout {
				t.Fatalf("over after %v, before unheardTimeout", took)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("never over")
		}
	})
	t.Run("moved on", func(t *testing.T) {
		server, peer := udp(t), udp(t)
		a, sock := start(t, addr(server), addr(peer), observed)
		notice := append(wire.AppendRelayHeader(nil, id), probe(id)...)
		if _, err := server.WriteToUDP(notice, sock.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		// Nobody calls Recv yet (no handshake before the key): the
		// notice is read when one does.
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := a.link.Recv(buf); err != nil && !isTimeout(err) {
					return
				}
			}
		}()
		select {
		case <-a.unheard:
			if !isClosed(a.link.MovedOn()) {
				t.Fatal("over, but not for the moved-on notice")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not over after the moved-on notice")
		}
	})
	t.Run("heard", func(t *testing.T) {
		peer := udp(t)
		a, sock := start(t, addr(udp(t)), addr(peer), observed)
		stop := make(chan struct{})
		defer close(stop)
		go func() { // the peer probes, as it does from the moment it is paired
			for {
				_, _ = peer.WriteToUDP(probe(id), sock.LocalAddr().(*net.UDPAddr))
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		select {
		case <-a.unheard:
			t.Fatal("over although the peer's probes were waiting")
		case <-time.After(unheardTimeout + 500*time.Millisecond):
		}
	})
	t.Run("stopped", func(t *testing.T) {
		closed := udp(t)
		dead := addr(closed)
		closed.Close()
		a, _ := start(t, addr(udp(t)), dead, observed)
		a.stopWatch()
		a.stopWatch() // any number of times
		select {
		case <-a.unheard:
			t.Fatal("over after the watch was stopped")
		case <-time.After(unheardTimeout + 300*time.Millisecond):
		}
	})
}

func probe(id [16]byte) []byte {
	p := make([]byte, 128)
	p[0] = path.ProbeType
	copy(p[1:], id[:])
	return p
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
