package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/internal/stunmsg"
	"github.com/p2pcat/p2pcat/rendezvous/server/store"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// DataDir holds the registration database. Required.
	DataDir string
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the server's Prometheus metrics; nil registers none.
	Registry prometheus.Registerer

	PendingTTL      time.Duration // a find waits this long after its last re-send (DefaultPendingTTL)
	MatchTTL        time.Duration // a pairing answer is kept for re-sends this long (default 30 s)
	CookieTTL       time.Duration // address cookies are valid this long (default 2 min)
	MaxPending      int           // pending finds in all (default 100,000)
	MaxPendingPerIP int           // pending finds per client IP (default 64)
	RatePerIP       float64       // find/register requests per second per client IP (default 20; negative disables)
	BurstPerIP      int           // bucket size of that rate (default 40)
	MaxRegisterTTL  time.Duration // longest registration a client may ask for (default 30 days)
	Readers         int           // goroutines reading the socket (default GOMAXPROCS)

	// The relay (relay.go) carries the sessions of pairs that found no
	// direct path.
	NoRelay    bool          // offer no relay
	RelayRate  int64         // bytes per second per pairing (default 10 MB/s)
	RelayBytes int64         // bytes per pairing in all (default 4 GiB)
	MaxRelays  int           // pairings remembered for the relay (default 100,000)
	RelayIdle  time.Duration // a pairing not relayed for this long is forgotten (default 10 min)
}

// DefaultPendingTTL is how long a find waits after its last re-send.
// Clients re-send every 2 s while they wait, so five lost re-sends in a row
// end it; a client killed while it waited leaves a ghost that a later peer
// can be paired with for at most this long.
const DefaultPendingTTL = 10 * time.Second

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PendingTTL, DefaultPendingTTL)
	def(&c.MatchTTL, 30*time.Second)
	def(&c.CookieTTL, 2*time.Minute)
	def(&c.MaxRegisterTTL, 30*24*time.Hour)
	if c.MaxPending <= 0 {
		c.MaxPending = 100_000
	}
	if c.MaxPendingPerIP <= 0 {
		c.MaxPendingPerIP = 64
	}
	if c.RatePerIP == 0 {
		c.RatePerIP = 20
	}
	if c.BurstPerIP <= 0 {
		c.BurstPerIP = 40
	}
	def(&c.RelayIdle, 10*time.Minute)
	if c.RelayRate <= 0 {
		c.RelayRate = 10_000_000
	}
	if c.RelayBytes <= 0 {
		c.RelayBytes = 4 << 30
	}
	if c.MaxRelays <= 0 {
		c.MaxRelays = 100_000
	}
	if c.Readers <= 0 {
		c.Readers = runtime.GOMAXPROCS(0)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is a rendezvous server. Create it with NewServer, run it with
// Serve, and Close it after Serve has returned.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	cookies *cookieJar
	limiter *rateLimiter
	table   *table
	metrics *metrics
	// registers go to one writer goroutine: a bbolt commit waits for fsync,
	// and no reader may wait for a disk.
	registers chan registerJob
	// stun answers STUN Binding requests (stun.go).
	stun stunService
	// relay forwards ciphertext between paired clients (relay.go).
	relay *relay
	// testOnly holds hooks that tests set while the server runs.
	testOnly atomic.Pointer[testHooks]
}

type testHooks struct {
	now     func() time.Time // moves the clock forward to expire things
	panicOn string           // a find for this session panics, to test recovery
}

func (s *Server) now() time.Time {
	if h := s.testOnly.Load(); h != nil && h.now != nil {
		return h.now()
	}
	return time.Now()
}

type registerJob struct {
	req  *wire.Register
	from netip.AddrPort
}

// NewServer opens the store in cfg.DataDir.
func NewServer(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.DataDir == "" {
		return nil, errors.New("rendezvous: no data directory given")
	}
	st, err := store.Open(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("opening the store in %s: %w", cfg.DataDir, err)
	}
	v1 := 0
	for _, e := range st.SkippedRecords() {
		if errors.Is(e, store.ErrV1Record) {
			v1++
			continue
		}
		cfg.Logger.Warn("skipped an unreadable registration record", "err", e)
	}
	if v1 > 0 {
		// One line, not one per session: after an upgrade they are all
		// alike, and each says the same.
		cfg.Logger.Warn("skipped registrations made by p2pcat protocol version 1 (password credentials): their owners must register them again, with a session key",
			"count", v1)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		store:     st,
		cookies:   newCookieJar(cfg.CookieTTL),
		limiter:   newRateLimiter(cfg.RatePerIP, cfg.BurstPerIP, 1_000_000),
		table:     newTable(cfg.PendingTTL, cfg.MatchTTL, cfg.MaxPending, cfg.MaxPendingPerIP, !cfg.NoRelay),
		registers: make(chan registerJob, 1024),
		relay:     newRelay(cfg),
	}
	s.metrics = newMetrics(cfg.Registry,
		func() float64 { p, _ := s.table.counts(); return float64(p) },
		func() float64 { n, _ := s.store.Count(); return float64(n) },
		func() float64 {
			if s.relay == nil {
				return 0
			}
			return float64(s.relay.count())
		})
	return s, nil
}

