package attacker

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
	"github.com/p2pcat/p2pcat/pipe/secure"
)

// Handshake message types of protocol version 2 (pipe/secure/messages.go),
// and the probe's (pipe/path).
const (
	TypeHello      = 0xE8
	TypeReply      = 0xE9
	TypeFinish     = 0xEA
	TypeFinished   = 0xEB
	TypeAuthFailed = 0xEC
	TypeCancel     = 0xED
	TypeProbe      = 0xF0
	TypeRelay      = 0xF1
	ProbeLen       = 128
)

// Peer is an attacker's UDP socket on 127.0.0.1. It records every datagram
// it receives; a Link over it feeds them to a handshake.
type Peer struct {
	Addr  netip.AddrPort
	conn  *net.UDPConn
	inbox chan Datagram
	mu    sync.Mutex
	got   []Datagram
	sent  []Datagram
	done  chan struct{}
}

// NewPeer opens an attacker socket.
func NewPeer() (*Peer, error) {
	conn, addr, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	p := &Peer{Addr: addr, conn: conn, inbox: make(chan Datagram, 4096), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		readLoop(conn, func(d Datagram) {
			p.mu.Lock()
			p.got = append(p.got, d)
			p.mu.Unlock()
			select {
			case p.inbox <- d:
			default: // nobody reads: the record is what counts
			}
		})
	}()
	return p, nil
}

// Close closes the socket and waits for its reader.
func (p *Peer) Close() error {
	err := p.conn.Close()
	<-p.done
	return err
}

// Received returns every datagram received so far.
func (p *Peer) Received() []Datagram {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Datagram(nil), p.got...)
}

// ReceivedBytes is the total size of what the socket received.
func (p *Peer) ReceivedBytes() int {
	n := 0
	for _, d := range p.Received() {
		n += len(d.Data)
	}
	return n
}

// Sent returns every datagram sent so far (From is the destination).
func (p *Peer) Sent() []Datagram {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Datagram(nil), p.sent...)
}

// SentBytes is the total size of what the socket sent.
func (p *Peer) SentBytes() int {
	n := 0
	for _, d := range p.Sent() {
		n += len(d.Data)
	}
	return n
}

// SendTo sends one datagram.
func (p *Peer) SendTo(b []byte, to netip.AddrPort) error {
	p.mu.Lock()
	p.sent = append(p.sent, Datagram{From: to, At: time.Now(), Data: append([]byte(nil), b...)})
	p.mu.Unlock()
	_, err := p.conn.WriteToUDPAddrPort(b, to)
	return err
}

// Probe sends a valid punch probe for pairingID to to.
func (p *Peer) Probe(to netip.AddrPort, pairingID [16]byte) error {
	return p.SendTo(Probe(pairingID), to)
}

// Probe returns a valid 128-byte punch probe: 0xF0 | pairing id | zeros.
func Probe(pairingID [16]byte) []byte {
	b := make([]byte, ProbeLen)
	b[0] = TypeProbe
	copy(b[1:], pairingID[:])
	return b
}

// Link is a secure.Link over a Peer's socket toward fixed targets. A silent
// link keeps the handshake's AuthFailed and Cancel notices to itself: an
// attacker who tests a guess has no reason to tell its victim that it
// failed.
type Link struct {
	p       *Peer
	silent  bool
	mu      sync.Mutex
	targets []netip.AddrPort
	closed  chan struct{}
	once    sync.Once
}

var _ secure.Link = (*Link)(nil)

// Link returns a link to targets. One link at a time may read a Peer.
func (p *Peer) Link(silent bool, targets ...netip.AddrPort) *Link {
	return &Link{p: p, silent: silent, targets: targets, closed: make(chan struct{})}
}

func (l *Link) Send(b []byte) error {
	if l.silent && len(b) > 0 && (b[0] == TypeAuthFailed || b[0] == TypeCancel) {
		return nil
	}
	l.mu.Lock()
	targets := append([]netip.AddrPort(nil), l.targets...)
	l.mu.Unlock()
	for _, t := range targets {
		_ = l.p.SendTo(b, t)
	}
	return nil
}

