package secure

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"
)

// connPair returns two Conns joined by a memNet, keyed directly (no
// handshake), without keepalives.
func connPair(t testing.TB, seed uint64) (*memNet, *memLink, *memLink, *Conn, *Conn) {
	n, la, lb := newMemPair(seed)
	k1, k2 := make([]byte, 32), make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	a, b := connPairOn(t, la, lb, k1, k2)
	return n, la, lb, a, b
}

// connPairOn keys two Conns over la and lb with 32-byte keys k1 and k2,
// closed by t's cleanup.
func connPairOn(t testing.TB, la, lb *memLink, k1, k2 []byte) (*Conn, *Conn) {
	a, err := newConn(la, testID, dirKeys{k1, k2}, dirKeys{k2, k1}, lb.source(), -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newConn(lb, testID, dirKeys{k2, k1}, dirKeys{k1, k2}, la.source(), -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// interceptor holds back what one side sends, so a test can replay,
// corrupt or reorder it.
type interceptor struct {
	mu   sync.Mutex
	from *memLink
	on   bool
	got  [][]byte
}

func (ic *interceptor) tap(from *memLink, b []byte) [][]byte {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.on && from == ic.from {
		ic.got = append(ic.got, b)
		return nil
	}
	return [][]byte{b}
}

func (ic *interceptor) hold(on bool) [][]byte {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	ic.on = on
	got := ic.got
	ic.got = nil
	return got
}

func recvOne(t *testing.T, c *Conn) []byte {
	t.Helper()
	buf := make([]byte, c.MaxPayload())
	n, err := c.Recv(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func counterOf(p []byte) uint64 { return binary.BigEndian.Uint64(p[1:dataHeaderSize]) }

func TestBadPacketsDroppedAndCounted(t *testing.T) {
	n, la, lb, a, b := connPair(t, 1)
	ic := &interceptor{from: la}
	n.setTap(ic.tap)
	from := la.source()

	if err := a.Send([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(t, b); string(got) != "one" {
		t.Fatalf("got %q", got)
	}

	ic.hold(true)
	a.Send([]byte("two"))
	a.seal(typeKeepalive, nil, nil)
	held := ic.hold(false)
	if len(held) != 2 {
		t.Fatalf("held %d packets", len(held))
	}
	two, keepalive := held[0], held[1]

	_, _, _, other, _ := connPair(t, 2) // same format, different keys

	flipped := bytes.Clone(two)
	flipped[dataHeaderSize+1] ^= 0x04
	headerChanged := bytes.Clone(two)
	headerChanged[dataHeaderSize-1] ^= 0x10 // counter 1 -> 17: the header is authenticated
	typeChanged := bytes.Clone(keepalive)
	typeChanged[0] = typeData // a keepalive cannot pass as data
	random := make([]byte, 60)
	rand.Read(random)
	random[0] = typeData
	binary.BigEndian.PutUint64(random[1:], 200) // a fresh counter, so it reaches authentication
	otherKey := sealWith(t, other, []byte("two"), 7)
	keepaliveWithPayload := append(bytes.Clone(keepalive), 0)

	inject := func(p []byte) { lb.inject(from, p) }
	// Forged: fail authentication.
	for _, p := range [][]byte{flipped, headerChanged, typeChanged, random, otherKey} {
		inject(p)
	}
	// Malformed.
	for _, p := range [][]byte{{}, {typeData}, two[:dataHeaderSize+gcmTagSize-1], {0x42, 1, 2, 3}, keepaliveWithPayload, make([]byte, maxDatagram+1)} {
		inject(p)
	}
	inject(two)
	inject(keepalive)
	// Replayed.
	inject(two)
	inject(keepalive)

	if got := recvOne(t, b); string(got) != "two" {
		t.Fatalf("first payload after the bad packets: %q", got)
	}
	if err := a.Send([]byte("three")); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(t, b); string(got) != "three" {
		t.Fatalf("got %q, want three (keepalive and replays must not be returned)", got)
	}
	want := Stats{Sealed: 0, Opened: 4, Forged: 5, Replayed: 2, Malformed: 6}
	got := b.Stats()
	got.Sealed = 0
	if got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

// sealWith seals p under c's send key with the given counter.
func sealWith(t *testing.T, c *Conn, p []byte, counter uint64) []byte {
	t.Helper()
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], counter)
	hdr := make([]byte, dataHeaderSize)
	hdr[0] = typeData
	binary.BigEndian.PutUint64(hdr[1:], counter)
	return c.sendAEAD.Seal(hdr, nonce[:], p, bytes.Clone(hdr))
}

func TestReorderAndReplayWindow(t *testing.T) {
	n, la, lb, a, b := connPair(t, 3)
	ic := &interceptor{from: la}
	n.setTap(ic.tap)
	from := la.source()

	ic.hold(true)
	for i := range 10 {
		a.Send([]byte{byte(i)})
	}
	held := ic.hold(false)
	for i := len(held) - 1; i >= 0; i-- {
		lb.inject(from, held[i])
	}
	for i := 9; i >= 0; i-- {
		if got := recvOne(t, b); len(got) != 1 || got[0] != byte(i) {
			t.Fatalf("got %v, want [%d]", got, i)
		}
	}

	// Jump far ahead; the old packets fall out of the window.
	a.counter.Store(replayWindowSize + 100)
	a.Send([]byte("ahead"))
	if got := recvOne(t, b); string(got) != "ahead" {
		t.Fatalf("got %q", got)
	}
	for _, p := range held {
		lb.inject(from, p)
	}
	a.Send([]byte("last"))
	if got := recvOne(t, b); string(got) != "last" {
		t.Fatalf("got %q", got)
	}
	if s := b.Stats(); s.Replayed != 10 || s.Opened != 12 {
		t.Errorf("stats %+v, want 10 replayed, 12 opened", s)
	}
}

func TestNonceNeverReused(t *testing.T) {
	n, _, _, a, _ := connPair(t, 4)
	n.startCapture()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if i%10 == 0 {
					a.seal(typeKeepalive, nil, nil)
				} else if err := a.Send([]byte(fmt.Sprint(g, i))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for _, p := range n.capturedPackets() {
		c := counterOf(p)
		if seen[c] {
			t.Fatalf("counter %d used twice", c)
		}
		seen[c] = true
	}
	if len(seen) != 800 {
		t.Fatalf("%d distinct counters, want 800", len(seen))
	}
	for c := range uint64(800) {
		if !seen[c] {
			t.Fatalf("counter %d skipped", c)
		}
	}
}

func TestCounterExhaustion(t *testing.T) {
	n, _, _, a, b := connPair(t, 5)
	n.startCapture()
	a.counter.Store(rejectAfterMessages - 1)
	if err := a.Send([]byte("last one")); err != nil {
		t.Fatal(err)
	}
	if got := recvOne(t, b); string(got) != "last one" {
		t.Fatalf("got %q", got)
	}
	for range 3 {
		if err := a.Send([]byte("x")); !errors.Is(err, ErrCounterExhausted) {
			t.Fatalf("Send at the limit: %v, want ErrCounterExhausted", err)
		}
		if err := a.seal(typeKeepalive, nil, nil); !errors.Is(err, ErrCounterExhausted) {
			t.Fatalf("keepalive at the limit: %v", err)
		}
	}
	if got := len(n.capturedPackets()); got != 1 {
		t.Errorf("%d packets sent, want 1", got)
	}
}

func TestRoaming(t *testing.T) {
	_, la, lb, a, b := connPair(t, 6)
	a.Send([]byte("hello"))
	recvOne(t, b)
	if c := lb.confirmations(); len(c) != 0 {
		t.Fatalf("confirmed %v although the address did not change", c)
	}

	// A replayed packet and a forged one from elsewhere move nothing.
	n := la.net
	ic := &interceptor{from: la}
	n.setTap(ic.tap)
	ic.hold(true)
	a.Send([]byte("captured"))
	captured := ic.hold(false)[0]
	lb.inject(la.source(), captured)
	recvOne(t, b)
	elsewhere := netip.MustParseAddrPort("203.0.113.7:7777")
	lb.inject(elsewhere, captured)
	forged := bytes.Clone(captured)
	forged[len(forged)-1] ^= 1
	forged[8]++
	lb.inject(elsewhere, forged)

	roamed := netip.MustParseAddrPort("192.0.2.99:4444")
	la.moveTo(roamed)
	a.Send([]byte("from the new address"))
	if got := recvOne(t, b); string(got) != "from the new address" {
		t.Fatalf("got %q", got)
	}
	if c := lb.confirmations(); len(c) != 1 || c[0] != roamed {
		t.Fatalf("confirmed %v, want [%v]", c, roamed)
	}
}

func TestSizes(t *testing.T) {
	n, _, _, a, b := connPair(t, 7)
	n.startCapture()
	if a.MaxPayload() != 1175 {
		t.Errorf("MaxPayload = %d", a.MaxPayload())
	}
	if err := a.Send(make([]byte, a.MaxPayload()+1)); err == nil {
		t.Error("Send accepted more than MaxPayload")
	}
	full := bytes.Repeat([]byte{0xab}, a.MaxPayload())
	if err := a.Send(full); err != nil {
		t.Fatal(err)
	}
	if p := n.capturedPackets(); len(p) != 1 || len(p[0]) != maxDatagram {
		t.Errorf("a full payload made %d datagrams, first %d bytes", len(p), len(p[0]))
	}
	if got := recvOne(t, b); !bytes.Equal(got, full) {
		t.Error("full payload corrupted")
	}
	a.Send(nil) // empty data packets are legal
	if got := recvOne(t, b); len(got) != 0 {
		t.Errorf("empty payload came back as %d bytes", len(got))
	}
	a.Send(make([]byte, 100))
	if _, err := b.Recv(make([]byte, 10)); !errors.Is(err, io.ErrShortBuffer) {
		t.Errorf("short buffer: %v", err)
	}
}

func TestKeepalive(t *testing.T) {
	n, la, lb := newMemPair(8)
	keys := [2][]byte{make([]byte, 32), make([]byte, 32)}
	a, _ := newConn(la, testID, dirKeys{keys[0], keys[1]}, dirKeys{keys[1], keys[0]}, lb.source(), 20*time.Millisecond)
	b, _ := newConn(lb, testID, dirKeys{keys[1], keys[0]}, dirKeys{keys[0], keys[1]}, la.source(), -1)
	seen := make(chan struct{}, 100)
	n.setTap(func(_ *memLink, p []byte) [][]byte {
		if p[0] == typeKeepalive {
			select {
			case seen <- struct{}{}:
			default:
			}
		}
		return [][]byte{p}
	})
	a.run()
	defer a.Close()
	defer b.Close()
	for range 2 {
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
			t.Fatal("no keepalive within 5s")
		}
	}
	a.Send([]byte("data"))
	if got := recvOne(t, b); string(got) != "data" {
		t.Fatalf("got %q", got)
	}
	if s := b.Stats(); s.Opened < 3 {
		t.Errorf("stats %+v: keepalives not opened", s)
	}
}

func TestAuthFailedNotice(t *testing.T) {
	hello := []byte("the hello")
	notice := (&authFailed{id: testID, hello: refOf(hello), failed: refOf([]byte("x"))}).marshal()
	stray := (&authFailed{id: testID, hello: refOf([]byte("other")), failed: refOf([]byte("y"))}).marshal()

	t.Run("before the peer is heard", func(t *testing.T) {
		_, la, lb, a, b := connPair(t, 9)
		b.refs = []ref{refOf(hello)}
		lb.inject(la.source(), stray) // names nothing of ours: ignored
		lb.inject(la.source(), notice)
		a.Send([]byte("too late"))
		if _, err := b.Recv(make([]byte, 100)); !errors.Is(err, ErrAuth) {
			t.Fatalf("Recv = %v, want ErrAuth", err)
		}
	})
	t.Run("after the peer is heard", func(t *testing.T) {
		_, la, lb, a, b := connPair(t, 10)
		b.refs = []ref{refOf(hello)}
		a.Send([]byte("authentic"))
		recvOne(t, b)
		lb.inject(la.source(), notice)
		a.Send([]byte("still here"))
		if got := recvOne(t, b); string(got) != "still here" {
			t.Fatalf("got %q", got)
		}
	})
}

// TestClosedConnIsGarbage: a Conn that sent, received and was closed is
// freed by the next GC. While each Conn had its own sync.Pool of seal
// buffers, the runtime's list of pools kept it (and its link) alive one GC
// cycle more, and FuzzConnRecv's worker, which makes a pair per input,
// grew until it was killed.
func TestClosedConnIsGarbage(t *testing.T) {
	conn, link := func() (weak.Pointer[Conn], weak.Pointer[memLink]) {
		_, la, lb := newMemPairDepth(1, 4)
		k1, k2 := make([]byte, 32), make([]byte, 32)
		k2[0] = 1
		a, err := newConn(la, testID, dirKeys{k1, k2}, dirKeys{k2, k1}, lb.source(), -1)
		if err != nil {
			t.Fatal(err)
		}
		b, err := newConn(lb, testID, dirKeys{k2, k1}, dirKeys{k1, k2}, la.source(), -1)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Send([]byte("x")); err != nil {
			t.Fatal(err)
		}
		recvOne(t, b)
		a.Close()
		b.Close()
		return weak.Make(a), weak.Make(la)
	}()
	runtime.GC()
	if conn.Value() != nil || link.Value() != nil {
		t.Fatalf("after Close and one GC: Conn alive %v, its link alive %v", conn.Value() != nil, link.Value() != nil)
	}
}

// FuzzConnRecv feeds an arbitrary datagram, then a genuine one, to a Conn:
// Recv must return exactly the genuine payload. Each input gets a fresh
// pair over short queues (the default 1024-datagram ones cost megabytes
// per input) with fixed keys: random ones made coverage differ from run to run
// of one input, and the engine kept re-minimizing the same input.
func FuzzConnRecv(f *testing.F) {
	var fuzzKeys [2][32]byte
	fuzzKeys[1][0] = 1
	f.Add([]byte{typeData, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{typeKeepalive, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add([]byte{typeFinish, 1})
	f.Add((&authFailed{id: testID}).marshal())
	f.Add(append([]byte{typeDataHead, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3}, make([]byte, 40)...))
	f.Add(append([]byte{typeDataHead, 0, 0, 0, 0, 0, 0, 0, 0, 200}, make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, la, lb := newMemPairDepth(11, 4) // b receives two datagrams
		a, b := connPairOn(t, la, lb, fuzzKeys[0][:], fuzzKeys[1][:])
		lb.inject(la.source(), pkt)
		if err := a.Send([]byte("genuine")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, b.MaxPayload())
		room := make([]byte, 2*maxDatagram)
		n, body, err := b.RecvPlaced(buf, func(head []byte, bodyLen int) []byte {
			if len(head) < 1 || len(head) > maxHeadLen || bodyLen < headSampleSize || bodyLen > len(room) {
				t.Fatalf("place(%d-byte head, %d-byte body)", len(head), bodyLen)
			}
			return room[:bodyLen]
		})
		if err != nil || body != nil || string(buf[:n]) != "genuine" {
			t.Fatalf("RecvPlaced = %q, body %v, %v", buf[:n], body != nil, err)
		}
	})
}
