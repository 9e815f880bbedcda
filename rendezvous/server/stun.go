package server

// STUN on the rendezvous port: RFC 5389 Binding, plus the RFC 5780
// attributes that let `p2pcat nat-check` tell NAT behaviours apart. The same
// rules are in PROTOCOL.md ("STUN on the rendezvous port").
//
//   - A datagram is STUN when its first two bits are 0, bytes 4..8 hold the
//     magic cookie 0x2112A442, and the length field (bytes 2..4) equals the
//     datagram's length minus the 20-byte header, a multiple of 4. Nothing
//     else the server receives passes that test: rendezvous messages start
//     with 0x50 ('P' of "P2PC", top bits 01), relay packets with 0xF1 and
//     punch probes with 0xF0 (top bits 11).
//   - Only Binding requests are answered. Indications, responses, other
//     methods, a wrong FINGERPRINT and attributes that do not parse are
//     dropped silently (RFC 5389 7.3).
//   - A Binding success response carries XOR-MAPPED-ADDRESS; OTHER-ADDRESS
//     and RESPONSE-ORIGIN when the server has an alternate socket (see
//     below); FINGERPRINT if and only if the request had one. There is no
//     MAPPED-ADDRESS: the RFC 3489 clients that need it send no magic cookie,
//     so they are not STUN by the rule above. There is no SOFTWARE: it would
//     only add bytes.
//   - Amplification: no answer is larger than stunMaxAmplification (3)
//     times its request. XOR-MAPPED-ADDRESS and FINGERPRINT always fit (a
//     20-byte request allows 60 bytes, the IPv6 answer takes 44);
//     OTHER-ADDRESS, then RESPONSE-ORIGIN, are left out of an answer they
//     would push over the bound. Only plain 20-byte requests over IPv6 lose
//     them; p2pcat's client sends SOFTWARE, which makes room.
//   - Each request that gets an answer, error answers included, takes a
//     token from the per-IP bucket that finds and registers use
//     (Config.RatePerIP, BurstPerIP); without a token it is dropped. A
//     spoofed source address therefore receives at most BurstPerIP answers
//     and then RatePerIP a second, each at most 3 times the attacker's
//     bytes: the server is of no use as a reflector.
//   - Alternate socket (ServeSTUNAlternate): each socket's answers carry
//     OTHER-ADDRESS, the other socket's address, and RESPONSE-ORIGIN, the
//     address the answer leaves from. A socket bound to a wildcard address
//     advertises the unspecified IP, which means "the IP you sent your
//     request to". Unlike RFC 5780 section 7.4, OTHER-ADDRESS is sent even
//     when the alternate shares the primary's IP (the usual set-up: port+1),
//     so a client must compare the IPs before it concludes anything about
//     address-dependent behaviour; p2pcat's client does.
//   - CHANGE-REQUEST is honoured by answering from the other socket when that
//     socket provides exactly the change asked for: change-port when its port
//     differs, change-IP when its IP differs (both IPs specific). A non-zero
//     CHANGE-REQUEST that cannot be honoured, or any when there is no
//     alternate, gets 420 Unknown Attribute naming CHANGE-REQUEST (RFC 5780
//     section 6.1). A zero one is an ordinary request.
//   - Other comprehension-required attributes (below 0x8000) that the server
//     does not understand get 420 Unknown Attribute with UNKNOWN-ATTRIBUTES
//     (RFC 5389 7.3.1). Among them are PADDING and RESPONSE-PORT, which would
//     have the server amplify or reflect. USERNAME, MESSAGE-INTEGRITY, REALM
//     and NONCE are understood and ignored: this usage has no authentication.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/internal/stunmsg"
)

const (
	// stunMaxAmplification bounds an answer's size by its request's.
	stunMaxAmplification = 3
	// stunFingerprintLen is the FINGERPRINT attribute with its header.
	stunFingerprintLen = 8

	stunCodeUnknownAttribute = 420
	// stunMaxUnknown caps UNKNOWN-ATTRIBUTES; a client learns enough from
	// the first few.
	stunMaxUnknown = 8
)