// ServerID is the server's persistent id, which clients' session-key
// signatures cover.
func (s *Server) ServerID() [16]byte { return s.store.ServerID() }

// Close closes the store. Call it after Serve has returned.
func (s *Server) Close() error { return s.store.Close() }

// Serve answers requests on conn until ctx is done, then stops its
// goroutines, finishes the registrations already accepted and returns. It
// does not close conn: the caller owns it.
func (s *Server) Serve(ctx context.Context, conn *net.UDPConn) error {
	s.stun.setPrimary(conn)
	s.log.Info("rendezvous server listening", "addr", conn.LocalAddr().String(), "server_id", fmt.Sprintf("%x", s.ServerID()))
	var readers, writer, sweeper sync.WaitGroup
	writer.Go(func() { s.routineRegister(conn) })
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	sweeper.Go(func() { s.routineSweep(sweepCtx) })
	errs := make(chan error, s.cfg.Readers)
	for range s.cfg.Readers {
		readers.Go(func() { errs <- s.routineRead(ctx, conn) })
	}
	// Wake the readers when ctx ends: a past deadline fails their reads.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	readers.Wait()
	stop()
	close(s.registers)
	writer.Wait()
	stopSweep()
	sweeper.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	s.log.Info("rendezvous server stopped")
	return nil
}

func (s *Server) routineRead(ctx context.Context, conn *net.UDPConn) error {
	bc := udpio.NewBatchConn(conn)
	out := newOutBatch(bc, func(err error) {
		s.metrics.drop(dropSendError)
		s.log.Debug("send failed", "err", err)
	})
	in := make([]ipv4.Message, batchSize)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxDatagram+1)}
	}
	for {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("rendezvous socket closed: %w", err)
			}
			// Transient errors (ICMP unreachable reported on the socket) must
			// not stop the server.
			s.log.Debug("read error", "err", err)
			continue
		}
		for i := range in[:n] {
			ua, ok := in[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			s.handle(out, in[i].Buffers[0][:in[i].N], ua.AddrPort())
		}
		out.flush()
	}
}

