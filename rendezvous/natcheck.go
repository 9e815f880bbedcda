package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pion/stun"

	"github.com/p2pcat/p2pcat/internal/textsafe"
	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/internal/stunmsg"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// ErrNoSTUNAnswer means a STUN server did not answer a Binding request.
var ErrNoSTUNAnswer = errors.New("STUN server did not answer")

// STUN client timers, RFC 5389 7.2.1's defaults: a request is sent at 0,
// 0.5, 1.5, 3.5 ... s, 7 times in all, and the last is waited for 16 RTO
// (39.5 s in all, unless ctx ends first).
const (
	stunRTO      = 500 * time.Millisecond
	stunSends    = 7
	stunLastWait = 16 * stunRTO
)

// stunSoftware names the client in its requests. It also pads them, so
// that the server's amplification bound leaves room for OTHER-ADDRESS and
// RESPONSE-ORIGIN over IPv6.
var stunSoftware = []byte("p2pcat")

// STUNBinding asks a STUN server (RFC 5389, any server, not only p2pcat's)
// which address it sees conn's datagrams come from, and returns that
// reflexive address (XOR-MAPPED-ADDRESS, IPv4-mapped addresses unmapped).
// It re-sends the request on RFC 5389's schedule until an answer arrives or
// ctx ends. Datagrams that are not the answer to this transaction are read
// and dropped. It leaves no read deadline on conn.
func STUNBinding(ctx context.Context, conn PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	server = udpio.Unmap(server)
	ans, err := stunRoundTrip(ctx, conn, server, 0)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if ans.Code != 0 {
		return netip.AddrPort{}, fmt.Errorf("STUN server %s refused the Binding request: %d %s", server, ans.Code, textsafe.Line(ans.Reason))
	}
	if !ans.Mapped.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("STUN server %s answered without a mapped address", server)
	}
	return ans.Mapped, nil
}

// stunRoundTrip runs one Binding transaction with server, asking for the
// CHANGE-REQUEST flags change (0: none). An error response is an answer, not
// an error.
func stunRoundTrip(ctx context.Context, conn PacketConn, server netip.AddrPort, change uint32) (stunmsg.Answer, error) {
	req, txid := newBindingRequest(change)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		conn.SetReadDeadline(time.Now())
	})
	defer func() {
		// The socket may go on to carry a session: leave no deadline on it,
		// and no wake-up that still runs and could set one after we clear it.
		if !stop() {
			<-fired
		}
		conn.SetReadDeadline(time.Time{})
	}()
	buf := make([]byte, wire.MaxRelayDatagram)
	rto := stunRTO
	for i := range stunSends {
		if err := ctx.Err(); err != nil {
			break
		}
		if _, err := conn.WriteToUDPAddrPort(req, server); err != nil {
			return stunmsg.Answer{}, fmt.Errorf("sending a STUN request to %s: %w", server, err)
		}
		wait := rto
		if i == stunSends-1 {
			wait = stunLastWait
		}
		ans, ok, err := stunReceive(ctx, conn, buf, txid, time.Now().Add(wait))
		if err != nil {
			return stunmsg.Answer{}, fmt.Errorf("reading the STUN answer from %s: %w", server, err)
		}
		if ok {
			return ans, nil
		}
		rto *= 2
	}
	return stunmsg.Answer{}, fmt.Errorf("%w at %s", ErrNoSTUNAnswer, server)
}

// stunReceive reads until the answer to txid arrives (ok), or the deadline
// passes or ctx ends (not ok). Its errors are those of a broken socket.
func stunReceive(ctx context.Context, conn PacketConn, buf []byte, txid [stun.TransactionIDSize]byte, deadline time.Time) (stunmsg.Answer, bool, error) {
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for ctx.Err() == nil {
		conn.SetReadDeadline(deadline)
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return stunmsg.Answer{}, false, nil
		case errors.Is(err, net.ErrClosed):
			return stunmsg.Answer{}, false, err
		case err != nil:
			// ICMP port unreachable surfaces as a read error on some
			// systems: nothing listens there (yet); keep waiting.
			continue
		}
		if ans, ok := stunmsg.ParseAnswer(buf[:n], txid); ok {
			ans.From = udpio.Unmap(from)
			return ans, true, nil
		}
	}
	return stunmsg.Answer{}, false, nil
}