var stunReasonUnknownAttribute = []byte("Unknown Attribute")

// stunSocket is a socket STUN is answered on.
type stunSocket struct {
	conn *net.UDPConn
	addr netip.AddrPort // as bound: the IP may be unspecified
}

func newSTUNSocket(conn *net.UDPConn) (*stunSocket, error) {
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil, errors.New("rendezvous: STUN socket has no local UDP address")
	}
	return &stunSocket{conn: conn, addr: udpio.Unmap(ua.AddrPort())}, nil
}

// reaches reports whether an answer to client can leave from this socket:
// an IPv4 socket cannot send to IPv6 clients, nor a specific IPv6 address to
// IPv4 ones. A socket on [::] is taken to be dual-stack (when it is not, the
// failed send is counted).
func (k *stunSocket) reaches(client netip.Addr) bool {
	ip := k.addr.Addr()
	switch {
	case ip.Is4():
		return client.Is4()
	case ip.IsUnspecified():
		return true
	default:
		return client.Is6()
	}
}

// stunService holds the sockets STUN is answered on. Every reader looks at
// them for every STUN request, so they are atomic.
type stunService struct {
	primary, alternate atomic.Pointer[stunSocket]
}

// setPrimary records the socket Serve reads, so that the alternate can
// advertise it (OTHER-ADDRESS) and answer change requests from it. Serve
// calls it before reading.
func (t *stunService) setPrimary(conn *net.UDPConn) {
	if k, err := newSTUNSocket(conn); err == nil {
		t.primary.Store(k)
	}
}

// canChange reports whether answering from other makes exactly the change
// the client asked for, relative to here, the socket the request came in on.
func canChange(here, other *stunSocket, change uint32) bool {
	if here == nil || other == nil {
		return false
	}
	hereIP, otherIP := here.addr.Addr(), other.addr.Addr()
	ipDiffers := !hereIP.IsUnspecified() && !otherIP.IsUnspecified() && hereIP != otherIP
	portDiffers := here.addr.Port() != other.addr.Port()
	return (change&stunmsg.ChangeIP != 0) == ipDiffers && (change&stunmsg.ChangePort != 0) == portDiffers
}

// stunUnderstood reports whether the server may ignore or use attribute t
// in a Binding request without answering 420.
func stunUnderstood(t stun.AttrType) bool {
	switch t {
	case stun.AttrMappedAddress, stun.AttrChangeRequest, stun.AttrUsername,
		stun.AttrMessageIntegrity, stun.AttrErrorCode, stun.AttrUnknownAttributes,
		stun.AttrRealm, stun.AttrNonce, stun.AttrXORMappedAddress:
		return true
	}
	return t.Optional()
}

// stunMessages recycles decoding state: the server decodes every request
// into a Message and builds every answer in one.
var stunMessages = sync.Pool{New: func() any { return new(stun.Message) }}

func (s *Server) handleSTUN(batch *outBatch, pkt []byte, from netip.AddrPort) {
	// The readers' batch sends from the primary socket, which Serve
	// recorded with setPrimary before reading.
	s.answerSTUN(batch, s.stun.primary.Load(), s.stun.alternate.Load(), pkt, from)
}

