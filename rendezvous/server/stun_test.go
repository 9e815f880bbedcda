package server

// Tests of the STUN service from inside the package: they start the server
// by hand (rendezvoustest imports this package, so it cannot be used here)
// to register the primary socket and to read the drop counters.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/internal/stunmsg"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// stunTestServer is a running server with its STUN sockets.
type stunTestServer struct {
	srv          *Server
	reg          *prometheus.Registry
	primary, alt netip.AddrPort // alt is zero without an alternate socket
}

// startSTUNServer runs a server on primaryIP:0 and, unless altIP is empty,
// an alternate STUN socket on altIP:0, until the test ends. It skips the
// test when an address cannot be bound here (no IPv6, no 127.0.0.2).
func startSTUNServer(t testing.TB, cfg Config, primaryIP, altIP string) *stunTestServer {
	t.Helper()
	listen := func(ip string) *net.UDPConn {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
		if err != nil {
			t.Skipf("cannot bind %s here: %v", ip, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	conn := listen(primaryIP)
	var alt *net.UDPConn
	if altIP != "" {
		alt = listen(altIP)
	}
	cfg.DataDir = t.TempDir()
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// What Serve's one-line hook does; doing it here too keeps these tests
	// independent of it (setting the same socket twice is harmless).
	srv.stun.setPrimary(conn)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, conn); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	ts := &stunTestServer{srv: srv, reg: reg, primary: addrOf(conn)}
	if alt != nil {
		ts.alt = addrOf(alt)
		wg.Go(func() {
			if err := srv.ServeSTUNAlternate(ctx, alt); err != nil {
				t.Errorf("ServeSTUNAlternate: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		srv.Close()
	})
	if alt != nil {
		// Ready when the alternate answers.
		to := loopbackFor(ts.alt)
		c := stunClient(t, to.Addr())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := rendezvous.STUNBinding(ctx, c, to); err != nil {
			t.Fatalf("the alternate socket does not answer: %v", err)
		}
	}
	return ts
}

// loopbackFor is a, or the loopback address with a's port when a's IP is
// unspecified (a socket bound to a wildcard address).
func loopbackFor(a netip.AddrPort) netip.AddrPort {
	switch {
	case a.Addr() == netip.IPv4Unspecified():
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.Port())
	case a.Addr() == netip.IPv6Unspecified():
		return netip.AddrPortFrom(netip.IPv6Loopback(), a.Port())
	}
	return a
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	return udpio.Unmap(c.LocalAddr().(*net.UDPAddr).AddrPort())
}

// stunClient is a UDP socket on ip:0, closed when the test ends.
func stunClient(t testing.TB, ip netip.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// drops reads the drop counter for reason.
func (ts *stunTestServer) drops(t *testing.T, reason string) float64 {
	t.Helper()
	families, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "p2pcat_rendezvous_drops_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// stunRequest encodes a STUN message of type typ with attrs, and a
// FINGERPRINT when fingerprint is set.
func stunRequest(typ stun.MessageType, fingerprint bool, attrs ...stun.RawAttribute) ([]byte, [stun.TransactionIDSize]byte) {
	m := new(stun.Message)
	m.Type = typ
	rand.Read(m.TransactionID[:])
	m.WriteHeader()
	for _, a := range attrs {
		m.Add(a.Type, a.Value)
	}
	if fingerprint {
		stun.Fingerprint.AddTo(m)
	}
	return m.Raw, m.TransactionID
}

func changeRequest(flags uint32) stun.RawAttribute {
	return stun.RawAttribute{Type: stun.AttrChangeRequest, Value: binary.BigEndian.AppendUint32(nil, flags)}
}

// roundTrip sends req to to and returns the first datagram that comes
// back, with its source.
func roundTrip(t *testing.T, c *net.UDPConn, to netip.AddrPort, req []byte) ([]byte, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(req, to); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", to, err)
	}
	if n > stunMaxAmplification*len(req) {
		t.Errorf("a %d-byte request got a %d-byte answer: more than %d times", len(req), n, stunMaxAmplification)
	}
	return buf[:n], udpio.Unmap(from)
}

// decodeAnswer decodes a Binding answer to txid or fails the test.
func decodeAnswer(t *testing.T, b []byte, txid [stun.TransactionIDSize]byte) (stunmsg.Answer, *stun.Message) {
	t.Helper()
	ans, ok := stunmsg.ParseAnswer(b, txid)
	if !ok {
		t.Fatalf("not a Binding answer to our transaction: %x", b)
	}
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	return ans, m
}

// TestSTUNBindingIPv6 checks XOR-MAPPED-ADDRESS over IPv6 and the
// amplification bound on a plain 20-byte request.
// clientRequest is a Binding request as p2pcat's client sends it (its
// newBindingRequest): SOFTWARE "p2pcat" and FINGERPRINT, 40 bytes.
func clientRequest() ([]byte, [stun.TransactionIDSize]byte) {
	return stunRequest(stun.BindingRequest, true, stun.RawAttribute{Type: stun.AttrSoftware, Value: []byte("p2pcat")})
}

// clientRoundTrip sends the client's request to to and decodes the answer,
// its source included.
func clientRoundTrip(t *testing.T, c *net.UDPConn, to netip.AddrPort) stunmsg.Answer {
	t.Helper()
	req, txid := clientRequest()
	b, from := roundTrip(t, c, to, req)
	ans, _ := decodeAnswer(t, b, txid)
	ans.From = from
	return ans
}

func TestSTUNBindingIPv6(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "::1", "::1")
	c := stunClient(t, netip.IPv6Loopback())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mapped, err := rendezvous.STUNBinding(ctx, c, ts.primary)
	if err != nil {
		t.Fatal(err)
	}
	if mapped != addrOf(c) {
		t.Fatalf("mapped %v, want the client's %v", mapped, addrOf(c))
	}
	// p2pcat's request leaves room for the RFC 5780 attributes.
	ans := clientRoundTrip(t, c, ts.primary)
	if ans.Other != ts.alt || ans.Origin != ts.primary || ans.From != ts.primary {
		t.Fatalf("answer %+v: want OTHER-ADDRESS %v, RESPONSE-ORIGIN %v", ans, ts.alt, ts.primary)
	}
	// A plain 20-byte request gets XOR-MAPPED-ADDRESS within 60 bytes, and
	// no more.
	req, txid := stunRequest(stun.BindingRequest, false)
	b, _ := roundTrip(t, c, ts.primary, req)
	plain, _ := decodeAnswer(t, b, txid)
	if plain.Mapped != addrOf(c) || len(b) != 20+24 || plain.Other.IsValid() {
		t.Fatalf("plain IPv6 request: %d bytes, %+v", len(b), plain)
	}
}

// TestSTUNBindingIPv4Plain: over IPv4 a plain request gets all three
// address attributes within the bound.
func TestSTUNBindingIPv4Plain(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "127.0.0.1")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	req, txid := stunRequest(stun.BindingRequest, false)
	b, from := roundTrip(t, c, ts.primary, req)
	ans, m := decodeAnswer(t, b, txid)
	if from != ts.primary || ans.Mapped != addrOf(c) || ans.Other != ts.alt || ans.Origin != ts.primary {
		t.Fatalf("answer from %v: %+v", from, ans)
	}
	if m.Contains(stun.AttrFingerprint) || m.Contains(stun.AttrMappedAddress) || m.Contains(stun.AttrSoftware) {
		t.Fatalf("unexpected attributes in %v", m)
	}
	// With a FINGERPRINT in the request, the answer has one too, and it
	// checks (parseSTUNAnswer verifies it).
	req, txid = stunRequest(stun.BindingRequest, true)
	b, _ = roundTrip(t, c, ts.primary, req)
	if _, m := decodeAnswer(t, b, txid); !m.Contains(stun.AttrFingerprint) {
		t.Fatal("no FINGERPRINT in the answer to a request with one")
	}
}

// TestSTUNChangeRequest: change-port is answered from the other socket,
// whichever socket the request came in on, with RESPONSE-ORIGIN and
// OTHER-ADDRESS saying which is which; change-IP, impossible with one IP,
// gets 420.
func TestSTUNChangeRequest(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "127.0.0.1")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	for _, tc := range []struct {
		name            string
		to              netip.AddrPort
		flags           uint32
		from, other     netip.AddrPort
		wantUnknownAttr bool
	}{
		{"primary, no change", ts.primary, 0, ts.primary, ts.alt, false},
		{"primary, change port", ts.primary, stunmsg.ChangePort, ts.alt, ts.alt, false},
		{"alternate, no change", ts.alt, 0, ts.alt, ts.primary, false},
		{"alternate, change port", ts.alt, stunmsg.ChangePort, ts.primary, ts.primary, false},
		{"primary, change IP", ts.primary, stunmsg.ChangeIP, ts.primary, netip.AddrPort{}, true},
		{"primary, change IP and port", ts.primary, stunmsg.ChangeIP | stunmsg.ChangePort, ts.primary, netip.AddrPort{}, true},
	} {
		req, txid := stunRequest(stun.BindingRequest, true, changeRequest(tc.flags))
		b, from := roundTrip(t, c, tc.to, req)
		ans, m := decodeAnswer(t, b, txid)
		if from != tc.from {
			t.Errorf("%s: answered from %v, want %v", tc.name, from, tc.from)
		}
		if tc.wantUnknownAttr {
			if ans.Code != 420 {
				t.Errorf("%s: code %d, want 420", tc.name, ans.Code)
			}
			if v, err := m.Get(stun.AttrUnknownAttributes); err != nil || !bytes.Equal(v, []byte{0x00, 0x03}) {
				t.Errorf("%s: UNKNOWN-ATTRIBUTES %x, %v; want 0003", tc.name, v, err)
			}
			continue
		}
		if ans.Code != 0 || ans.Mapped != addrOf(c) || ans.Origin != tc.from || ans.Other != tc.other {
			t.Errorf("%s: %+v; want RESPONSE-ORIGIN %v, OTHER-ADDRESS %v", tc.name, ans, tc.from, tc.other)
		}
	}
}

// TestSTUNChangeIP uses an alternate on 127.0.0.2 (Linux routes all of
// 127/8 to lo): change IP and port is answered from it, change port alone
// cannot be and gets 420.
func TestSTUNChangeIP(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "127.0.0.2")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	req, txid := stunRequest(stun.BindingRequest, false, changeRequest(stunmsg.ChangeIP|stunmsg.ChangePort))
	b, from := roundTrip(t, c, ts.primary, req)
	if ans, _ := decodeAnswer(t, b, txid); from != ts.alt || ans.Origin != ts.alt || ans.Code != 0 {
		t.Fatalf("change IP and port: from %v, %+v", from, ans)
	}
	req, txid = stunRequest(stun.BindingRequest, false, changeRequest(stunmsg.ChangePort))
	b, from = roundTrip(t, c, ts.primary, req)
	if ans, _ := decodeAnswer(t, b, txid); from != ts.primary || ans.Code != 420 {
		t.Fatalf("change port only: from %v, %+v", from, ans)
	}
}

func TestSTUNChangeWithoutAlternate(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	req, txid := stunRequest(stun.BindingRequest, false, changeRequest(stunmsg.ChangePort))
	b, _ := roundTrip(t, c, ts.primary, req)
	if ans, _ := decodeAnswer(t, b, txid); ans.Code != 420 {
		t.Fatalf("change port without an alternate: %+v", ans)
	}
	// Without a change, the answer has no OTHER-ADDRESS.
	req, txid = stunRequest(stun.BindingRequest, false, changeRequest(0))
	b, _ = roundTrip(t, c, ts.primary, req)
	if ans, _ := decodeAnswer(t, b, txid); ans.Code != 0 || ans.Other.IsValid() || ans.Origin != ts.primary {
		t.Fatalf("plain request without an alternate: %+v", ans)
	}
}

func TestSTUNUnknownAttributes(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	// PADDING would make the server amplify: refused.
	req, txid := stunRequest(stun.BindingRequest, true, stun.RawAttribute{Type: 0x0026, Value: make([]byte, 8)})
	b, _ := roundTrip(t, c, ts.primary, req)
	ans, m := decodeAnswer(t, b, txid)
	if ans.Code != 420 || ans.Reason != "Unknown Attribute" {
		t.Fatalf("PADDING: %+v", ans)
	}
	if v, err := m.Get(stun.AttrUnknownAttributes); err != nil || !bytes.Equal(v, []byte{0x00, 0x26}) {
		t.Fatalf("UNKNOWN-ATTRIBUTES %x, %v", v, err)
	}
	// An unknown comprehension-optional attribute is ignored.
	req, txid = stunRequest(stun.BindingRequest, false, stun.RawAttribute{Type: 0x8055, Value: []byte("ok")})
	b, _ = roundTrip(t, c, ts.primary, req)
	if ans, _ := decodeAnswer(t, b, txid); ans.Code != 0 || ans.Mapped != addrOf(c) {
		t.Fatalf("optional attribute: %+v", ans)
	}
	// The RFC 5769 sample request (2.1) is an ICE check: its PRIORITY is
	// unknown here, its USERNAME and MESSAGE-INTEGRITY are ignored, its
	// FINGERPRINT checks and is answered with one.
	vector := []byte("\x00\x01\x00\x58\x21\x12\xa4\x42\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
		"\x80\x22\x00\x10STUN test client\x00\x24\x00\x04\x6e\x00\x01\xff" +
		"\x80\x29\x00\x08\x93\x2f\xf9\xb1\x51\x26\x3b\x36" +
		"\x00\x06\x00\x09\x65\x76\x74\x6a\x3a\x68\x36\x76\x59\x20\x20\x20" +
		"\x00\x08\x00\x14\x9a\xea\xa7\x0c\xbf\xd8\xcb\x56\x78\x1e\xf2\xb5\xb2\xd3\xf2\x49\xc1\xb5\x71\xa2" +
		"\x80\x28\x00\x04\xe5\x7a\x3b\xcf")
	b, _ = roundTrip(t, c, ts.primary, vector)
	ans, m = decodeAnswer(t, b, [stun.TransactionIDSize]byte(vector[8:20]))
	if ans.Code != 420 || !m.Contains(stun.AttrFingerprint) {
		t.Fatalf("RFC 5769 request: %+v", ans)
	}
	if v, _ := m.Get(stun.AttrUnknownAttributes); !bytes.Equal(v, []byte{0x00, 0x24}) {
		t.Fatalf("RFC 5769 request: UNKNOWN-ATTRIBUTES %x, want 0024", v)
	}
}

// TestSTUNGarbageDropped sends broken and unanswerable STUN, then a good
// request. With one reader the server handles them in order, so the first
// datagram back must be the good request's answer.
func TestSTUNGarbageDropped(t *testing.T) {
	ts := startSTUNServer(t, Config{Readers: 1}, "127.0.0.1", "")
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	full, _ := stunRequest(stun.BindingRequest, true)
	truncated := full[:len(full)-4]
	overrun, _ := stunRequest(stun.BindingRequest, false, stun.RawAttribute{Type: stun.AttrSoftware, Value: []byte("abcd")})
	binary.BigEndian.PutUint16(overrun[22:24], 100) // the attribute claims more than the message holds
	badFingerprint, _ := stunRequest(stun.BindingRequest, true)
	badFingerprint[len(badFingerprint)-1] ^= 0xff
	shortChange, _ := stunRequest(stun.BindingRequest, false, stun.RawAttribute{Type: stun.AttrChangeRequest, Value: []byte{0, 2}})
	indication, _ := stunRequest(stun.NewType(stun.MethodBinding, stun.ClassIndication), false)
	response, _ := stunRequest(stun.BindingSuccess, false)
	allocate, _ := stunRequest(stun.NewType(stun.MethodAllocate, stun.ClassRequest), false)
	malformedBefore, notOursBefore := ts.drops(t, dropMalformed), ts.drops(t, dropNotOurs)
	for _, pkt := range [][]byte{truncated, overrun, badFingerprint, shortChange, indication, response, allocate} {
		if _, err := c.WriteToUDPAddrPort(pkt, ts.primary); err != nil {
			t.Fatal(err)
		}
	}
	good, txid := stunRequest(stun.BindingRequest, false)
	b, _ := roundTrip(t, c, ts.primary, good)
	if ans, _ := decodeAnswer(t, b, txid); ans.Code != 0 {
		t.Fatalf("the good request: %+v", ans)
	}
	if got := ts.drops(t, dropMalformed) - malformedBefore; got != 3 {
		t.Errorf("%v dropped as malformed, want 3 (overrun, fingerprint, short CHANGE-REQUEST)", got)
	}
	if got := ts.drops(t, dropNotOurs) - notOursBefore; got != 4 {
		t.Errorf("%v dropped as not ours, want 4 (truncated, indication, response, Allocate)", got)
	}
}

// TestSTUNRateLimited: with the clock stopped, a source gets BurstPerIP
// answers and no more; a rendezvous Hello (not rate limited) afterwards
// marks the end of the run.
func TestSTUNRateLimited(t *testing.T) {
	ts := startSTUNServer(t, Config{Readers: 1, RatePerIP: 1, BurstPerIP: 3}, "127.0.0.1", "")
	now := time.Now()
	ts.srv.SetClock(func() time.Time { return now })
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	var sent [][stun.TransactionIDSize]byte
	for range 10 {
		req, txid := stunRequest(stun.BindingRequest, false)
		sent = append(sent, txid)
		if _, err := c.WriteToUDPAddrPort(req, ts.primary); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WriteToUDPAddrPort(wire.Pad((&wire.Hello{ReqID: 7, Session: "s"}).AppendTo(nil)), ts.primary); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	var answered int
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d answers: %v", answered, err)
		}
		if !stunmsg.IsSTUN(buf[:n]) {
			break // the Challenge
		}
		if _, ok := stunmsg.ParseAnswer(buf[:n], sent[answered]); !ok {
			t.Fatalf("answer %d is not to request %d", answered, answered)
		}
		answered++
	}
	if answered != 3 {
		t.Fatalf("%d answers, want the burst of 3", answered)
	}
	if got := ts.drops(t, dropRateLimited); got != 7 {
		t.Fatalf("%v rate-limited drops, want 7", got)
	}
}