// newBindingRequest encodes a Binding request with a fresh transaction id:
// SOFTWARE, CHANGE-REQUEST if change is not 0, and FINGERPRINT.
func newBindingRequest(change uint32) ([]byte, [stun.TransactionIDSize]byte) {
	m := new(stun.Message)
	m.Type = stun.BindingRequest
	rand.Read(m.TransactionID[:])
	m.WriteHeader()
	m.Add(stun.AttrSoftware, stunSoftware)
	if change != 0 {
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], change)
		m.Add(stun.AttrChangeRequest, v[:])
	}
	stun.Fingerprint.AddTo(m)
	return m.Raw, m.TransactionID
}

// NATBehavior is a NAT's mapping or filtering behaviour in RFC 4787 terms,
// as far as the server's sockets let CheckNAT tell. The string values are
// stable (they are the JSON values).
type NATBehavior string

const (
	// NATEndpointIndependent: the same mapping (or the same openness) for
	// every remote address and port. Also the mapping of a host without NAT.
	NATEndpointIndependent NATBehavior = "endpoint-independent"
	// NATNotPortDependent: endpoint-independent or address-dependent. Only
	// the server's port changed between the tests (the alternate shares the
	// primary's IP), so the two could not be told apart.
	NATNotPortDependent NATBehavior = "endpoint-independent-or-address-dependent"
	// NATEndpointDependent: address-dependent or address-and-port-dependent.
	// The server's IP changed between the tests and no test changed the
	// port alone, so the two could not be told apart.
	NATEndpointDependent NATBehavior = "address-dependent-or-address-and-port-dependent"
	// NATAddressAndPortDependent: a change of the remote port alone gave a
	// new mapping, or was filtered.
	NATAddressAndPortDependent NATBehavior = "address-and-port-dependent"
	// NATUnknown: not tested (no alternate socket, the server refused the
	// change request, or the alternate did not answer).
	NATUnknown NATBehavior = "unknown"
)

// describe is b for people.
func (b NATBehavior) describe() string {
	switch b {
	case NATNotPortDependent:
		return "endpoint-independent or address-dependent (could not tell: the server has one IP)"
	case NATEndpointDependent:
		return "dependent (could not tell address from address-and-port: the server has no second port on one IP)"
	}
	return string(b)
}

// NATReport is the result of CheckNAT. It encodes to JSON with the keys
// given in brackets; they and the NATBehavior values are stable, for scripts
// and tests.
type NATReport struct {
	// Server [server] is the STUN server's (primary) address.
	Server netip.AddrPort `json:"server"`
	// Alternate [alternate] is the server's other address from
	// OTHER-ADDRESS (an unspecified IP in it replaced by the server's);
	// "" when the server offers none.
	Alternate netip.AddrPort `json:"alternate"`
	// AlternateIP [alternate_ip] is true when the alternate has another IP
	// than the server, false when only its port differs (or there is none).
	AlternateIP bool `json:"alternate_ip"`
	// Local [local] is the test socket's own address.
	Local netip.AddrPort `json:"local"`
	// Mapped [mapped] is the socket's reflexive address as the server saw
	// it (XOR-MAPPED-ADDRESS).
	Mapped netip.AddrPort `json:"mapped"`
	// NAT [nat] is true when Mapped differs from Local.
	NAT bool `json:"nat"`
	// PortPreserved [port_preserved] is true when Mapped has Local's port
	// (always so without NAT).
	PortPreserved bool `json:"port_preserved"`
	// Mapping [mapping] is the mapping behaviour (RFC 5780 4.3).
	Mapping NATBehavior `json:"mapping"`
	// Filtering [filtering] is the filtering behaviour (RFC 5780 4.4).
	Filtering NATBehavior `json:"filtering"`
	// Verdict [verdict] is one line on what this means for p2pcat.
	Verdict string `json:"verdict"`
	// Notes [notes] say why a test could not be run or concluded; the key is
	// absent when there are none.
	Notes []string `json:"notes,omitempty"`
}

// String is the report for people, one "label: value" per line.
func (r NATReport) String() string {
	var b strings.Builder
	line := func(label, format string, a ...any) {
		fmt.Fprintf(&b, "%-16s%s\n", label+":", fmt.Sprintf(format, a...))
	}
	switch {
	case !r.Alternate.IsValid():
		line("server", "%s (no alternate address)", r.Server)
	case r.AlternateIP:
		line("server", "%s (alternate %s, another IP)", r.Server, r.Alternate)
	default:
		line("server", "%s (alternate %s, same IP)", r.Server, r.Alternate)
	}
	line("local address", "%s", r.Local)
	switch {
	case !r.NAT:
		line("mapped address", "%s (same as local: no NAT)", r.Mapped)
	case r.PortPreserved:
		line("mapped address", "%s (NAT, port preserved)", r.Mapped)
	default:
		line("mapped address", "%s (NAT, port not preserved)", r.Mapped)
	}
	line("mapping", "%s", r.Mapping.describe())
	line("filtering", "%s", r.Filtering.describe())
	for _, n := range r.Notes {
		line("note", "%s", n)
	}
	line("verdict", "%s", r.Verdict)
	return b.String()
}

