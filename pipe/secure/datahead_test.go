package secure

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"testing"
)

// splitPayloads returns head/body pairs of every shape SendSplitBatch
// meets: DataHead-eligible ones (1 to 32 bytes of head, a body of at least
// 16), and ones that must go as Data (no body, a long head, a short body,
// an empty head). limit is the largest payload: a DataHead packet of
// limit-1 bytes is as long as a Data packet of limit bytes.
func splitPayloads(limit int) (heads, bodies [][]byte) {
	add := func(h, b int) {
		head := make([]byte, h)
		rand.Read(head)
		var body []byte
		if b >= 0 {
			body = make([]byte, b)
			rand.Read(body)
		}
		heads, bodies = append(heads, head), append(bodies, body)
	}
	for _, hb := range [][2]int{{12, 1000}, {1, 16}, {16, 500}, {17, 500}, {32, 1100}, {9, limit - 10}} {
		add(hb[0], hb[1]) // DataHead
	}
	for _, hb := range [][2]int{{50, -1}, {33, 100}, {10, 15}, {0, 100}} {
		add(hb[0], hb[1]) // Data
	}
	return heads, bodies
}

// TestDataHeadRoundTrip: split payloads go out as DataHead packets when
// they qualify (else as Data), the head never appears in clear on the
// wire, and the receiver gets head ‖ body through Recv, or the head in buf
// and the body where place said through RecvPlaced.
func TestDataHeadRoundTrip(t *testing.T) {
	for _, placed := range []bool{false, true} {
		n, la, _, a, b := connPair(t, 7)
		limit := a.MaxPayload() // what the in-memory link carries
		heads, bodies := splitPayloads(limit)
		sent := capture(n, la)
		if err := a.SendSplitBatch(heads, bodies); err != nil {
			t.Fatal(err)
		}
		for i, d := range *sent {
			want := typeData
			if splittable(heads[i], bodies[i]) {
				want = typeDataHead
				if bytes.Contains(d, heads[i]) && len(heads[i]) >= 8 {
					t.Errorf("payload %d: head in clear on the wire", i)
				}
			}
			if d[0] != want {
				t.Errorf("payload %d (%d+%d bytes) sent as %#x, want %#x", i, len(heads[i]), len(bodies[i]), d[0], want)
			}
		}
		buf := make([]byte, limit)
		for i := range heads {
			whole := append(bytes.Clone(heads[i]), bodies[i]...)
			if !placed {
				if got := recvOne(t, b); !bytes.Equal(got, whole) {
					t.Fatalf("payload %d: got %d bytes, want %d", i, len(got), len(whole))
				}
				continue
			}
			room := make([]byte, 70000)
			var asked []byte
			n, body, err := b.RecvPlaced(buf, func(head []byte, bodyLen int) []byte {
				asked = bytes.Clone(head)
				return room[100 : 100+bodyLen]
			})
			if err != nil {
				t.Fatal(err)
			}
			if !splittable(heads[i], bodies[i]) {
				if body != nil || !bytes.Equal(buf[:n], whole) {
					t.Fatalf("Data payload %d: body %v, payload differs", i, body != nil)
				}
				continue
			}
			if !bytes.Equal(asked, heads[i]) || !bytes.Equal(buf[:n], heads[i]) {
				t.Fatalf("payload %d: head %x given to place, %x returned, want %x", i, asked, buf[:n], heads[i])
			}
			if !bytes.Equal(body, bodies[i]) || &body[0] != &room[100] {
				t.Fatalf("payload %d: body not opened where place said", i)
			}
		}
	}
}

// TestDataHeadRefusedPlacement: when place returns nil (or the wrong
// length), the body follows the head in buf.
func TestDataHeadRefusedPlacement(t *testing.T) {
	_, _, _, a, b := connPair(t, 8)
	head, body := []byte("0123456789"), bytes.Repeat([]byte("b"), 1000)
	for _, ret := range [][]byte{nil, make([]byte, 10)} {
		if err := a.SendSplitBatch([][]byte{head}, [][]byte{body}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, a.PayloadLimit())
		n, got, err := b.RecvPlaced(buf, func([]byte, int) []byte { return ret })
		if err != nil || got != nil || !bytes.Equal(buf[:n], append(bytes.Clone(head), body...)) {
			t.Fatalf("refused placement: n=%d body=%v err=%v", n, got != nil, err)
		}
	}
}

// TestDataHeadTampering: changing any byte of a DataHead packet (type,
// counter, head length, protected head, ciphertext, tag) makes it fail;
// nothing is delivered, and a replayed packet is refused.
func TestDataHeadTampering(t *testing.T) {
	n, la, _, a, b := connPair(t, 9)
	sent := capture(n, la)
	head, body := []byte("head-bytes"), bytes.Repeat([]byte{7}, 100)
	if err := a.SendSplitBatch([][]byte{head}, [][]byte{body}); err != nil {
		t.Fatal(err)
	}
	orig := (*sent)[0]
	for i := range orig {
		d := bytes.Clone(orig)
		d[i] ^= 0x40
		b.recvMu.Lock()
		p, _, ok := b.openHeadLocked(d, netip.AddrPort{}, nil, nil)
		b.recvMu.Unlock()
		if ok && d[0] == typeDataHead {
			t.Fatalf("byte %d flipped: still opens to %x", i, p)
		}
	}
	b.recvMu.Lock()
	_, _, ok := b.openHeadLocked(bytes.Clone(orig), netip.AddrPort{}, nil, nil)
	_, _, again := b.openHeadLocked(bytes.Clone(orig), netip.AddrPort{}, nil, nil)
	b.recvMu.Unlock()
	if !ok || again {
		t.Fatalf("original opens %v, replay opens %v", ok, again)
	}
	st := b.Stats()
	if st.Forged == 0 || st.Replayed == 0 {
		t.Fatalf("stats %+v: want forgeries and the replay counted", st)
	}
}