// handle processes one datagram. A panic here is a bug; it costs that packet,
// not the server.
func (s *Server) handle(batch *outBatch, pkt []byte, from netip.AddrPort) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.drop(dropPanic)
			s.log.Error("panic while handling a packet", "from", from.String(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	switch {
	case stunmsg.IsSTUN(pkt):
		s.handleSTUN(batch, pkt, from)
		return
	case isRelay(pkt):
		s.handleRelay(batch, pkt, from)
		return
	}
	out := &sender{s: s, batch: batch, to: from, reqLen: len(pkt)}
	msg, err := wire.Decode(pkt)
	if err != nil {
		s.refuse(out, pkt, err)
		return
	}
	s.metrics.packet(msg.Type())
	now := s.now()
	switch m := msg.(type) {
	case *wire.Hello:
		s.handleHello(out, m, now)
	case *wire.Register:
		if s.admit(out, m.ReqID, m.Cookie, m.Session, now) {
			s.handleRegister(out, m)
		}
	case *wire.Find:
		if s.admit(out, m.ReqID, m.Cookie, m.Session, now) {
			s.handleFind(out, m, now)
		}
	case *wire.RelayBind:
		if s.admit(out, m.ReqID, m.Cookie, "", now) {
			s.handleRelayBind(out, m, now)
		}
	case *wire.Leave:
		if s.admit(out, m.ReqID, m.Cookie, m.Session, now) && s.table.leave(m, out.to, now) {
			s.log.Debug("find withdrawn", "session", m.Session, "name", m.Name, "peer", m.Peer)
		}
	default:
		s.metrics.drop(dropUnexpected)
	}
}

// VersionMessage is the text of the Error (code 2) that answers a client of
// another protocol version. Short enough that the answer (88 bytes) is no
// larger than a version-1 client's padded request (96), which it must not
// be, the address being unproven.
const VersionMessage = "this server speaks p2pcat protocol version 2; use the same p2pcat version"

// refuse answers a datagram that did not decode, when it is plausibly from a
// p2pcat client (it has our magic), with an error no larger than itself.
func (s *Server) refuse(out *sender, pkt []byte, err error) {
	id, _ := wire.ReqIDOf(pkt)
	ours := len(pkt) >= len(wire.Magic) && [4]byte(pkt[:4]) == wire.Magic
	switch {
	case errors.Is(err, wire.ErrNotRendezvous), !ours:
		s.metrics.drop(dropNotOurs)
	case errors.Is(err, wire.ErrVersion):
		s.metrics.drop(dropVersion)
		// In the client's own version when that is version 1, whose Error
		// has this layout, so that it prints why instead of timing out;
		// in ours otherwise (the Error layout is the same in every
		// version, and later clients read it whatever its version byte).
		version := uint8(wire.Version)
		if pkt[4] == 1 {
			version = 1
		}
		e := &wire.Error{ReqID: id, Code: wire.CodeVersion, Message: VersionMessage}
		out.sendBytes(func(b []byte) []byte { return wire.AppendErrorVersion(b, version, e) })
	case errors.Is(err, wire.ErrType):
		s.metrics.drop(dropUnknownType)
		out.send(&wire.Error{ReqID: id, Code: wire.CodeUnknownType, Message: "unknown message type"})
	default:
		s.metrics.drop(dropMalformed)
		out.send(&wire.Error{ReqID: id, Code: wire.CodeMalformed, Message: "malformed request"})
	}
	s.log.Debug("refused a packet", "from", out.to.String(), "err", err)
}

func (s *Server) handleHello(out *sender, m *wire.Hello, now time.Time) {
	ch := &wire.Challenge{ReqID: m.ReqID, Cookie: s.cookies.issue(out.to, now), ServerID: s.ServerID()}
	if _, err := s.store.Lookup(m.Session, now); err == nil {
		ch.Flags |= wire.ChallengeRegistered
	}
	out.send(ch)
}

// admit checks the cookie and the rate limit of a stateful request. A
// missing or stale cookie gets a fresh Challenge (never larger than the
// request, so an unproven address gains nothing).
func (s *Server) admit(out *sender, reqID uint64, cookie []byte, session string, now time.Time) bool {
	switch state := s.cookies.check(cookie, out.to, now); state {
	case cookieValid:
	default:
		// A missing cookie, one from before a restart or from before the
		// client's NAT mapping changed, and a forged one all get a fresh
		// Challenge, which is no larger than the request.
		switch state {
		case cookieBad:
			s.metrics.drop(dropBadCookie)
		case cookieStale:
			s.metrics.drop(dropStaleCookie)
		}
		s.handleHello(out, &wire.Hello{ReqID: reqID, Session: session}, now)
		return false
	}
	out.proven = true
	if !s.limiter.allow(out.to.Addr(), now) {
		s.metrics.drop(dropRateLimited)
		out.send(&wire.Error{ReqID: reqID, Code: wire.CodeRateLimited, Message: "rate limited: slow down"})
		return false
	}
	return true
}

func (s *Server) handleRegister(out *sender, m *wire.Register) {
	ttl := time.Duration(m.TTLSeconds) * time.Second
	if ttl < rendezvous.MinRegisterTTL || ttl > s.cfg.MaxRegisterTTL {
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeBadArgument,
			Message: fmt.Sprintf("ttl must be between %s and %s", rendezvous.MinRegisterTTL, s.cfg.MaxRegisterTTL)})
		return
	}
	// Proof of possession of the key behind the verifier. The signature
	// covers this server's id and the cookie (bound to the sender's
	// address, and fresh), so a captured Register is good for nothing
	// elsewhere or later.
	if !rendezvous.VerifyRegister(m.Verifier, m.Signature, s.ServerID(), m.Cookie, m.Session, m.TTLSeconds) {
		s.metrics.authFailures.Inc()
		s.log.Info("register refused: the signature does not verify", "session", m.Session, "from", out.to.String())
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeAuthFailed, Message: "session key signature does not verify"})
		return
	}
	select {
	case s.registers <- registerJob{req: m, from: out.to}:
	default:
		s.metrics.drop(dropQueueFull)
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeBusy, Message: "server busy: try again"})
	}
}

// routineRegister commits registrations one at a time, in arrival order.
func (s *Server) routineRegister(conn *net.UDPConn) {
	for job := range s.registers {
		s.commitRegister(conn, job)
	}
}