// TestServeSTUNAlternateStops checks that the alternate returns when its
// context ends, refuses a second alternate, and stops advertising.
func TestServeSTUNAlternateStops(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "")
	alt := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.srv.ServeSTUNAlternate(ctx, alt) }()
	c := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if _, err := rendezvous.STUNBinding(wctx, c, addrOf(alt)); err != nil {
		t.Fatal(err)
	}
	second := stunClient(t, netip.MustParseAddr("127.0.0.1"))
	if err := ts.srv.ServeSTUNAlternate(wctx, second); err == nil {
		t.Fatal("a second alternate was accepted")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-wctx.Done():
		t.Fatal("ServeSTUNAlternate did not return")
	}
	if ans := clientRoundTrip(t, c, ts.primary); ans.Other.IsValid() {
		t.Fatalf("after the alternate stopped: %+v", ans)
	}
}

// TestCheckNATOtherIP: with the alternate on another IP (127.0.0.2) the
// filtering test changes IP and port, and its answer getting through is
// endpoint-independent filtering without doubt.
func TestCheckNATOtherIP(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "127.0.0.1", "127.0.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := rendezvous.CheckNAT(ctx, ts.primary, rendezvous.NATCheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.NAT || r.Alternate != ts.alt || !r.AlternateIP || r.Mapping != rendezvous.NATEndpointIndependent || r.Filtering != rendezvous.NATEndpointIndependent || len(r.Notes) != 0 {
		t.Fatalf("report:\n%s", r)
	}
}

