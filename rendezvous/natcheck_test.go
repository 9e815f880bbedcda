package rendezvous_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

func udpOn(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// deadlineConn records the read deadlines set on a socket.
type deadlineConn struct {
	*net.UDPConn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, t)
	c.mu.Unlock()
	return c.UDPConn.SetReadDeadline(t)
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSTUNBinding(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	c := &deadlineConn{UDPConn: udpOn(t, "127.0.0.1")}
	mapped, err := rendezvous.STUNBinding(ctxTimeout(t, 10*time.Second), c, srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if mapped != addrOf(c.UDPConn) {
		t.Fatalf("mapped %v, want the socket's own %v", mapped, addrOf(c.UDPConn))
	}
	if n := len(c.deadlines); n == 0 || !c.deadlines[n-1].IsZero() {
		t.Fatalf("read deadlines set: %v; the last must clear it", c.deadlines)
	}
}

// fakeSTUNServer answers the first request it gets, after skipping the
// first skip copies of it, with junk and a response to another transaction
// first. It returns the address it claims to have seen.
func fakeSTUNServer(t *testing.T, skip int) (netip.AddrPort, netip.AddrPort) {
	t.Helper()
	s := udpOn(t, "127.0.0.1")
	claimed := netip.MustParseAddrPort("203.0.113.9:4242")
	var wg sync.WaitGroup
	t.Cleanup(func() {
		s.SetReadDeadline(time.Now())
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 1500)
		for i := 0; ; i++ {
			s.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, from, err := s.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if i < skip {
				continue
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if err := req.Decode(); err != nil {
				t.Errorf("fake server: %v", err)
				return
			}
			other := req.TransactionID
			other[0] ^= 0xff
			s.WriteToUDPAddrPort([]byte("not STUN at all"), from)
			wrong := stun.MustBuild(stun.NewTransactionIDSetter(other), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: net.IPv4(6, 6, 6, 6), Port: 6666}, stun.Fingerprint)
			s.WriteToUDPAddrPort(wrong.Raw, from)
			right := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: claimed.Addr().AsSlice(), Port: int(claimed.Port())}, stun.Fingerprint)
			s.WriteToUDPAddrPort(right.Raw, from)
			return
		}
	})
	return addrOf(s), claimed
}

// TestSTUNBindingIgnoresOthers: junk and answers to other transactions on
// the socket do not fool the client; the answer of a third-party server
// (pion's encoder) is read.
func TestSTUNBindingIgnoresOthers(t *testing.T) {
	server, claimed := fakeSTUNServer(t, 0)
	mapped, err := rendezvous.STUNBinding(ctxTimeout(t, 10*time.Second), udpOn(t, "127.0.0.1"), server)
	if err != nil || mapped != claimed {
		t.Fatalf("mapped %v, %v; want %v", mapped, err, claimed)
	}
}

// TestSTUNBindingRetransmits: a server that misses the first request
// answers the retransmission (0.5 s later).
func TestSTUNBindingRetransmits(t *testing.T) {
	server, claimed := fakeSTUNServer(t, 1)
	mapped, err := rendezvous.STUNBinding(ctxTimeout(t, 10*time.Second), udpOn(t, "127.0.0.1"), server)
	if err != nil || mapped != claimed {
		t.Fatalf("mapped %v, %v; want %v", mapped, err, claimed)
	}
}

func TestSTUNBindingNoServer(t *testing.T) {
	dead := udpOn(t, "127.0.0.1")
	addr := addrOf(dead)
	dead.Close()
	_, err := rendezvous.STUNBinding(ctxTimeout(t, 700*time.Millisecond), udpOn(t, "127.0.0.1"), addr)
	if !errors.Is(err, rendezvous.ErrNoSTUNAnswer) {
		t.Fatalf("err = %v, want ErrNoSTUNAnswer", err)
	}
}