// NATCheckOptions tunes CheckNAT. The zero value is ready to use.
type NATCheckOptions struct {
	// Local is the address the test socket binds to. Zero means the address
	// this host uses to reach the server, on a port the system picks: RFC
	// 5780 4.1 wants a port without earlier traffic, since filtering
	// results depend on what the NAT has seen.
	Local netip.AddrPort
	// Wait is how long a test waits for an answer that may rightly never
	// come (the NAT may filter answers from the alternate). Default 1.5 s.
	Wait time.Duration
}

// CheckNAT finds this host's NAT mapping and filtering behaviour (RFC 4787
// terms) with the tests of RFC 5780 sections 4.3 and 4.4, as far as a server
// with one alternate socket allows, from a fresh UDP socket:
//
//   - Test I, a Binding request to server: is there a NAT (mapped address
//     against the socket's own), is the port preserved, and the server's
//     alternate address (OTHER-ADDRESS).
//   - Filtering, before any traffic to the alternate: a request asking for
//     the answer from the alternate (CHANGE-REQUEST). Answered means
//     endpoint-independent filtering (or address-dependent, when only the
//     port changed); not answered within Wait means address-and-port-
//     dependent (or address-dependent, when the IP changed too).
//   - Mapping, behind a NAT only: a request to the alternate. The same
//     mapped address means endpoint-independent mapping (or address-
//     dependent, when only the port differs); another means address-and-
//     port-dependent (or address-dependent, when the IP differs too).
//
// ctx bounds the whole check; test I waits for the server as long as ctx
// allows, the two others at most Wait each. When the server does not answer
// test I the error wraps ErrNoServer.
func CheckNAT(ctx context.Context, server netip.AddrPort, opt NATCheckOptions) (NATReport, error) {
	if opt.Wait <= 0 {
		opt.Wait = 1500 * time.Millisecond
	}
	server = udpio.Unmap(server)
	r := NATReport{Server: server, Mapping: NATUnknown, Filtering: NATUnknown}
	conn, err := listenNATTest(server, opt.Local)
	if err != nil {
		return r, err
	}
	defer conn.Close()
	r.Local = udpio.Unmap(conn.LocalAddr().(*net.UDPAddr).AddrPort())

	other, err := r.testBinding(ctx, conn)
	if err != nil {
		return r, err
	}
	if !r.setAlternate(other) {
		what := "filtering"
		if r.NAT {
			what = "mapping and filtering"
		}
		r.Notes = append(r.Notes, "the server offers no alternate address (RFC 5780 OTHER-ADDRESS), so "+what+" could not be tested")
		r.Verdict = verdict(r)
		return r, nil
	}
	if r.NAT {
		err = r.testMapping(ctx, conn, opt.Wait)
	}
	if err == nil {
		err = r.testFiltering(ctx, opt.Wait)
	}
	r.Verdict = verdict(r)
	return r, err
}

// listenNATTest opens the test socket on local, or when local is zero on
// the address this host uses to reach server and a port the system picks.
func listenNATTest(server, local netip.AddrPort) (*net.UDPConn, error) {
	if !local.IsValid() {
		ip, err := sourceIPFor(server)
		if err != nil {
			return nil, err
		}
		local = netip.AddrPortFrom(ip, 0)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket on %s: %w", local, err)
	}
	return conn, nil
}

// testBinding runs test I from conn: the mapped address, whether there is a
// NAT and whether it preserves the port. It returns the server's
// OTHER-ADDRESS (zero when it has none).
func (r *NATReport) testBinding(ctx context.Context, conn *net.UDPConn) (other netip.AddrPort, err error) {
	t1, err := stunRoundTrip(ctx, conn, r.Server, 0)
	switch {
	case errors.Is(err, ErrNoSTUNAnswer):
		return netip.AddrPort{}, fmt.Errorf("%w at %s", ErrNoServer, r.Server)
	case err != nil:
		return netip.AddrPort{}, err
	case t1.Code != 0:
		return netip.AddrPort{}, fmt.Errorf("%w: STUN Binding: %d %s", ErrServerRefused, t1.Code, textsafe.Line(t1.Reason))
	case !t1.Mapped.IsValid():
		return netip.AddrPort{}, fmt.Errorf("server %s answered STUN without a mapped address", r.Server)
	}
	r.Mapped = t1.Mapped
	r.NAT = r.Mapped != r.Local
	r.PortPreserved = r.Mapped.Port() == r.Local.Port()
	if !r.NAT {
		r.Mapping = NATEndpointIndependent // RFC 5780 4.3: no NAT maps endpoint-independently
	}
	return t1.Other, nil
}

