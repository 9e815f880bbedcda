package attacker

import (
	"crypto/rand"
	"net"
	"net/netip"
	"sync"

	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// Server is a malicious rendezvous server on 127.0.0.1. It records every
// datagram it receives and hands each one that decodes to its Behaviour,
// which answers (or not) with Send.
type Server struct {
	Addr netip.AddrPort
	// ID and Cookie are what its Challenges carry: chosen by the attacker,
	// so that anything a client derives from them is computable by it.
	ID     [16]byte
	Cookie []byte

	conn   *net.UDPConn
	behave Behaviour
	mu     sync.Mutex
	got    []Datagram
	done   chan struct{}
}

// Behaviour is the server's answer to one decoded request m (from d.From).
// It runs on the server's one reader goroutine.
type Behaviour func(s *Server, d Datagram, m wire.Message)

// StartServer starts a malicious server with the given behaviour; a fixed
// server id and cookie, easy to recognise in captures, unless the caller
// changes them before the first client arrives.
func StartServer(behave Behaviour) (*Server, error) {
	conn, addr, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr, conn: conn, behave: behave, done: make(chan struct{})}
	copy(s.ID[:], "evil-server-id-!")
	s.Cookie = []byte("attacker's cookie...") // 20 bytes, as the real server's
	go func() {
		defer close(s.done)
		readLoop(conn, func(d Datagram) {
			s.mu.Lock()
			s.got = append(s.got, d)
			s.mu.Unlock()
			if m, err := wire.Decode(d.Data); err == nil && s.behave != nil {
				s.behave(s, d, m)
			}
		})
	}()
	return s, nil
}

// Close stops the server and waits for its goroutine.
func (s *Server) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// Received returns every datagram received so far, in order.
func (s *Server) Received() []Datagram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Datagram(nil), s.got...)
}

// Send sends m to to, unpadded (the server's answers are never padded).
func (s *Server) Send(to netip.AddrPort, m wire.Message) {
	_, _ = s.conn.WriteToUDPAddrPort(m.AppendTo(nil), to)
}

// Challenge returns the server's Challenge for a request with reqID.
func (s *Server) Challenge(reqID uint64, registered bool) *wire.Challenge {
	ch := &wire.Challenge{ReqID: reqID, Cookie: s.Cookie, ServerID: s.ID}
	if registered {
		ch.Flags = wire.ChallengeRegistered
	}
	return ch
}

// ClaimRegistered answers every Hello with a Challenge that says the
// session is registered, whatever it is: the attack of issue 12's first
// finding, where a version 1 client answered with a proof derived from the
// password. Nothing else is answered.
func ClaimRegistered() Behaviour {
	return func(s *Server, d Datagram, m wire.Message) {
		if h, ok := m.(*wire.Hello); ok {
			s.Send(d.From, s.Challenge(h.ReqID, true))
		}
	}
}

// ClaimRegisteredLater answers Hello with an honest Challenge (not
// registered) and the Find that follows with a fresh Challenge that now
// says registered, as if the session had been registered meanwhile.
func ClaimRegisteredLater() Behaviour {
	return func(s *Server, d Datagram, m wire.Message) {
		switch m := m.(type) {
		case *wire.Hello:
			s.Send(d.From, s.Challenge(m.ReqID, false))
		case *wire.Find:
			s.Send(d.From, s.Challenge(m.ReqID, true))
		}
	}
}

// Attempt is one punch attempt of a client, as the server sees it: its
// first Find with a new reqID.
type Attempt struct {
	N         int // 0 for the client's first attempt
	From      netip.AddrPort
	Find      *wire.Find
	PairingID [16]byte
}

// PairFunc decides the server's pairing answer to a new attempt: the
// FindResp to send (ReqID, Status and Observed are filled in), or nil to
// keep the client waiting.
type PairFunc func(a Attempt) *wire.FindResp

// Pair answers Hello with an honest Challenge (not registered) and each
// attempt's Find as pair says, with a fresh random pairing id per attempt;
// re-sends of a Find get the same answer, as from the real server.
func Pair(pair PairFunc) Behaviour {
	type answered struct {
		resp *wire.FindResp
	}
	var (
		mu       sync.Mutex
		byReqID  = map[uint64]*answered{}
		attempts = map[string]int{} // by the finder's name
	)
	return func(s *Server, d Datagram, m wire.Message) {
		switch m := m.(type) {
		case *wire.Hello:
			s.Send(d.From, s.Challenge(m.ReqID, false))
		case *wire.Find:
			mu.Lock()
			a := byReqID[m.ReqID]
			if a == nil {
				at := Attempt{N: attempts[m.Name], From: d.From, Find: m}
				attempts[m.Name]++
				rand.Read(at.PairingID[:])
				mu.Unlock()
				resp := pair(at)
				mu.Lock()
				if resp != nil {
					resp.PairingID = at.PairingID
				}
				a = &answered{resp: resp}
				byReqID[m.ReqID] = a
			}
			mu.Unlock()
			resp := &wire.FindResp{ReqID: m.ReqID, Status: wire.FindWaiting, Observed: d.From}
			if a.resp != nil {
				r := *a.resp
				r.ReqID, r.Status, r.Observed = m.ReqID, wire.FindMatched, d.From
				if r.PeerName == "" {
					r.PeerName = m.Peer // whom the Find asked for, as the real server names it
				}
				resp = &r
			}
			s.Send(d.From, resp)
		}
	}
}
