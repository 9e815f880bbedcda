package attacker

import (
	"net"
	"net/netip"
	"sync"
)

// Tap sits between clients and an honest rendezvous server like a NAT
// with address-dependent filtering, and captures every datagram that
// crosses it: a passive observer of the client-server path. Clients are
// given Addr as their server; each client address gets its own upstream
// socket (its "public" address), which keeps it for as long as the Tap
// lives, so that two runs from the same client port look the same to the
// server. Upstream sockets pass on only what comes from the server (its
// answers and relayed datagrams); peers reach each other directly.
type Tap struct {
	Addr netip.AddrPort
	face *net.UDPConn

	mu     sync.Mutex
	server netip.AddrPort
	flows  map[netip.AddrPort]*net.UDPConn
	got    []Captured
	notify func(Captured)
	closed bool
	wg     sync.WaitGroup
}

// Captured is one datagram that crossed the tap.
type Captured struct {
	ToServer bool           // from a client to the server; else the server's to a client
	Client   netip.AddrPort // the client's own address
	Public   netip.AddrPort // the client's address as the server sees it
	Datagram
}

// StartTap starts a tap in front of server. notify, if not nil, sees each
// captured datagram as it passes (on the tap's goroutines).
func StartTap(server netip.AddrPort, notify func(Captured)) (*Tap, error) {
	face, addr, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	t := &Tap{Addr: addr, face: face, server: server, flows: map[netip.AddrPort]*net.UDPConn{}, notify: notify}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		readLoop(face, t.fromClient)
	}()
	return t, nil
}

// SetServer points the tap at another server (a restarted one); the
// clients' public addresses stay.
func (t *Tap) SetServer(s netip.AddrPort) {
	t.mu.Lock()
	t.server = s
	t.mu.Unlock()
}

func (t *Tap) fromClient(d Datagram) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	up := t.flows[d.From]
	if up == nil {
		var err error
		if up, _, err = listenLoopback(); err != nil {
			t.mu.Unlock()
			return
		}
		t.flows[d.From] = up
		client := d.From
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			readLoop(up, func(r Datagram) { t.fromUpstream(client, up, r) })
		}()
	}
	server := t.server
	t.mu.Unlock()
	t.record(Captured{ToServer: true, Client: d.From, Public: up.LocalAddr().(*net.UDPAddr).AddrPort(), Datagram: d})
	_, _ = up.WriteToUDPAddrPort(d.Data, server)
}

func (t *Tap) fromUpstream(client netip.AddrPort, up *net.UDPConn, d Datagram) {
	t.mu.Lock()
	server := t.server
	t.mu.Unlock()
	if d.From != server {
		return // the NAT's filter
	}
	t.record(Captured{Client: client, Public: up.LocalAddr().(*net.UDPAddr).AddrPort(), Datagram: d})
	_, _ = t.face.WriteToUDPAddrPort(d.Data, client)
}

func (t *Tap) record(c Captured) {
	t.mu.Lock()
	t.got = append(t.got, c)
	notify := t.notify
	t.mu.Unlock()
	if notify != nil {
		notify(c)
	}
}

// Captured returns what crossed the tap so far.
func (t *Tap) Captured() []Captured {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Captured(nil), t.got...)
}

// Take returns what crossed the tap so far and forgets it.
func (t *Tap) Take() []Captured {
	t.mu.Lock()
	defer t.mu.Unlock()
	got := t.got
	t.got = nil
	return got
}

// Close closes every socket and waits for the tap's goroutines.
func (t *Tap) Close() error {
	t.mu.Lock()
	t.closed = true
	err := t.face.Close()
	for _, up := range t.flows {
		up.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return err
}