// setAlternate records the server's alternate address from its
// OTHER-ADDRESS, other; false when there is none to test against.
func (r *NATReport) setAlternate(other netip.AddrPort) bool {
	alt := other
	if alt.IsValid() && alt.Addr().IsUnspecified() {
		alt = netip.AddrPortFrom(r.Server.Addr(), alt.Port()) // "the IP you sent to"
	}
	if !alt.IsValid() || alt == r.Server {
		return false
	}
	r.Alternate = alt
	r.AlternateIP = alt.Addr() != r.Server.Addr()
	return true
}

// testMapping sends a request from conn to the alternate: the same mapped
// address as test I's, or another, tells the mapping behaviour.
func (r *NATReport) testMapping(ctx context.Context, conn *net.UDPConn, wait time.Duration) error {
	ans, answered, err := bindingWithin(ctx, conn, r.Alternate, 0, wait)
	if err != nil {
		return err
	}
	switch {
	case !answered:
		r.Notes = append(r.Notes, fmt.Sprintf("the alternate address %s did not answer, so mapping could not be tested", r.Alternate))
	case ans.Code != 0 || !ans.Mapped.IsValid():
		r.Notes = append(r.Notes, fmt.Sprintf("the alternate address %s refused the request, so mapping could not be tested", r.Alternate))
	default:
		r.Mapping = mappingBehavior(ans.Mapped == r.Mapped, r.AlternateIP)
	}
	return nil
}

// testFiltering asks the server, from a fresh socket, to answer from its
// alternate address: whether that answer gets through tells the filtering
// behaviour.
func (r *NATReport) testFiltering(ctx context.Context, wait time.Duration) error {
	// A fresh socket: the mapping test's request to the alternate has
	// opened the NAT to it for the first socket. (Testing filtering first
	// on one socket is no better: on a NAT that lets an unsolicited packet
	// create a conntrack entry, the alternate's answer would make the
	// mapping test see a new port.)
	fresh, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.Local.Addr(), 0)))
	if err != nil {
		return fmt.Errorf("opening a second UDP socket on %s: %w", r.Local.Addr(), err)
	}
	defer fresh.Close()
	var change uint32
	if r.AlternateIP {
		change |= stunmsg.ChangeIP
	}
	if r.Alternate.Port() != r.Server.Port() {
		change |= stunmsg.ChangePort
	}
	ans, answered, err := bindingWithin(ctx, fresh, r.Server, change, wait)
	if err != nil {
		return err
	}
	switch {
	case answered && ans.Code != 0:
		r.Notes = append(r.Notes, fmt.Sprintf("the server refused to answer from its alternate address (%d %s), so filtering could not be tested", ans.Code, textsafe.Line(ans.Reason)))
	case answered && ans.From == r.Server:
		r.Notes = append(r.Notes, "the server answered the change request from its primary address, so filtering could not be tested")
	default:
		r.Filtering = filteringBehavior(answered, r.AlternateIP)
	}
	return nil
}

// bindingWithin runs a transaction that may rightly go unanswered: answered
// is false when wait passed without an answer. It fails only when ctx ends or
// the socket breaks.
func bindingWithin(ctx context.Context, conn PacketConn, to netip.AddrPort, change uint32, wait time.Duration) (ans stunmsg.Answer, answered bool, err error) {
	tctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ans, err = stunRoundTrip(tctx, conn, to, change)
	switch {
	case err == nil:
		return ans, true, nil
	case ctx.Err() != nil:
		return stunmsg.Answer{}, false, fmt.Errorf("NAT check cut short: %w", ctx.Err())
	case errors.Is(err, ErrNoSTUNAnswer):
		return stunmsg.Answer{}, false, nil
	}
	return stunmsg.Answer{}, false, err
}

// mappingBehavior classifies test I against the test to the alternate:
// same is whether both saw one mapped address, otherIP whether the
// alternate has another IP (else only its port differs).
func mappingBehavior(same, otherIP bool) NATBehavior {
	switch {
	case same && otherIP:
		return NATEndpointIndependent
	case same:
		return NATNotPortDependent
	case otherIP:
		return NATEndpointDependent
	}
	return NATAddressAndPortDependent
}