func (l *Link) Recv(buf []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-l.p.inbox:
		return copy(buf, d.Data), d.From, nil
	case <-l.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (l *Link) Confirm(from netip.AddrPort) {
	l.mu.Lock()
	l.targets = []netip.AddrPort{from}
	l.mu.Unlock()
}

func (l *Link) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Guess is the attacker's side of a handshake: the names it claims, and
// the password (and session key input) it guesses.
type Guess struct {
	Session    string
	Name, Peer string // the attacker's claimed name, and its victim's
	Password   []byte
	SessionKey []byte // the registered session's CPace input, if the attacker had it
}

// Role is the attacker's role: the side whose name sorts first initiates.
func (g Guess) Role() secure.Role { return secure.RoleFor(g.Name, g.Peer) }

// Handshake plays g's side of one handshake with the victim at targets
// until deadline, with RSA key key (the pool's). With a wrong guess it
// returns an error matching secure.ErrAuth once the victim's answer showed
// it wrong (an initiator tests its guess against the Reply's early tag). A
// silent link hides the attacker's failure notices from the victim.
func (p *Peer) Handshake(ctx context.Context, g Guess, key *rsa.PrivateKey, deadline time.Time, silent bool, targets ...netip.AddrPort) (*secure.Conn, error) {
	hs, err := secure.NewHandshaker(secure.Params{
		Role: g.Role(), Session: g.Session, LocalName: g.Name, PeerName: g.Peer,
		Password: g.Password, SessionKey: g.SessionKey, RSAKey: key,
		Retransmit: 100 * time.Millisecond, Keepalive: -1,
	})
	if err != nil {
		return nil, err
	}
	link := p.Link(silent, targets...)
	conn, err := hs.Run(ctx, link, deadline)
	hs.Close()
	if err != nil {
		link.Close()
	}
	return conn, err
}

// PRS is the handshake's password-related string for CPace:
// lv(password) || lv(session key input), LEB128 lengths.
func PRS(password, sessionKey []byte) []byte {
	return appendLV(appendLV(nil, password), sessionKey)
}

// CI is the handshake's channel identifier.
func CI(session, initiator, responder string) []byte {
	var ci []byte
	for _, s := range []string{"p2pcat v2", session, initiator, responder} {
		ci = appendLV(ci, []byte(s))
	}
	return ci
}

func appendLV(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// ForgeHello builds a valid Hello from the wire bytes: a random handshake
// id, key's modulus, and a CPace share under g's guess. A responder that
// took it would answer with a Reply that tests the guess.
func ForgeHello(g Guess, key *rsa.PrivateKey) []byte {
	var hsid [16]byte
	rand.Read(hsid[:])
	pk := key.N.Bytes()
	ad := sha256.Sum256(pk)
	_, ya, err := cpace.Start(PRS(g.Password, g.SessionKey), CI(g.Session, g.Name, g.Peer), hsid[:], ad[:], rand.Reader)
	if err != nil {
		panic("attacker: cpace: " + err.Error()) // only an empty password fails
	}
	b := []byte{TypeHello}
	b = append(b, hsid[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(pk)))
	b = append(b, pk...)
	return append(b, ya...)
}

// RandomShare returns a valid CPace share (a canonical ristretto255
// element that is not the identity) unrelated to any password.
func RandomShare() []byte {
	var prs, sid [32]byte
	rand.Read(prs[:])
	rand.Read(sid[:])
	_, y, err := cpace.Start(prs[:], nil, sid[:], nil, rand.Reader)
	if err != nil {
		panic("attacker: cpace: " + err.Error())
	}
	return y
}

// Generator returns CPace's generator for the password-related string prs,
// channel identifier ci and session id sid, encoded: the password-derived
// group element that every share is a multiple of (a share with secret
// scalar 1).
func Generator(prs, ci, sid []byte) []byte {
	one := make([]byte, 32)
	one[0] = 1
	_, g, err := cpace.Start(prs, ci, sid, nil, &constReader{one})
	if err != nil {
		return nil
	}
	return g
}

type constReader struct{ b []byte }

func (r *constReader) Read(p []byte) (int, error) {
	if len(p) > len(r.b) {
		return 0, errors.New("constReader: short")
	}
	return copy(p, r.b), nil
}