// TestCheckNATWildcardServer: sockets bound to 0.0.0.0 advertise the
// unspecified IP, which the client reads as the IP it sent to.
func TestCheckNATWildcardServer(t *testing.T) {
	ts := startSTUNServer(t, Config{}, "0.0.0.0", "0.0.0.0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	server := loopbackFor(ts.primary)
	r, err := rendezvous.CheckNAT(ctx, server, rendezvous.NATCheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.NAT || r.Alternate != loopbackFor(ts.alt) || r.AlternateIP || r.Filtering != rendezvous.NATNotPortDependent || len(r.Notes) != 0 {
		t.Fatalf("report:\n%s", r)
	}
	ans := clientRoundTrip(t, stunClient(t, server.Addr()), server)
	if ans.Origin != ts.primary || ans.Other != ts.alt {
		t.Fatalf("answer %+v: want the bound (unspecified) addresses %v and %v", ans, ts.primary, ts.alt)
	}
}

// recordingBatchConn stands in for a socket on 192.0.2.1:3478: it keeps
// what is written.
type recordingBatchConn struct {
	keep bool
	sent [][]byte
}

// recordingLocal is allocated once, as a socket's local address is.
var recordingLocal = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 3478}

func (c *recordingBatchConn) LocalAddr() net.Addr { return recordingLocal }

func (c *recordingBatchConn) ReadBatch([]ipv4.Message, int) (int, error) {
	return 0, errors.New("recordingBatchConn cannot read")
}

func (c *recordingBatchConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	if c.keep {
		for _, m := range ms {
			c.sent = append(c.sent, bytes.Clone(m.Buffers[0]))
		}
	}
	return len(ms), nil
}

// newBareServer is a Server that is not serving, without rate limits.
func newBareServer(tb testing.TB) *Server {
	s, err := NewServer(Config{DataDir: tb.TempDir(), RatePerIP: -1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// FuzzSTUNServer feeds arbitrary datagrams to the STUN service. Whatever
// comes in, every answer is framed as STUN, answers the same transaction,
// and is at most 3 times the size of its request; the client's decoder
// survives the same input.
func FuzzSTUNServer(f *testing.F) {
	plain, _ := stunRequest(stun.BindingRequest, false)
	fp, _ := stunRequest(stun.BindingRequest, true, stun.RawAttribute{Type: stun.AttrSoftware, Value: []byte("fuzz")})
	change, _ := stunRequest(stun.BindingRequest, true, changeRequest(stunmsg.ChangePort))
	padding, _ := stunRequest(stun.BindingRequest, false, stun.RawAttribute{Type: 0x0026, Value: make([]byte, 40)})
	many, _ := stunRequest(stun.BindingRequest, false,
		stun.RawAttribute{Type: 0x0030, Value: nil}, stun.RawAttribute{Type: 0x0031, Value: nil},
		stun.RawAttribute{Type: 0x0032, Value: nil}, stun.RawAttribute{Type: 0x0033, Value: nil},
		stun.RawAttribute{Type: 0x0034, Value: nil}, stun.RawAttribute{Type: 0x0035, Value: nil},
		stun.RawAttribute{Type: 0x0036, Value: nil}, stun.RawAttribute{Type: 0x0037, Value: nil},
		stun.RawAttribute{Type: 0x0038, Value: nil}, stun.RawAttribute{Type: 0x0039, Value: nil})
	for _, seed := range [][]byte{plain, fp, change, padding, many, plain[:19], {}} {
		f.Add(seed)
	}
	s := newBareServer(f)
	conn := &recordingBatchConn{keep: true}
	out := newOutBatch(conn, func(error) {})
	from4 := netip.MustParseAddrPort("198.51.100.7:40000")
	from6 := netip.MustParseAddrPort("[2001:db8::7]:40000")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) >= stunmsg.HeaderLen {
			txid := [stun.TransactionIDSize]byte(pkt[8:20])
			stunmsg.ParseAnswer(pkt, txid)
		}
		if !stunmsg.IsSTUN(pkt) {
			return
		}
		for _, from := range []netip.AddrPort{from4, from6} {
			conn.sent = conn.sent[:0]
			s.handleSTUN(out, pkt, from)
			out.flush()
			for _, a := range conn.sent {
				if len(a) > stunMaxAmplification*len(pkt) {
					t.Fatalf("%d-byte request, %d-byte answer", len(pkt), len(a))
				}
				if !stunmsg.IsSTUN(a) || !bytes.Equal(a[8:20], pkt[8:20]) {
					t.Fatalf("answer %x is not STUN for transaction %x", a, pkt[8:20])
				}
				if ans, ok := stunmsg.ParseAnswer(a, [stun.TransactionIDSize]byte(pkt[8:20])); !ok || (ans.Code == 0 && ans.Mapped != from) {
					t.Fatalf("answer %x decodes to %+v, %v", a, ans, ok)
				}
			}
		}
	})
}

// BenchmarkHandleSTUN measures the server's cost per Binding request (the
// p2pcat client's 40-byte request with FINGERPRINT, an alternate socket
// known, no rate limit), without the system calls. The allocations are
// outBatch.add's destination address.
//
//	go test -run XXX -bench HandleSTUN -benchmem ./rendezvous/server/
func BenchmarkHandleSTUN(b *testing.B) {
	s := newBareServer(b)
	// Known by address only: never written to, since no request asks for
	// a change.
	s.stun.alternate.Store(&stunSocket{addr: netip.MustParseAddrPort("192.0.2.1:3479")})
	out := newOutBatch(&recordingBatchConn{}, func(error) {})
	req, _ := clientRequest()
	from := netip.MustParseAddrPort("198.51.100.7:40000")
	b.ReportAllocs()
	for b.Loop() {
		s.handleSTUN(out, req, from)
	}
	out.flush()
}