// filteringBehavior classifies the change request: answered is whether the
// answer from the alternate got through, otherIP whether it came from
// another IP (else only from another port).
func filteringBehavior(answered, otherIP bool) NATBehavior {
	switch {
	case answered && otherIP:
		return NATEndpointIndependent
	case answered:
		return NATNotPortDependent
	case otherIP:
		return NATEndpointDependent
	}
	return NATAddressAndPortDependent
}

// verdict says in one line what r means for p2pcat's direct connections.
func verdict(r NATReport) string {
	restrictive := r.Filtering == NATAddressAndPortDependent || r.Filtering == NATEndpointDependent
	switch {
	case !r.NAT && restrictive:
		return "no NAT, but a firewall drops unsolicited packets: direct connections work with most peers, since both sides punch"
	case !r.NAT:
		return "no NAT: direct connections work with most peers"
	case r.Mapping == NATEndpointIndependent:
		return "endpoint-independent mapping: direct connections work with most peers"
	case r.Mapping == NATNotPortDependent:
		return "the NAT keeps one mapping across server ports (endpoint-independent, unless address-dependent, which one server IP cannot rule out): direct connections likely work with most peers"
	case r.Mapping == NATEndpointDependent, r.Mapping == NATAddressAndPortDependent:
		return "endpoint-dependent mapping (symmetric NAT): direct connections only to peers without NAT; other sessions will use the relay"
	}
	return "behind a NAT whose behaviour could not be tested: direct connections may or may not work; sessions that cannot connect directly will use the relay"
}

// sourceIPFor returns the local IP this host sends from to reach server.
// Connecting a UDP socket sends nothing; it only picks the route.
func sourceIPFor(server netip.AddrPort) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s: %w", server, err)
	}
	defer c.Close()
	return udpio.Unmap(c.LocalAddr().(*net.UDPAddr).AddrPort()).Addr(), nil
}

// MappingPair asks the STUN servers primary and alternate, from the same
// socket and at the same time, which address each sees conn's datagrams
// come from: one round trip for the question a session asks (is our NAT's
// mapping endpoint-dependent?) before it offers its candidates. Each
// request is sent once and retransmitted at stunPairRetry, and ctx bounds
// the wait (callers give it a short deadline: a session must not wait on
// an alternate that is not there). Once the primary answered, the
// alternate (on the same host) has twice that round trip more, and
// stunPairSlack, to answer. A mapped address is invalid when its answer
// did not come; the error is only that of a broken socket.
func MappingPair(ctx context.Context, conn PacketConn, primary, alternate netip.AddrPort) (p, a netip.AddrPort, err error) {
	primary, alternate = udpio.Unmap(primary), udpio.Unmap(alternate)
	reqP, txP := newBindingRequest(0)
	reqA, txA := newBindingRequest(0)
	defer conn.SetReadDeadline(time.Time{})
	buf := make([]byte, wire.MaxRelayDatagram)
	start := time.Now()
	for ctx.Err() == nil && (!p.IsValid() || !a.IsValid()) {
		if !p.IsValid() {
			conn.WriteToUDPAddrPort(reqP, primary)
		}
		if !a.IsValid() {
			conn.WriteToUDPAddrPort(reqA, alternate)
		}
		until := time.Now().Add(stunPairRetry)
		if d, ok := ctx.Deadline(); ok && d.Before(until) {
			until = d
		}
		for (!p.IsValid() || !a.IsValid()) && time.Now().Before(until) {
			conn.SetReadDeadline(until)
			n, _, rerr := conn.ReadFromUDPAddrPort(buf)
			switch {
			case errors.Is(rerr, net.ErrClosed):
				return p, a, rerr
			case rerr != nil:
				continue // the deadline, or an ICMP error: try again
			}
			if ans, ok := stunmsg.ParseAnswer(buf[:n], txP); ok && ans.Code == 0 && !p.IsValid() {
				p = ans.Mapped
				var stop context.CancelFunc
				ctx, stop = context.WithTimeout(ctx, 2*time.Since(start)+stunPairSlack)
				defer stop()
				if d, _ := ctx.Deadline(); d.Before(until) {
					until = d
				}
			} else if ans, ok := stunmsg.ParseAnswer(buf[:n], txA); ok && ans.Code == 0 {
				a = ans.Mapped
			}
		}
	}
	return p, a, nil
}

// stunPairRetry: MappingPair re-sends a request not answered this long
// (a lost datagram costs this, not a whole RFC 5389 RTO).
const stunPairRetry = 100 * time.Millisecond

// stunPairSlack is what MappingPair gives the alternate beyond twice the
// primary's round trip: the time a busy server takes to answer.
const stunPairSlack = 50 * time.Millisecond