// TestCheckNATLoopback: on loopback there is no NAT; the test server's
// alternate shares its IP, so filtering is known only up to "endpoint-
// independent or address-dependent".
func TestCheckNATLoopback(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	r, err := rendezvous.CheckNAT(ctxTimeout(t, 20*time.Second), srv.Addr, rendezvous.NATCheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", r)
	if r.NAT || r.Mapped != r.Local || !r.PortPreserved || r.Local.Addr() != srv.Addr.Addr() {
		t.Errorf("local %v, mapped %v, NAT %v, port preserved %v", r.Local, r.Mapped, r.NAT, r.PortPreserved)
	}
	if r.Alternate != srv.STUNAlternate || r.AlternateIP {
		t.Errorf("alternate %v (another IP: %v), want %v", r.Alternate, r.AlternateIP, srv.STUNAlternate)
	}
	if r.Mapping != rendezvous.NATEndpointIndependent || r.Filtering != rendezvous.NATNotPortDependent {
		t.Errorf("mapping %s, filtering %s", r.Mapping, r.Filtering)
	}
	if !strings.HasPrefix(r.Verdict, "no NAT:") || len(r.Notes) != 0 {
		t.Errorf("verdict %q, notes %q", r.Verdict, r.Notes)
	}
	if s := r.String(); !strings.Contains(s, "(same as local: no NAT)") || !strings.Contains(s, "verdict:") {
		t.Errorf("report text:\n%s", s)
	}
	// The JSON keys are an interface: scripts and the NAT lab read them.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"server": srv.Addr.String(), "alternate": srv.STUNAlternate.String(), "alternate_ip": false,
		"local": r.Local.String(), "mapped": r.Local.String(), "nat": false, "port_preserved": true,
		"mapping": "endpoint-independent", "filtering": "endpoint-independent-or-address-dependent", "verdict": r.Verdict,
	}
	for k, v := range want {
		if keys[k] != v {
			t.Errorf("JSON %q = %v, want %v", k, keys[k], v)
		}
	}
	if len(keys) != len(want) {
		t.Errorf("JSON has keys %v, want exactly %d", keys, len(want))
	}
}

// TestCheckNATNoAlternate: a server without an alternate socket still
// tells whether there is a NAT.
func TestCheckNATNoAlternate(t *testing.T) {
	srv, err := server.NewServer(server.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conn := udpOn(t, "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	defer func() { cancel(); <-done }()
	r, err := rendezvous.CheckNAT(ctxTimeout(t, 20*time.Second), addrOf(conn), rendezvous.NATCheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.NAT || r.Alternate.IsValid() || r.Mapping != rendezvous.NATEndpointIndependent || r.Filtering != rendezvous.NATUnknown || len(r.Notes) != 1 {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(r.String(), "no alternate address") {
		t.Fatalf("report text:\n%s", r)
	}
}

func TestCheckNATNoServer(t *testing.T) {
	dead := udpOn(t, "127.0.0.1")
	addr := addrOf(dead)
	dead.Close()
	start := time.Now()
	_, err := rendezvous.CheckNAT(ctxTimeout(t, 800*time.Millisecond), addr, rendezvous.NATCheckOptions{})
	if !errors.Is(err, rendezvous.ErrNoServer) || err.Error() != fmt.Sprintf("rendezvous server did not answer at %s", addr) {
		t.Fatalf("err = %v, want ErrNoServer", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %v: the context bounds the check", el)
	}
}

// TestTurnutilsStunclient runs a third-party STUN client, coturn's
// turnutils_stunclient, against the test server and reads what it
// understood: the reflexive address, OTHER-ADDRESS and RESPONSE-ORIGIN.
// Seeing OTHER-ADDRESS, the client goes on with RESPONSE-PORT requests,
// which the server refuses (420), and then waits forever for an answer on
// its other port: the test stops it once it has printed the first answer.
func TestTurnutilsStunclient(t *testing.T) {
	bin, err := exec.LookPath("turnutils_stunclient")
	if err != nil {
		msg := "SKIP TestTurnutilsStunclient: turnutils_stunclient not found (apt-get install -y --no-install-recommends coturn); STUN interoperability NOT tested"
		fmt.Fprintln(os.Stderr, msg)
		t.Skip(msg)
	}
	srv := rendezvoustest.Start(t, server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-p", fmt.Sprint(srv.Addr.Port()), "127.0.0.1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	// It prints, for example:
	//	0: : IPv4. Response origin: : 127.0.0.1:43550
	//	0: : IPv4. Other addr: : 127.0.0.1:46148
	//	0: : IPv4. UDP reflexive addr: 127.0.0.1:39615
	addrAfter := func(line, label string) string {
		_, after, ok := strings.Cut(line, label)
		if !ok {
			return ""
		}
		return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(after), ":"))
	}
	var out strings.Builder
	var origin, other, reflexive string
	sc := bufio.NewScanner(stdout)
	for reflexive == "" && sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if a := addrAfter(line, "Response origin:"); a != "" {
			origin = a
		}
		if a := addrAfter(line, "Other addr:"); a != "" {
			other = a
		}
		reflexive = addrAfter(line, "UDP reflexive addr")
	}
	t.Logf("turnutils_stunclient:\n%s", out.String())
	ap, err := netip.ParseAddrPort(reflexive)
	if err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
		t.Fatalf("reflexive address %q (%v), want 127.0.0.1:PORT", reflexive, err)
	}
	if other != srv.STUNAlternate.String() || origin != srv.Addr.String() {
		t.Fatalf("other address %q, response origin %q; want %v and %v", other, origin, srv.STUNAlternate, srv.Addr)
	}
}
