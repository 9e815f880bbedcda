// Package rendezvoustest starts real rendezvous servers on 127.0.0.1 for
// tests: an ephemeral port, a temporary data directory, and a clean stop
// when the test ends. It runs the real rendezvous/server, not a
// reimplementation, and hands out rendezvous clients for it.
//
// Imports: rendezvous, rendezvous/server and prometheus; only tests import
// it.
package rendezvoustest

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// Server is a running test server.
type Server struct {
	*server.Server
	Addr netip.AddrPort
	// STUNAlternate is the server's alternate STUN socket (RFC 5780
	// OTHER-ADDRESS): 127.0.0.1 and another ephemeral port.
	STUNAlternate netip.AddrPort
	DataDir       string
	Registry      *prometheus.Registry
	stop          func()
}

// Start runs a server on 127.0.0.1:0, with an alternate STUN socket on
// another port, until the test ends (or Stop). cfg may be zero; its DataDir
// defaults to a fresh temporary directory. Start returns once the alternate
// answers, which costs one token of 127.0.0.1's rate-limit bucket.
func Start(tb testing.TB, cfg server.Config) *Server {
	tb.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = tb.TempDir()
	}
	reg := prometheus.NewRegistry()
	if cfg.Registry == nil {
		cfg.Registry = reg
	}
	srv, err := server.NewServer(cfg)
	if err != nil {
		tb.Fatalf("rendezvoustest: %v", err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		srv.Close()
		tb.Fatalf("rendezvoustest: %v", err)
	}
	alt, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		conn.Close()
		srv.Close()
		tb.Fatalf("rendezvoustest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, altDone := make(chan error, 1), make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	go func() { altDone <- srv.ServeSTUNAlternate(ctx, alt) }()
	s := &Server{
		Server:        srv,
		Addr:          conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		STUNAlternate: alt.LocalAddr().(*net.UDPAddr).AddrPort(),
		DataDir:       cfg.DataDir,
		Registry:      reg,
	}
	var stopped bool
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("rendezvoustest: Serve: %v", err)
		}
		if err := <-altDone; err != nil {
			tb.Errorf("rendezvoustest: ServeSTUNAlternate: %v", err)
		}
		conn.Close()
		alt.Close()
		if err := srv.Close(); err != nil {
			tb.Errorf("rendezvoustest: Close: %v", err)
		}
	}
	tb.Cleanup(s.stop)
	s.waitAlternate(tb)
	return s
}

// waitAlternate returns once the alternate STUN socket answers, so that the
// server's answers carry OTHER-ADDRESS from the test's first request on.
func (s *Server) waitAlternate(tb testing.TB) {
	tb.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatalf("rendezvoustest: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rendezvous.STUNBinding(ctx, conn, s.STUNAlternate); err != nil {
		tb.Fatalf("rendezvoustest: the alternate STUN socket does not answer: %v", err)
	}
}

// Stop shuts the server down now (it is also stopped when the test ends).
func (s *Server) Stop() { s.stop() }

// Client returns a rendezvous client on a fresh loopback socket, closed when
// the test ends.
func (s *Server) Client(tb testing.TB) *rendezvous.Client {
	tb.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatalf("rendezvoustest: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &rendezvous.Client{Conn: conn, Server: s.Addr}
}

// RegisterSession registers session on the server with a new session key,
// for an hour, and returns the key.
func (s *Server) RegisterSession(tb testing.TB, session string) rendezvous.SessionKey {
	tb.Helper()
	key, err := rendezvous.GenerateSessionKey()
	if err != nil {
		tb.Fatalf("rendezvoustest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Client(tb).Register(ctx, session, key, time.Hour); err != nil {
		tb.Fatalf("rendezvoustest: registering %q: %v", session, err)
	}
	return key
}

// Metric returns the value of the named metric, summed over its labels
// (0 if absent). Only counters and gauges are read.
func (s *Server) Metric(name string) float64 {
	families, err := s.Registry.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