func (s *Server) commitRegister(conn *net.UDPConn, job registerJob) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.drop(dropPanic)
			s.log.Error("panic while registering", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	m := job.req
	out := &sender{s: s, conn: conn, to: job.from, proven: true}
	now := s.now()
	before, lookupErr := s.store.Lookup(m.Session, now)
	reg, err := s.store.Register(m.Session, m.Verifier, time.Duration(m.TTLSeconds)*time.Second, now)
	switch {
	case errors.Is(err, store.ErrTaken):
		s.metrics.registrations.WithLabelValues("taken").Inc()
		s.log.Info("register refused: session taken", "session", m.Session, "from", job.from.String())
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeTaken, Message: "session taken: registered with another session key"})
	case err != nil:
		s.metrics.registrations.WithLabelValues("error").Inc()
		s.log.Error("register failed", "session", m.Session, "err", err)
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeInternal, Message: "internal error: registration not stored"})
	default:
		status, result := wire.RegisterCreated, "created"
		if lookupErr == nil && before.Verifier == m.Verifier {
			status, result = wire.RegisterRefreshed, "refreshed"
		}
		s.metrics.registrations.WithLabelValues(result).Inc()
		s.log.Info("session registered", "session", m.Session, "result", result, "expires", reg.Expires.Format(time.RFC3339), "from", job.from.String())
		out.send(&wire.RegisterResp{ReqID: m.ReqID, Status: status, Expires: uint64(reg.Expires.Unix())})
	}
}

func (s *Server) handleFind(out *sender, m *wire.Find, now time.Time) {
	if err := m.Check(); err != nil {
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeBadArgument, Message: err.Error()})
		return
	}
	if h := s.testOnly.Load(); h != nil && h.panicOn == m.Session {
		panic("test-only panic")
	}
	if reg, err := s.store.Lookup(m.Session, now); err == nil {
		if m.Signature == ([64]byte{}) {
			// The client did not know the session is registered (or it was
			// registered since): tell it, with a fresh cookie.
			s.handleHello(out, &wire.Hello{ReqID: m.ReqID, Session: m.Session}, now)
			return
		}
		if !rendezvous.VerifyFindFlags(reg.Verifier, m.Signature, s.ServerID(), m.Cookie, m.Session, m.Name, m.Peer, m.Flags) {
			s.metrics.authFailures.Inc()
			s.log.Info("find refused: wrong session key", "session", m.Session, "name", m.Name, "from", out.to.String())
			out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeAuthFailed, Message: "authentication failed: wrong session key for this registered session"})
			return
		}
	}
	res, err := s.table.find(m, out.to, now)
	if err != nil {
		s.metrics.drop(dropTableFull)
		out.send(&wire.Error{ReqID: m.ReqID, Code: wire.CodeBusy, Message: "server busy: " + err.Error()})
		return
	}
	if res.withdrawn {
		s.metrics.drop(dropWithdrawn)
		return
	}
	if s.relay != nil && res.paired {
		initiator, responder := out.to, res.pushAddr
		secrets := [2][16]byte{res.reply.RelayToken, res.push.RelayToken}
		if res.reply.Role == wire.RoleResponder {
			initiator, responder = responder, initiator
			secrets[0], secrets[1] = secrets[1], secrets[0]
		}
		s.relay.offer(res.reply.PairingID, initiator, responder, secrets, now)
	}
	out.send(&res.reply)
	if res.paired {
		s.metrics.pairings.Inc()
		s.log.Debug("paired", "session", m.Session, "a", res.reply.PeerName, "b", m.Name)
		// The peer's address was proven by its own cookie when it was stored.
		push := &sender{s: s, batch: out.batch, to: res.pushAddr, proven: true}
		push.send(res.push)
	}
}

func (s *Server) routineSweep(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	lastPurge := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if n := s.table.sweep(now); n > 0 {
				s.metrics.expired.Add(float64(n))
			}
			s.limiter.sweep(now)
			if s.relay != nil {
				s.relay.sweep(now)
			}
			if now.Sub(lastPurge) >= 10*time.Minute {
				lastPurge = now
				if n, err := s.store.Purge(now); err != nil {
					s.log.Error("purging expired registrations", "err", err)
				} else if n > 0 {
					s.log.Info("purged expired registrations", "count", n)
				}
			}
		}
	}
}

// sender writes answers to one address, enforcing the amplification rule:
// until the address has proven it receives (a valid cookie), no answer may
// be larger than the datagram that caused it. It queues into a batch (the
// readers) or writes directly (the registration writer).
type sender struct {
	s      *Server
	batch  *outBatch
	conn   *net.UDPConn
	to     netip.AddrPort
	reqLen int
	proven bool
}

func (o *sender) send(m wire.Message) { o.sendBytes(m.AppendTo) }

// sendBytes sends what appendTo appends to an empty buffer.
func (o *sender) sendBytes(appendTo func([]byte) []byte) {
	var b []byte
	if o.batch != nil {
		b = appendTo(o.batch.buffer())
	} else {
		b = appendTo(make([]byte, 0, wire.MaxPacket))
	}
	if !o.proven && len(b) > o.reqLen {
		o.s.metrics.drop(dropAmplification)
		return
	}
	if o.batch != nil {
		o.batch.add(b, o.to)
		return
	}
	if _, err := o.conn.WriteToUDPAddrPort(b, o.to); err != nil {
		o.s.metrics.drop(dropSendError)
		o.s.log.Debug("send failed", "to", o.to.String(), "err", err)
	}
}