// answerSTUN answers one STUN datagram that came in on socket here (nil if
// unknown), other being the server's other STUN socket (nil if none).
// Answers from here go into batch, which sends from it; answers to a change
// request are written from other at once.
func (s *Server) answerSTUN(batch *outBatch, here, other *stunSocket, pkt []byte, from netip.AddrPort) {
	req := stunMessages.Get().(*stun.Message)
	defer func() {
		req.Raw = nil // pkt belongs to the reader
		stunMessages.Put(req)
	}()
	req.Raw = pkt
	if err := req.Decode(); err != nil {
		s.metrics.drop(dropMalformed)
		return
	}
	var q stunQuery
	if reason := q.read(req); reason != "" {
		s.metrics.drop(reason)
		return
	}
	if other != nil && !other.reaches(from.Addr()) {
		other = nil
	}
	src := q.source(here, other) // the socket the answer leaves from
	if !s.limiter.allow(from.Addr(), s.now()) {
		s.metrics.drop(dropRateLimited)
		return
	}

	resp := stunMessages.Get().(*stun.Message)
	defer func() {
		resp.Raw = nil // the batch's buffer
		stunMessages.Put(resp)
	}()
	resp.Raw = batch.buffer()
	resp.Length = 0
	resp.Attributes = resp.Attributes[:0]
	resp.TransactionID = req.TransactionID
	limit := stunMaxAmplification * len(pkt)
	if q.withFingerprint {
		limit -= stunFingerprintLen // keep room for it
	}
	q.write(resp, from, other, src, limit)
	if len(resp.Raw) > limit {
		s.metrics.drop(dropAmplification)
		return
	}
	if q.withFingerprint {
		stun.Fingerprint.AddTo(resp)
	}
	s.sendSTUN(batch, resp.Raw, resp.Type, here, src, from)
}

// stunQuery is what the answer to a Binding request depends on.
type stunQuery struct {
	withFingerprint bool
	change          uint32 // the CHANGE-REQUEST flags asked for; 0 for none
	// unknown holds the first comprehension-required attributes the server
	// does not understand (nUnknown of them): the answer is a 420.
	unknown  [stunMaxUnknown]stun.AttrType
	nUnknown int
}

// read checks the decoded request req and records what the answer depends
// on. It returns the drop reason when req gets no answer, "" when it gets
// one.
func (q *stunQuery) read(req *stun.Message) string {
	if req.Type != stun.BindingRequest {
		return dropNotOurs
	}
	q.withFingerprint = req.Contains(stun.AttrFingerprint)
	if q.withFingerprint && stun.Fingerprint.Check(req) != nil {
		return dropMalformed
	}
	if v, err := req.Get(stun.AttrChangeRequest); err == nil {
		if len(v) != 4 {
			return dropMalformed
		}
		q.change = binary.BigEndian.Uint32(v) & (stunmsg.ChangeIP | stunmsg.ChangePort)
	}
	for _, a := range req.Attributes {
		if !stunUnderstood(a.Type) {
			q.addUnknown(a.Type)
		}
	}
	return ""
}

// addUnknown records t among the unknown attributes, if there is room.
func (q *stunQuery) addUnknown(t stun.AttrType) {
	if q.nUnknown < len(q.unknown) {
		q.unknown[q.nUnknown] = t
		q.nUnknown++
	}
}

// source returns the socket the answer leaves from: other when the request
// asks for a change that other provides (and the answer is no error), here
// otherwise. A change that cannot be honoured makes CHANGE-REQUEST an
// unknown attribute.
func (q *stunQuery) source(here, other *stunSocket) *stunSocket {
	if q.change == 0 {
		return here
	}
	if !canChange(here, other, q.change) {
		q.addUnknown(stun.AttrChangeRequest)
		return here
	}
	if q.nUnknown == 0 { // errors come from here
		return other
	}
	return here
}

// write builds the answer in resp, whose header is still to be written: a
// 420 naming the unknown attributes, or a success with the client's
// address, then OTHER-ADDRESS and RESPONSE-ORIGIN as far as they fit within
// limit.
func (q *stunQuery) write(resp *stun.Message, from netip.AddrPort, other, src *stunSocket, limit int) {
	if q.nUnknown > 0 {
		resp.Type = stun.BindingError
		resp.WriteHeader()
		stun.ErrorCodeAttribute{Code: stunCodeUnknownAttribute, Reason: stunReasonUnknownAttribute}.AddTo(resp)
		addUnknownAttributes(resp, q.unknown[:q.nUnknown])
		return
	}
	resp.Type = stun.BindingSuccess
	resp.WriteHeader()
	stunmsg.AddAddr(resp, stun.AttrXORMappedAddress, from, true)
	if other != nil && len(resp.Raw)+stunmsg.AddrAttrLen(other.addr) <= limit {
		stunmsg.AddAddr(resp, stun.AttrOtherAddress, other.addr, false)
	}
	if src != nil && len(resp.Raw)+stunmsg.AddrAttrLen(src.addr) <= limit {
		stunmsg.AddAddr(resp, stun.AttrResponseOrigin, src.addr, false)
	}
}

