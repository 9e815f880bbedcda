package secure

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

var testID = handshakeID{0x7e, 0x4b, 0x47, 0x91, 0xd6, 0xa8, 0xef, 0x01, 0x9b, 0x93, 0x6c, 0x79, 0xfb, 0x7f, 0x2c, 0x57}

const testPassword = "correct horse battery staple"

// testParams returns fast settings: 1024-bit keys, short retransmits, no
// keepalives, and a timeout that bounds every test.
func testParams(role Role, password string) Params {
	p := Params{
		Role:            role,
		Session:         "backup-job",
		LocalName:       "alice",
		PeerName:        "bob",
		Password:        []byte(password),
		Timeout:         10 * time.Second,
		Retransmit:      20 * time.Millisecond,
		Keepalive:       -1,
		testOnlyRSABits: 1024,
	}
	if role == Responder {
		p.LocalName, p.PeerName = p.PeerName, p.LocalName
	}
	return p
}

// endpoint is one side of a test session: the handshake result and, once
// established, a goroutine that feeds everything Recv returns into got.
type endpoint struct {
	conn    *Conn
	err     error
	got     chan []byte
	recvErr chan error
}

func (e *endpoint) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-e.got:
		return p
	case err := <-e.recvErr:
		t.Fatalf("Recv failed: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no payload within 5s")
	}
	return nil
}

func (e *endpoint) waitRecvErr(t *testing.T) error {
	t.Helper()
	select {
	case p := <-e.got:
		t.Fatalf("Recv returned payload %q, want an error", p)
	case err := <-e.recvErr:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Recv did not fail within 5s")
	}
	return nil
}

// handshakePair runs both handshakes concurrently and returns when both
// ended. An established side starts receiving at once, as a real session
// does, so it can answer the peer's late retransmissions. Cleanup closes
// the conns and waits for every goroutine.
func handshakePair(t *testing.T, li, lr Link, pi, pr Params) (ei, er *endpoint) {
	t.Helper()
	var pumps, handshakes sync.WaitGroup
	start := func(l Link, p Params) *endpoint {
		e := &endpoint{got: make(chan []byte, 1024), recvErr: make(chan error, 1)}
		handshakes.Add(1)
		go func() {
			defer handshakes.Done()
			e.conn, e.err = Handshake(t.Context(), l, p)
			if e.err != nil {
				return
			}
			pumps.Add(1)
			go func() {
				defer pumps.Done()
				buf := make([]byte, e.conn.MaxPayload())
				for {
					n, err := e.conn.Recv(buf)
					if err != nil {
						e.recvErr <- err
						return
					}
					e.got <- bytes.Clone(buf[:n])
				}
			}()
		}()
		return e
	}
	ei, er = start(li, pi), start(lr, pr)
	handshakes.Wait()
	t.Cleanup(func() {
		for _, e := range []*endpoint{ei, er} {
			if e.conn != nil {
				e.conn.Close()
			}
		}
		li.Close()
		lr.Close()
		pumps.Wait()
	})
	return ei, er
}

func checkTalk(t *testing.T, a, b *endpoint) {
	t.Helper()
	for i, dir := range []struct{ from, to *endpoint }{{a, b}, {b, a}} {
		msg := []byte(fmt.Sprintf("message %d", i))
		if err := dir.from.conn.Send(msg); err != nil {
			t.Fatal(err)
		}
		if got := dir.to.next(t); !bytes.Equal(got, msg) {
			t.Fatalf("received %q, want %q", got, msg)
		}
	}
}

func TestHandshakeClean(t *testing.T) {
	before := runtime.NumGoroutine()
	_, li, lr := newMemPair(1)
	ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	checkTalk(t, ei, er)

	// Each side confirmed the address the peer's packets came from.
	if c := li.confirmations(); len(c) == 0 || c[0] != lr.source() {
		t.Errorf("initiator confirmed %v, want %v first", c, lr.source())
	}
	if c := lr.confirmations(); len(c) == 0 || c[0] != li.source() {
		t.Errorf("responder confirmed %v, want %v first", c, li.source())
	}
	si, sr := ei.conn.Stats(), er.conn.Stats()
	if si.Sealed != 1 || sr.Opened != 1 || sr.Sealed != 1 || si.Opened != 1 {
		t.Errorf("stats: initiator %+v, responder %+v", si, sr)
	}

	ei.conn.Close()
	er.conn.Close()
	if err := ei.waitRecvErr(t); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Recv after Close: %v, want net.ErrClosed", err)
	}
	if err := ei.conn.Send([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close: %v, want net.ErrClosed", err)
	}
	er.waitRecvErr(t)
	checkNoLeak(t, before)
}