// TestDataHeadZeroAlloc: sealing split payloads and opening them in place
// allocates nothing.
func TestDataHeadZeroAlloc(t *testing.T) {
	link := &discardBatchLink{discardLink{done: make(chan struct{})}}
	k1, k2 := make([]byte, 32), make([]byte, 32)
	a, err := newConn(link, testID, dirKeys{k1, k2}, dirKeys{k2, k1}, netip.AddrPort{}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	heads := [][]byte{make([]byte, 12), make([]byte, 12)}
	bodies := [][]byte{make([]byte, 30000), make([]byte, 30000)}
	a.SendSplitBatch(heads, bodies) // the arena
	if n := testing.AllocsPerRun(100, func() { a.SendSplitBatch(heads, bodies) }); n != 0 {
		t.Fatalf("SendSplitBatch: %v allocs per call", n)
	}
}

// capture records every datagram from sends (and still delivers it).
func capture(n *memNet, from *memLink) *[][]byte {
	var mu sync.Mutex
	var got [][]byte
	n.setTap(func(l *memLink, b []byte) [][]byte {
		if l == from {
			mu.Lock()
			got = append(got, bytes.Clone(b))
			mu.Unlock()
		}
		return [][]byte{b}
	})
	return &got
}

// discardBatchLink is a BatchLink that drops everything.
type discardBatchLink struct{ discardLink }

func (l *discardBatchLink) SendBatch([][]byte) error { return nil }

// TestDataHeadShortBuffer: a buffer too short for the payload, with or
// without a placement refused, loses the packet with io.ErrShortBuffer as
// Recv does (never a panic or a write past the buffer).
func TestDataHeadShortBuffer(t *testing.T) {
	_, _, _, a, b := connPair(t, 10)
	head, body := []byte("0123456789"), bytes.Repeat([]byte("b"), 500)
	for _, place := range []func([]byte, int) []byte{nil, func([]byte, int) []byte { return nil }} {
		if err := a.SendSplitBatch([][]byte{head}, [][]byte{body}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100, 100)
		if n, got, err := b.RecvPlaced(buf, place); !errors.Is(err, io.ErrShortBuffer) || got != nil {
			t.Fatalf("RecvPlaced into 100 bytes: n=%d body=%v err=%v", n, got != nil, err)
		}
	}
}

// TestDataHeadPlacedForgery: a forged DataHead packet whose body was given
// room returns nothing, is counted, and leaves the room without the forged
// plaintext (Go's GCM zeroes it); the next genuine packet still arrives.
func TestDataHeadPlacedForgery(t *testing.T) {
	n, la, lb, a, b := connPair(t, 12)
	sent := capture(n, la)
	head, body := []byte("forge-head"), bytes.Repeat([]byte{9}, 200)
	if err := a.SendSplitBatch([][]byte{head}, [][]byte{body}); err != nil {
		t.Fatal(err)
	}
	recvOne(t, b) // the genuine one
	forged := bytes.Clone((*sent)[0])
	binary.BigEndian.PutUint64(forged[1:dataHeaderSize], 77) // a fresh counter
	forged[len(forged)-1] ^= 1
	lb.inject(la.source(), forged)
	if err := a.Send([]byte("after")); err != nil {
		t.Fatal(err)
	}
	room := bytes.Repeat([]byte{0xAA}, len(body))
	placed := false
	buf := make([]byte, b.MaxPayload())
	got, bodyGot, err := b.RecvPlaced(buf, func(h []byte, n int) []byte {
		placed = true
		return room
	})
	if err != nil || bodyGot != nil || string(buf[:got]) != "after" {
		t.Fatalf("after a forgery: %q body=%v err=%v", buf[:got], bodyGot != nil, err)
	}
	if !placed || bytes.Contains(room, body[:16]) {
		t.Fatalf("placed %v; the forged body's plaintext was left in the room", placed)
	}
	if b.Stats().Forged != 1 {
		t.Fatalf("stats %+v, want one forgery", b.Stats())
	}
}

// TestDataHeadMask checks the head protection against the specification
// (PROTOCOL.md 3.6.1), computed here independently: the head on the wire
// is the head XOR AES(K_h, sample) ‖ AES(K_h, sample ⊕ 1), sample being the
// first 16 ciphertext bytes, with the sender's head key.
func TestDataHeadMask(t *testing.T) {
	nw, la, _, a, _ := connPair(t, 13)
	sent := capture(nw, la)
	head := make([]byte, 30) // two mask blocks
	for i := range head {
		head[i] = byte(i)
	}
	if err := a.SendSplitBatch([][]byte{head}, [][]byte{make([]byte, 100)}); err != nil {
		t.Fatal(err)
	}
	d := (*sent)[0]
	if d[0] != typeDataHead || int(d[dataHeaderSize]) != len(head) {
		t.Fatalf("type %#x, h %d", d[0], d[dataHeaderSize])
	}
	var sample, mask [32]byte
	copy(sample[:16], d[dataHeadHeaderSize+len(head):])
	a.sendHead.Encrypt(mask[:16], sample[:16])
	sample[15] ^= 1
	a.sendHead.Encrypt(mask[16:], sample[:16])
	for i := range head {
		if d[dataHeadHeaderSize+i]^mask[i] != head[i] {
			t.Fatalf("head byte %d: wire %#x ^ mask %#x != %#x", i, d[dataHeadHeaderSize+i], mask[i], head[i])
		}
	}
}