// sendSTUN counts the answer b, of type typ, and sends it to the client
// from src: through batch when src is here, at once from src otherwise.
func (s *Server) sendSTUN(batch *outBatch, b []byte, typ stun.MessageType, here, src *stunSocket, to netip.AddrPort) {
	switch {
	case typ == stun.BindingError:
		s.metrics.stun(stunResultError)
	case src != here:
		s.metrics.stun(stunResultChanged)
	default:
		s.metrics.stun(stunResultAnswered)
	}
	if src == here {
		batch.add(b, to)
		return
	}
	// src is other, whose conn is set: it came from setPrimary or
	// ServeSTUNAlternate.
	if _, err := src.conn.WriteToUDPAddrPort(b, to); err != nil {
		s.metrics.drop(dropSendError)
		s.log.Debug("STUN send from the other socket failed", "to", to.String(), "err", err)
	}
}

// addUnknownAttributes appends UNKNOWN-ATTRIBUTES: 16-bit types, padded. (pion's
// UnknownAttributes.AddTo spends 4 bytes per type, which clients misread.)
func addUnknownAttributes(m *stun.Message, types []stun.AttrType) {
	var v [2 * stunMaxUnknown]byte
	for i, t := range types {
		binary.BigEndian.PutUint16(v[2*i:], uint16(t))
	}
	m.Add(stun.AttrUnknownAttributes, v[:2*len(types)])
}

// ServeSTUNAlternate answers STUN on alt, the server's alternate socket (RFC
// 5780: the same IP and another port, typically the listen port + 1, or
// another IP), until ctx is done. While it runs, answers on either socket
// carry OTHER-ADDRESS, the other one's address, and CHANGE-REQUEST can be
// honoured by answering from the other socket. It does not close alt: the
// caller owns it. One alternate at a time.
func (s *Server) ServeSTUNAlternate(ctx context.Context, alt *net.UDPConn) error {
	k, err := newSTUNSocket(alt)
	if err != nil {
		return err
	}
	if !s.stun.alternate.CompareAndSwap(nil, k) {
		return errors.New("rendezvous: a STUN alternate socket is already being served")
	}
	defer s.stun.alternate.CompareAndSwap(k, nil)
	s.log.Info("STUN alternate socket listening", "addr", k.addr.String())
	// Wake the read when ctx ends: a past deadline fails it.
	stop := context.AfterFunc(ctx, func() { alt.SetReadDeadline(time.Now()) })
	defer stop()
	out := newOutBatch(udpio.NewBatchConn(alt), func(err error) {
		s.metrics.drop(dropSendError)
		s.log.Debug("STUN send failed", "err", err)
	})
	buf := make([]byte, maxDatagram+1)
	for {
		n, from, err := alt.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("STUN alternate socket closed: %w", err)
			}
			// Transient errors (ICMP unreachable reported on the socket)
			// must not stop it.
			s.log.Debug("STUN alternate read error", "err", err)
			continue
		}
		s.handleAlternate(out, k, buf[:n], udpio.Unmap(from))
		out.flush()
	}
}

// handleAlternate processes one datagram from the alternate socket, which
// serves only STUN. A panic costs that packet, as on the primary.
func (s *Server) handleAlternate(out *outBatch, alt *stunSocket, pkt []byte, from netip.AddrPort) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.drop(dropPanic)
			s.log.Error("panic while handling a STUN packet", "from", from.String(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	if !stunmsg.IsSTUN(pkt) {
		s.metrics.drop(dropNotOurs)
		return
	}
	s.answerSTUN(out, alt, s.stun.primary.Load(), pkt, from)
}