// checkNoLeak waits, boundedly, for the goroutine count to fall back to
// before: goroutines that signalled their end may still be unwinding.
func checkNoLeak(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

func TestHandshakeLossyLink(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			n, li, lr := newMemPair(seed)
			n.impair(0.3, 0.3, 0.3)
			ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
			if ei.err != nil || er.err != nil {
				t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
			}
			n.impair(0, 0, 0)
			checkTalk(t, ei, er)
		})
	}
}

func TestHandshakeDefaultKeySize(t *testing.T) {
	pi, pr := testParams(Initiator, testPassword), testParams(Responder, testPassword)
	pi.testOnlyRSABits, pr.testOnlyRSABits = 0, 0
	n, li, lr := newMemPair(2)
	n.startCapture()
	ei, er := handshakePair(t, li, lr, pi, pr)
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	checkTalk(t, ei, er)
	hello, err := parseHello(n.capturedPackets()[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(hello.pk) != DefaultRSABits/8 {
		t.Errorf("default key has %d bytes, want %d", len(hello.pk), DefaultRSABits/8)
	}
}

// TestHandshake4096FitsDatagram runs the handshake with 4096-bit keys and
// checks that no datagram exceeds 1200 bytes.
func TestHandshake4096FitsDatagram(t *testing.T) {
	if testing.Short() {
		t.Skip("generates two 4096-bit RSA keys")
	}
	keys := make([]*rsa.PrivateKey, 2)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 4096)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	pi, pr := testParams(Initiator, testPassword), testParams(Responder, testPassword)
	pi.testOnlyRSABits, pr.testOnlyRSABits = 0, 0
	pi.RSABits, pr.RSABits = 4096, 4096
	pi.RSAKey, pr.RSAKey = keys[0], keys[1]
	n, li, lr := newMemPair(3)
	n.startCapture()
	ei, er := handshakePair(t, li, lr, pi, pr)
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	checkTalk(t, ei, er)
	largest := 0
	for _, p := range n.capturedPackets() {
		largest = max(largest, len(p))
	}
	if largest > maxDatagram {
		t.Errorf("largest datagram %d bytes, limit %d", largest, maxDatagram)
	}
	t.Logf("largest datagram with 4096-bit keys: %d bytes", largest)
}

// TestFinishedLostAnsweredByConn drops the first Finished: the initiator
// retransmits Finish, and the responder's Conn answers from its receive path.
func TestFinishedLostAnsweredByConn(t *testing.T) {
	n, li, lr := newMemPair(7)
	var mu sync.Mutex
	dropped := 0
	n.setTap(func(_ *memLink, b []byte) [][]byte {
		mu.Lock()
		defer mu.Unlock()
		if b[0] == typeFinished && dropped == 0 {
			dropped++
			return nil
		}
		return [][]byte{b}
	})
	ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	if dropped != 1 {
		t.Fatalf("dropped %d Finished", dropped)
	}
	if s := er.conn.Stats(); s.Handshake == 0 {
		t.Errorf("responder Conn saw no late handshake packet: %+v", s)
	}
	checkTalk(t, ei, er)
}

// TestEarlyDataCompletesInitiator drops every Finished; the responder's
// first data packet proves it holds the keys and completes the initiator,
// and that payload is the first Recv.
func TestEarlyDataCompletesInitiator(t *testing.T) {
	n, li, lr := newMemPair(8)
	n.setTap(func(_ *memLink, b []byte) [][]byte {
		if b[0] == typeFinished {
			return nil
		}
		return [][]byte{b}
	})
	pi, pr := testParams(Initiator, testPassword), testParams(Responder, testPassword)
	var ci *Conn
	var errI error
	var wg sync.WaitGroup
	wg.Go(func() { ci, errI = Handshake(t.Context(), li, pi) })
	cr, err := Handshake(t.Context(), lr, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer cr.Close()
	if err := cr.Send([]byte("first")); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errI != nil {
		t.Fatal(errI)
	}
	defer ci.Close()
	buf := make([]byte, ci.MaxPayload())
	nr, err := ci.Recv(buf)
	if err != nil || string(buf[:nr]) != "first" {
		t.Fatalf("Recv = %q, %v", buf[:nr], err)
	}
}

// A second, different Hello (a stray initiator or an attacker's guess) is
// ignored: the responder answers only the first.
func TestResponderAnswersFirstHelloOnly(t *testing.T) {
	_, li, lr := newMemPair(9)
	stray := &hello{id: testID, pk: mustKey(t).N.Bytes(), ya: otherElement(t)}
	otherPairing := &hello{id: handshakeID{1}, pk: mustKey(t).N.Bytes(), ya: otherElement(t)}
	pi := testParams(Initiator, testPassword)
	var ei, er *endpoint
	// The real Hello goes first (Handshake sends it before reading); the
	// stray ones are queued behind it.
	ei, er = handshakePairWithInjection(t, li, lr, pi, testParams(Responder, testPassword), func() {
		lr.inject(netip.MustParseAddrPort("203.0.113.9:9"), stray.marshal())
		lr.inject(netip.MustParseAddrPort("203.0.113.9:9"), otherPairing.marshal())
	})
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	checkTalk(t, ei, er)
}

// handshakePairWithInjection is handshakePair with a hook that runs once
// the initiator's Hello is on the wire.
func handshakePairWithInjection(t *testing.T, li, lr *memLink, pi, pr Params, inject func()) (*endpoint, *endpoint) {
	var once sync.Once
	li.net.setTap(func(_ *memLink, b []byte) [][]byte {
		if b[0] == typeHello {
			// Deliver the real Hello first, then the injected ones.
			lr.inject(li.source(), b)
			once.Do(inject)
			return nil
		}
		return [][]byte{b}
	})
	return handshakePair(t, li, lr, pi, pr)
}

func mustKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestHandshakeTimeoutAndCancel(t *testing.T) {
	t.Run("silent peer", func(t *testing.T) {
		_, li, lr := newMemPair(10)
		defer lr.Close()
		p := testParams(Initiator, testPassword)
		p.Timeout = 200 * time.Millisecond
		_, err := Handshake(t.Context(), li, p)
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrAuth) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if _, _, err := li.Recv(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("link not closed after timeout: %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		_, li, lr := newMemPair(11)
		defer lr.Close()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := Handshake(ctx, li, testParams(Responder, testPassword))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want Canceled", err)
		}
	})
}

// TestHandshakeFollowsNewSourceAddress: the initiator's Finish comes from
// an address the responder has not seen (a NAT rebinding); it is accepted
// because it authenticates, and the new address is confirmed to the link.
func TestHandshakeFollowsNewSourceAddress(t *testing.T) {
	n, li, lr := newMemPair(13)
	moved := netip.MustParseAddrPort("192.0.2.50:5555")
	n.setTap(func(from *memLink, b []byte) [][]byte {
		if from == li && b[0] == typeFinish {
			from.moveTo(moved)
		}
		return [][]byte{b}
	})
	ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	if c := lr.confirmations(); len(c) != 1 || c[0] != moved {
		t.Errorf("responder confirmed %v, want [%v]", c, moved)
	}
	checkTalk(t, ei, er)
}

// Direct mode (Params.OnlyFrom): a Hello from another address neither gets
// an answer nor takes the responder's one answer; the real peer, from the
// configured address, connects. A version 1 handshake message from the
// configured address ends the handshake with ErrPeerVersion.
func TestOnlyFrom(t *testing.T) {
	t.Run("forged hello elsewhere", func(t *testing.T) {
		_, li, lr := newMemPair(22)
		forger := netip.MustParseAddrPort("203.0.113.66:4444")
		// The forger's Hello arrives first: without OnlyFrom it would take
		// the responder's one answer and the real initiator would time out.
		fk := mustKey(t)
		_, ya, err := cpace.Start([]byte("guess"), []byte("ci"), make([]byte, 16), adOf(fk.N.Bytes()), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		forged := &hello{id: handshakeID{9}, pk: fk.N.Bytes()}
		copy(forged.ya[:], ya)
		lr.inject(forger, forged.marshal())
		pi, pr := testParams(Initiator, testPassword), testParams(Responder, testPassword)
		pr.OnlyFrom = li.source()
		ei, er := handshakePair(t, li, lr, pi, pr)
		if ei.err != nil || er.err != nil {
			t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
		}
		checkTalk(t, ei, er)
	})
	t.Run("v1 peer", func(t *testing.T) {
		_, li, lr := newMemPair(23)
		defer li.Close()
		pr := testParams(Responder, testPassword)
		pr.OnlyFrom = li.source()
		v1Hello := append([]byte{0xE1}, make([]byte, 16+2+128+32)...)
		lr.inject(li.source(), v1Hello)
		_, err := Handshake(t.Context(), lr, pr)
		if !errors.Is(err, ErrPeerVersion) {
			t.Fatalf("err = %v, want ErrPeerVersion", err)
		}
	})
}

// A Handshaker goes on over a new link when an attempt's link carried it
// only part of the way (the pipe's punch attempts): the initiator sends the
// same Hello again, the responder answers it with the same Reply (never a
// second, different one: one guess per run), and the second attempt
// completes.
func TestHandshakerGoesOnAcrossLinks(t *testing.T) {
	hi, err := NewHandshaker(testParams(Initiator, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	hr, err := NewHandshaker(testParams(Responder, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer hi.Close()
	defer hr.Close()
	var mu sync.Mutex
	hellos, replies := map[string]bool{}, map[string]bool{}
	record := func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		switch b[0] {
		case typeHello:
			hellos[string(b)] = true
		case typeReply:
			replies[string(b)] = true
		}
	}
	// Attempt 1: Replies are lost.
	n1, li1, lr1 := newMemPair(31)
	n1.setTap(func(_ *memLink, b []byte) [][]byte {
		record(b)
		if b[0] == typeReply {
			return nil
		}
		return [][]byte{b}
	})
	deadline := time.Now().Add(500 * time.Millisecond)
	errs := make(chan error, 2)
	go func() { _, err := hi.Run(t.Context(), li1, deadline); errs <- err }()
	go func() { _, err := hr.Run(t.Context(), lr1, deadline); errs <- err }()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrAttemptTimeout) {
			t.Fatalf("attempt 1: %v, want ErrAttemptTimeout", err)
		}
	}
	if !hr.Answered() || hi.HasKeys() {
		t.Fatalf("after attempt 1: responder answered %v, initiator has keys %v; want true, false", hr.Answered(), hi.HasKeys())
	}
	// Attempt 2: a new link, which carries everything.
	n2, li2, lr2 := newMemPair(32)
	n2.setTap(func(_ *memLink, b []byte) [][]byte { record(b); return [][]byte{b} })
	type result struct {
		c   *Conn
		err error
	}
	ri, rr := make(chan result, 1), make(chan result, 1)
	deadline = time.Now().Add(5 * time.Second)
	go func() { c, err := hi.Run(t.Context(), li2, deadline); ri <- result{c, err} }()
	go func() { c, err := hr.Run(t.Context(), lr2, deadline); rr <- result{c, err} }()
	a, b := <-ri, <-rr
	if a.err != nil || b.err != nil {
		t.Fatalf("attempt 2: initiator %v, responder %v", a.err, b.err)
	}
	defer a.c.Close()
	defer b.c.Close()
	if err := hr.Close(); err != nil {
		t.Fatalf("responder's Close after success: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hellos) != 1 || len(replies) != 1 {
		t.Fatalf("%d different Hellos and %d different Replies over the two attempts, want 1 and 1", len(hellos), len(replies))
	}
}
