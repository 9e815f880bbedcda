package attacker

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
)

// Side names one end of a Middle's path.
type Side int

const (
	A Side = iota
	B
)

func (s Side) other() Side { return 1 - s }

func (s Side) String() string {
	if s == A {
		return "A"
	}
	return "B"
}

// Middle is a man in the middle of a direct-mode peer path. Peer A is told
// that its peer is at FaceA, and B that its peer is at FaceB; what A sends
// to FaceA is handed to the Hook, which decides what B gets (from FaceB),
// and the other way round. The default hook forwards everything.
//
// When the hook alters a handshake message in transit (Substitute), the
// Middle remembers both messages' refs and rewrites the ref fields of every
// later handshake message, both ways, to the ref its receiver knows: each
// side then names the messages as it saw them, and only the cryptography
// can tell that something was changed.
type Middle struct {
	addr [2]netip.AddrPort // the peers' own addresses
	face [2]*net.UDPConn   // face[s] is where s sends
	hook Hook
	mu   sync.Mutex
	got  []Passing
	refs []refPair
	wg   sync.WaitGroup
}

// Hook decides the fate of a datagram that from sent toward its peer.
type Hook func(m *Middle, from Side, pkt []byte)

// Passing is a datagram as it arrived at the Middle, before the hook.
type Passing struct {
	From Side
	Datagram
}

// refPair: a handshake message that sender sent as one message and the
// Middle delivered as another.
type refPair struct {
	sender         Side
	sent, received [16]byte
}

// StartMiddle starts a middle between peers at a and b.
func StartMiddle(a, b netip.AddrPort, hook Hook) (*Middle, error) {
	m := &Middle{addr: [2]netip.AddrPort{a, b}, hook: hook}
	for s := range m.face {
		c, _, err := listenLoopback()
		if err != nil {
			m.Close()
			return nil, err
		}
		m.face[s] = c
	}
	for s := range m.face {
		side := Side(s)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			readLoop(m.face[side], func(d Datagram) { m.arrive(side, d) })
		}()
	}
	return m, nil
}

// Face returns the address side s is told its peer has.
func (m *Middle) Face(s Side) netip.AddrPort {
	return m.face[s].LocalAddr().(*net.UDPAddr).AddrPort()
}

func (m *Middle) arrive(s Side, d Datagram) {
	if d.From != m.addr[s] {
		return // not the peer this face serves
	}
	m.mu.Lock()
	m.got = append(m.got, Passing{From: s, Datagram: d})
	hook := m.hook
	m.mu.Unlock()
	if hook == nil {
		m.Deliver(s, d.Data)
		return
	}
	hook(m, s, d.Data)
}

// Deliver sends pkt, sent by from, to the other side (with its ref fields
// rewritten as that side knows the messages they name).
func (m *Middle) Deliver(from Side, pkt []byte) {
	to := from.other()
	out := m.translate(from, pkt)
	_, _ = m.face[to].WriteToUDPAddrPort(out, m.addr[to])
}

// Reflect sends pkt back to the side that sent it, from the address where
// that side believes its peer is.
func (m *Middle) Reflect(from Side, pkt []byte) {
	_, _ = m.face[from].WriteToUDPAddrPort(pkt, m.addr[from])
}

// Inject sends pkt to side to as if its peer had sent it, as is.
func (m *Middle) Inject(to Side, pkt []byte) {
	_, _ = m.face[to].WriteToUDPAddrPort(pkt, m.addr[to])
}

// Substitute delivers altered in place of orig, which from sent, and
// remembers the substitution for the ref fields of later messages.
func (m *Middle) Substitute(from Side, orig, altered []byte) {
	m.mu.Lock()
	m.refs = append(m.refs, refPair{sender: from, sent: Ref(orig), received: Ref(m.translateLocked(from, altered))})
	m.mu.Unlock()
	m.Deliver(from, altered)
}

func (m *Middle) translate(from Side, pkt []byte) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.translateLocked(from, pkt)
	if !bytes.Equal(out, pkt) {
		m.refs = append(m.refs, refPair{sender: from, sent: Ref(pkt), received: Ref(out)})
	}
	return out
}

// translateLocked rewrites each ref field of a message from from: a ref
// that names a message as from knows it becomes the ref of that message
// as the receiver knows it.
func (m *Middle) translateLocked(from Side, pkt []byte) []byte {
	offs := refFields(pkt)
	if len(offs) == 0 || len(m.refs) == 0 {
		return pkt
	}
	out := append([]byte(nil), pkt...)
	for _, off := range offs {
		r := [16]byte(out[off : off+16])
		for _, p := range m.refs {
			known, theirs := p.sent, p.received // from sent that message
			if p.sender != from {
				known, theirs = p.received, p.sent // from received it
			}
			if r == known {
				copy(out[off:], theirs[:])
				break
			}
		}
	}
	return out
}

// Captured returns what arrived so far, in order.
func (m *Middle) Captured() []Passing {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Passing(nil), m.got...)
}

// SetHook replaces the hook.
func (m *Middle) SetHook(h Hook) {
	m.mu.Lock()
	m.hook = h
	m.mu.Unlock()
}

// Close closes both faces and waits for the goroutines.
func (m *Middle) Close() error {
	for _, c := range m.face {
		if c != nil {
			c.Close()
		}
	}
	m.wg.Wait()
	return nil
}
