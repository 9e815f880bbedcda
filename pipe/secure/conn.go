// Data packet format, version 1:
//
//	Data      = 0xD0 | counter (8) | AES-256-GCM(payload) | tag (16)
//	Keepalive = 0xD1 | counter (8) | tag (16)              (empty payload)
//	DataHead  = 0xD2 | counter (8) | h (1) | protected head (h) | AES-256-GCM(body) | tag (16)
//
// A DataHead packet carries the payload head ‖ body, split where the layer
// above wants it (the stream: its packet's frames, then the bytes of its
// DATA frame). The head is authenticated as part of the additional data
// and hidden by head protection as in QUIC (RFC 9001, section 5.4): it is
// XORed with AES(K_head, sample) ‖ AES(K_head, sample ⊕ 1), where sample is
// the first 16 bytes of the ciphertext. The body is sealed on its own, so
// the sender seals it straight from where it lies, and the receiver, who
// reads the head first, can open it straight to where it belongs: neither
// copies it (SendSplitBatch, RecvPlaced).
//
// A Data packet is at most maxDataDatagram (65507) bytes, the largest UDP
// payload over IPv4. Senders keep to 1200 bytes (MaxPayload) unless the
// layer above confirmed that the path carries more (a path MTU probe the
// peer acknowledged); receivers accept any size up to the limit.
//
// The 9-byte header (type and counter) is the GCM additional data, so it
// cannot be altered or a keepalive turned into data. The GCM nonce is 4 zero
// bytes followed by the counter. Each direction has its own key and its own
// counter, which starts at 0, goes up by one per packet, and is never reused:
// a Conn refuses to send once it reaches rejectAfterMessages. The receiver
// keeps a replay window (replay.go): a counter is accepted once, and only if
// it is at most replayWindowSize behind the highest accepted one.
//
// Packets that are too short, too long or of an unknown type are counted as
// malformed; those that fail authentication (forged, corrupted, sealed with
// another key) as forged; those with a counter already seen or too old as
// replayed. None of them reaches the caller.

package secure

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	dataHeaderSize = 9
	gcmTagSize     = 16
	// A DataHead packet has one byte more of header (the head's length), a
	// head of 1 to maxHeadLen bytes and a body of at least headSampleSize
	// bytes, from which the head protection samples.
	dataHeadHeaderSize = dataHeaderSize + 1
	maxHeadLen         = 32
	headSampleSize     = 16
	// maxDataDatagram is the largest Data packet: the largest UDP payload
	// over IPv4 (loopback and jumbo-frame paths carry it whole).
	maxDataDatagram = 65507
	// rejectAfterMessages is the first counter a Conn will not use. Far
	// below 2^64, so the counter can never wrap, and far above what any
	// session sends.
	rejectAfterMessages = 1 << 60
)

// ErrCounterExhausted is returned by Send once the packet counter reached
// its limit; the Conn cannot send again and a new handshake is needed.
var ErrCounterExhausted = errors.New("secure: packet counter exhausted, start a new session")

// Stats counts a Conn's packets. Dropped packets are split by reason.
type Stats struct {
	Sealed    uint64 // data and keepalive packets sealed and handed to the link
	Opened    uint64 // data and keepalive packets that authenticated
	Forged    uint64 // dropped: failed authentication (forged, corrupted, wrong key)
	Replayed  uint64 // dropped: counter already seen or too far behind
	Malformed uint64 // dropped: too short, too long or of an unknown type
	Handshake uint64 // late handshake packets received after the handshake
}

// Conn is an established secure session: the data plane. Send and Recv
// may be called concurrently with each other; Close unblocks both. Keep a
// Recv call pending: besides data, it answers the peer's late handshake
// retransmissions, without which the peer cannot finish its handshake.
type Conn struct {
	link      Link
	heard     HeardLink // link, when it wants to hear of every authentic packet
	id        handshakeID
	sendAEAD  cipher.AEAD
	recvAEAD  cipher.AEAD
	sendHead  cipher.Block // DataHead head protection
	recvHead  cipher.Block
	keepalive time.Duration

	counter  atomic.Uint64 // next send counter
	lastSend atomic.Int64  // monotonic nanoseconds since start, for keepalives
	start    time.Time

	batchMu sync.Mutex // guards the SendBatch buffers
	// batchArena holds up to batchBytes of sealed datagrams back to back
	// (or one larger datagram), so the link can hand a run of them to the
	// kernel without copying (GSO). Allocated at the first SendBatch.
	batchArena []byte
	batchOut   [][]byte
	batchNonce [12]byte
	batchMask  maskBuf

	recvMu    sync.Mutex     // guards everything below, up to stats
	rbuf      [64 << 10]byte // room for a whole coalesced read (pipe/path reads straight into it)
	rnonce    [12]byte
	rmask     maskBuf
	replay    replayWindow
	peer      netip.AddrPort // last address confirmed to the link
	heardPeer bool           // an authentic packet arrived after the handshake
	early     []byte         // payload that completed the initiator's handshake
	failure   error          // sticky: set by a matching AuthFailed notice
	// Responder only: the Finished we sent, and what to answer it to.
	finished   []byte
	finishHash [sha256.Size]byte
	// References to this handshake's messages, to match AuthFailed notices,
	// and K_cancel, to believe a Cancel.
	refs      []ref
	cancelKey []byte

	stats struct {
		sealed, opened, forged, replayed, malformed, handshake atomic.Uint64
	}

	closeOnce sync.Once
	closed    atomic.Bool
	done      chan struct{}
	wg        sync.WaitGroup // the keepalive goroutine
	closeErr  error
}

// sealBufs holds the outgoing datagrams of every Conn, so Send does not
// allocate. One Pool for the package, not one per Conn: the runtime holds
// each Pool used since the last GC through the next one, so a Pool inside a
// Conn kept the closed Conn (its 64 KiB read buffer, its link) alive a GC
// cycle more, and the heap grew with the rate Conns were closed.
var sealBufs = sync.Pool{New: func() any { return new(sealBuf) }}

// sealBuf is one outgoing datagram (see sealBufs).
type sealBuf struct {
	b     [maxDataDatagram]byte
	nonce [12]byte
	mask  maskBuf
}

// maskBuf holds a head protection mask and the sample it is made from
// (kept off the stack: a block cipher's arguments escape).
type maskBuf struct {
	mask   [maxHeadLen]byte
	sample [headSampleSize]byte
}

// dirKeys are one direction's 32-byte keys: the AEAD key and the head
// protection key.
type dirKeys struct{ aead, head []byte }

// setLink moves a Conn that is not running yet (an initiator's, between
// Finish and Finished) to the link of the handshake's next attempt.
func (c *Conn) setLink(link Link) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	c.link = link
	c.heard, _ = link.(HeardLink)
}

// newConn builds a Conn from the two directions' keys. It does not start
// the keepalive goroutine: see run.
func newConn(link Link, id handshakeID, send, recv dirKeys, peer netip.AddrPort, keepalive time.Duration) (*Conn, error) {
	sendAEAD, err := newGCM(send.aead)
	if err != nil {
		return nil, err
	}
	recvAEAD, err := newGCM(recv.aead)
	if err != nil {
		return nil, err
	}
	sendHead, err := aes.NewCipher(send.head)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	recvHead, err := aes.NewCipher(recv.head)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	c := &Conn{
		link:      link,
		id:        id,
		sendAEAD:  sendAEAD,
		recvAEAD:  recvAEAD,
		sendHead:  sendHead,
		recvHead:  recvHead,
		keepalive: keepalive,
		peer:      peer,
		start:     time.Now(),
		done:      make(chan struct{}),
	}
	c.heard, _ = link.(HeardLink)
	return c, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	return aead, nil
}

// run starts the keepalive goroutine, owned by the Conn and stopped by
// Close. Keepalives keep NAT bindings open while the application is idle.
func (c *Conn) run() {
	if c.keepalive <= 0 {
		return
	}
	c.wg.Add(1)
	go c.routineKeepalive()
}

func (c *Conn) routineKeepalive() {
	defer c.wg.Done()
	// Ticking at half the interval sends a keepalive between 1 and 1.5
	// intervals after the last packet.
	t := time.NewTicker(c.keepalive / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if time.Duration(c.now()-c.lastSend.Load()) >= c.keepalive {
				// A failed keepalive is not fatal: the link reports real
				// trouble to Recv, and the next tick tries again.
				_ = c.seal(typeKeepalive, nil, nil)
			}
		}
	}
}

func (c *Conn) now() int64 { return int64(time.Since(c.start)) }

// MaxPayload returns the largest p Send accepts: what fits in a 1200-byte
// datagram after the header and the GCM tag.
// Every path carries it.
func (c *Conn) MaxPayload() int { return maxDatagram - dataHeaderSize - gcmTagSize }

// PathSwitches counts the times the link's path changed (the peer roamed,
// or the session moved to or from a relay), when the link tells.
func (c *Conn) PathSwitches() uint64 {
	if l, ok := c.link.(interface{ PathSwitches() uint64 }); ok {
		return l.PathSwitches()
	}
	return 0
}

// PayloadLimit returns the largest p Send and SendBatch accept, for paths
// that carry datagrams larger than 1200 bytes (see MaxPayload): only send
// more than MaxPayload after the peer acknowledged a probe of that size.
func (c *Conn) PayloadLimit() int { return maxDataDatagram - dataHeaderSize - gcmTagSize }

// Send seals p into one datagram and sends it. It does not retain p. It is
// safe to call concurrently with Recv and with itself.
func (c *Conn) Send(p []byte) error {
	if len(p) > c.PayloadLimit() {
		return fmt.Errorf("secure: payload of %d bytes exceeds PayloadLimit %d", len(p), c.PayloadLimit())
	}
	return c.seal(typeData, p, nil)
}

// HeardLink is a Link that is told of every authentic packet from the
// peer (pipe/path: liveness, and whether a direct path works), so that
// nothing unauthenticated moves its state. Heard is called on the receive
// path and must be cheap.
type HeardLink interface {
	Link
	Heard(from netip.AddrPort)
}

// BatchLink is a Link that can send several datagrams with one system call
// (pipe/path does, with UDP GSO).
type BatchLink interface {
	Link
	SendBatch(bufs [][]byte) error
}

// batchBytes bounds the sealed bytes handed to the link at once: one GSO
// send (64 KiB), so the arena stays in the cache between sealing and the
// system call that copies it out. A payload larger than that goes alone.
const batchBytes = 64 << 10

// SendBatch seals every payload of ps, in order, and sends them together
// when the link can (else one by one). It does not retain ps.
func (c *Conn) SendBatch(ps [][]byte) error { return c.SendSplitBatch(ps, nil) }

// SendSplitBatch is SendBatch for payloads given in two parts: payload i
// is heads[i] ‖ bodies[i] (bodies may be nil, or have nil entries: the
// payload is the head alone). A split payload goes out as a DataHead
// packet, its body sealed straight from where it lies, when its head is 1
// to 32 bytes, its body at least 16 and the whole at most PayloadLimit()-1
// bytes (the head's length takes a byte); otherwise as a Data packet. It
// does not retain heads or bodies.
func (c *Conn) SendSplitBatch(heads, bodies [][]byte) error {
	body := func(i int) []byte {
		if bodies == nil {
			return nil
		}
		return bodies[i]
	}
	for i, h := range heads {
		if n := len(h) + len(body(i)); n > c.PayloadLimit() {
			return fmt.Errorf("secure: payload of %d bytes exceeds PayloadLimit %d", n, c.PayloadLimit())
		}
	}
	if c.closed.Load() {
		return fmt.Errorf("secure: send: %w", net.ErrClosed)
	}
	bl, ok := c.link.(BatchLink)
	if !ok {
		for i, h := range heads {
			if err := c.seal(typeData, h, body(i)); err != nil {
				return err
			}
		}
		return nil
	}
	c.batchMu.Lock()
	defer c.batchMu.Unlock()
	if c.batchArena == nil {
		c.batchArena = make([]byte, 0, batchBytes+maxDataDatagram)
	}
	for i := 0; i < len(heads); {
		// Seal up to batchBytes (at least one datagram), then send: the
		// arena is still in the cache when the kernel copies it out.
		arena, out := c.batchArena[:0], c.batchOut[:0]
		n := 0
		for ; i < len(heads); i++ {
			size := sealedSize(heads[i], body(i))
			if n > 0 && len(arena)+size > batchBytes {
				break
			}
			ctr, err := c.nextCounter()
			if err != nil {
				return err
			}
			d := arena[len(arena) : len(arena)+size : len(arena)+size]
			arena = arena[:len(arena)+size]
			c.sealInto(d, typeData, heads[i], body(i), ctr, &c.batchNonce, &c.batchMask)
			out = append(out, d)
			n++
		}
		c.batchOut = out[:0]
		c.lastSend.Store(c.now())
		c.stats.sealed.Add(uint64(n))
		if err := bl.SendBatch(out); err != nil {
			return fmt.Errorf("secure: send: %w", err)
		}
	}
	return nil
}

// splittable reports whether head ‖ body goes out as a DataHead packet.
func splittable(head, body []byte) bool {
	return len(head) >= 1 && len(head) <= maxHeadLen && len(body) >= headSampleSize &&
		dataHeadHeaderSize+len(head)+len(body)+gcmTagSize <= maxDataDatagram
}

// sealedSize is the datagram size of payload head ‖ body.
func sealedSize(head, body []byte) int {
	if splittable(head, body) {
		return dataHeadHeaderSize + len(head) + len(body) + gcmTagSize
	}
	return dataHeaderSize + len(head) + len(body) + gcmTagSize
}

// sealInto seals payload head ‖ body with counter ctr into d, which is
// exactly sealedSize long: a DataHead packet when splittable, else a packet
// of type typ, Data or Keepalive (whose plaintext is head and body joined
// in d, sealed in place).
func (c *Conn) sealInto(d []byte, typ byte, head, body []byte, ctr uint64, nonce *[12]byte, mask *maskBuf) {
	binary.BigEndian.PutUint64(d[1:dataHeaderSize], ctr)
	binary.BigEndian.PutUint64(nonce[4:], ctr)
	if !splittable(head, body) {
		d[0] = typ
		p := d[dataHeaderSize : dataHeaderSize+len(head)+len(body)]
		if body == nil {
			c.sendAEAD.Seal(d[dataHeaderSize:dataHeaderSize], nonce[:], head, d[:dataHeaderSize])
			return
		}
		copy(p[copy(p, head):], body)
		c.sendAEAD.Seal(p[:0], nonce[:], p, d[:dataHeaderSize])
		return
	}
	h := len(head)
	d[0] = typeDataHead
	d[dataHeaderSize] = byte(h)
	copy(d[dataHeadHeaderSize:], head)
	ad := d[:dataHeadHeaderSize+h]
	ct := c.sendAEAD.Seal(d[len(ad):len(ad)], nonce[:], body, ad)
	headMask(c.sendHead, ct, mask, h)
	subtle.XORBytes(d[dataHeadHeaderSize:len(ad)], d[dataHeadHeaderSize:len(ad)], mask.mask[:h])
}

// headMask fills mask[:h] with the head protection mask for a DataHead
// packet whose ciphertext (body and tag) is ct.
func headMask(b cipher.Block, ct []byte, m *maskBuf, h int) {
	copy(m.sample[:], ct)
	b.Encrypt(m.mask[:16], m.sample[:])
	if h > 16 {
		m.sample[15] ^= 1
		b.Encrypt(m.mask[16:32], m.sample[:])
	}
}

// seal seals one payload head ‖ body (a Keepalive: none) into a pooled
// buffer and sends it.
func (c *Conn) seal(typ byte, head, body []byte) error {
	if c.closed.Load() {
		return fmt.Errorf("secure: send: %w", net.ErrClosed)
	}
	n, err := c.nextCounter()
	if err != nil {
		return err
	}
	buf := sealBufs.Get().(*sealBuf)
	defer sealBufs.Put(buf)
	d := buf.b[:sealedSize(head, body)]
	c.sealInto(d, typ, head, body, n, &buf.nonce, &buf.mask)
	c.lastSend.Store(c.now())
	c.stats.sealed.Add(1)
	if err := c.link.Send(d); err != nil {
		return fmt.Errorf("secure: send: %w", err)
	}
	return nil
}

// nextCounter reserves the next send counter. Every counter is handed out
// at most once, so no nonce is ever used twice with the send key.
func (c *Conn) nextCounter() (uint64, error) {
	for {
		n := c.counter.Load()
		if n >= rejectAfterMessages {
			return 0, ErrCounterExhausted
		}
		if c.counter.CompareAndSwap(n, n+1) {
			return n, nil
		}
	}
}

// Recv blocks until the next authentic data payload, copies it into buf
// and returns its length. Keepalives, late handshake packets and everything
// that fails to authenticate are consumed without returning. If buf is
// shorter than the payload, the packet is lost and the error wraps
// io.ErrShortBuffer; a buf of PayloadLimit bytes always suffices. After Close,
// Recv returns an error wrapping net.ErrClosed. If the peer reports that it
// failed to authenticate this session (before any of its packets arrived),
// Recv returns an error matching ErrAuth.
func (c *Conn) Recv(buf []byte) (int, error) {
	n, _, err := c.RecvPlaced(buf, nil)
	return n, err
}

// RecvPlaced is Recv for a reader that places bodies itself. For a
// DataHead packet it unprotects the head and calls place(head, bodyLen)
// before authenticating anything: place returns where the body should be
// opened (exactly bodyLen bytes), or nil to have it follow the head in buf.
// The head is not yet authentic, and when the packet fails to
// authenticate, whatever place returned is overwritten (with zeros), so
// place must only offer room that holds nothing of value. When the body
// went where place said, RecvPlaced returns the head's length and the body
// (the slice place returned); otherwise the payload's length and a nil
// body, as Recv does. head is valid only during the call.
func (c *Conn) RecvPlaced(buf []byte, place func(head []byte, bodyLen int) []byte) (n int, body []byte, err error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if c.early != nil {
		p := c.early
		c.early = nil
		n, err := c.deliver(buf, p)
		return n, nil, err
	}
	for {
		if c.failure != nil {
			return 0, nil, c.failure
		}
		n, from, err := c.link.Recv(c.rbuf[:])
		if err != nil {
			if c.closed.Load() {
				return 0, nil, fmt.Errorf("secure: recv: %w", net.ErrClosed)
			}
			return 0, nil, fmt.Errorf("secure: recv: %w", err)
		}
		pkt := c.rbuf[:n]
		if n == 0 || n > maxDataDatagram {
			c.stats.malformed.Add(1)
			continue
		}
		switch pkt[0] {
		case typeData, typeKeepalive:
			// Decrypt straight into buf when it is large enough, which
			// saves copying the payload.
			var dst []byte
			if len(buf) >= n-dataHeaderSize-gcmTagSize {
				dst = buf[:0]
			}
			p, ok := c.openLocked(pkt, from, dst)
			if ok && pkt[0] == typeData {
				if dst != nil {
					return len(p), nil, nil
				}
				n, err := c.deliver(buf, p)
				return n, nil, err
			}
		case typeDataHead:
			p, body, ok := c.openHeadLocked(pkt, from, buf, place)
			switch {
			case !ok:
			case body != nil:
				return len(p), body, nil
			case len(p) == 0 || &p[0] != &pkt[dataHeadHeaderSize]:
				return len(p), nil, nil // in buf
			default:
				n, err := c.deliver(buf, p)
				return n, nil, err
			}
		case typeHello, typeReply, typeFinish, typeFinished, typeAuthFailed, typeCancel:
			c.stats.handshake.Add(1)
			c.lateHandshakeLocked(pkt)
		default:
			c.stats.malformed.Add(1)
		}
	}
}

func (c *Conn) deliver(buf, p []byte) (int, error) {
	if len(buf) < len(p) {
		return 0, fmt.Errorf("secure: recv: %d-byte payload into %d-byte buffer: %w", len(p), len(buf), io.ErrShortBuffer)
	}
	return copy(buf, p), nil
}

// openLocked authenticates and decrypts a data or keepalive packet into
// dst, or in place when dst is nil. On success it records the counter,
// notes the peer's address (a roaming peer is confirmed to the link) and
// returns the payload, which aliases dst or pkt.
func (c *Conn) openLocked(pkt []byte, from netip.AddrPort, dst []byte) ([]byte, bool) {
	if len(pkt) < dataHeaderSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, false
	}
	if pkt[0] == typeKeepalive && len(pkt) != dataHeaderSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, false
	}
	counter := binary.BigEndian.Uint64(pkt[1:dataHeaderSize])
	if !c.replay.fresh(counter) {
		c.stats.replayed.Add(1)
		return nil, false
	}
	binary.BigEndian.PutUint64(c.rnonce[4:], counter)
	ct := pkt[dataHeaderSize:]
	if dst == nil {
		dst = ct[:0]
	}
	p, err := c.recvAEAD.Open(dst, c.rnonce[:], ct, pkt[:dataHeaderSize])
	if err != nil {
		c.stats.forged.Add(1)
		return nil, false
	}
	c.acceptedLocked(counter, from)
	return p, true
}

// acceptedLocked records an authentic data or keepalive packet: its
// counter, and its source as the peer's address (a roaming peer is
// confirmed to the link).
func (c *Conn) acceptedLocked(counter uint64, from netip.AddrPort) {
	c.replay.accept(counter)
	c.stats.opened.Add(1)
	c.heardPeer = true
	if from != c.peer {
		c.peer = from
		c.link.Confirm(from)
	}
	if c.heard != nil {
		c.heard.Heard(from)
	}
}

// openHeadLocked authenticates and decrypts a DataHead packet. With place
// (and room in buf for the head) the head goes to buf and the body where
// place says; it returns the head and the body. Otherwise the payload,
// head and body joined, goes to buf when it fits, else stays in pkt (opened
// in place); it returns the payload and a nil body. On success it records
// the counter and notes the peer's address, as openLocked does.
func (c *Conn) openHeadLocked(pkt []byte, from netip.AddrPort, buf []byte, place func([]byte, int) []byte) (p, body []byte, ok bool) {
	if len(pkt) < dataHeadHeaderSize+1+headSampleSize+gcmTagSize {
		c.stats.malformed.Add(1)
		return nil, nil, false
	}
	h := int(pkt[dataHeaderSize])
	bodyLen := len(pkt) - dataHeadHeaderSize - h - gcmTagSize
	if h < 1 || h > maxHeadLen || bodyLen < headSampleSize {
		c.stats.malformed.Add(1)
		return nil, nil, false
	}
	counter := binary.BigEndian.Uint64(pkt[1:dataHeaderSize])
	if !c.replay.fresh(counter) {
		c.stats.replayed.Add(1)
		return nil, nil, false
	}
	ad := pkt[:dataHeadHeaderSize+h]
	ct := pkt[len(ad):]
	head := ad[dataHeadHeaderSize:]
	headMask(c.recvHead, ct, &c.rmask, h)
	subtle.XORBytes(head, head, c.rmask.mask[:h])
	binary.BigEndian.PutUint64(c.rnonce[4:], counter)
	var dst []byte
	if place != nil && len(buf) >= h {
		if dst = place(head, bodyLen); len(dst) != bodyLen {
			dst = nil
		}
	}
	var err error
	if dst != nil {
		p = buf[:copy(buf, head)]
		body, err = c.recvAEAD.Open(dst[:0], c.rnonce[:], ct, ad)
	} else if len(buf) >= h+bodyLen {
		copy(buf, head)
		_, err = c.recvAEAD.Open(buf[h:h], c.rnonce[:], ct, ad)
		p = buf[:h+bodyLen]
	} else {
		// In place: the plaintext body lands right after the head.
		_, err = c.recvAEAD.Open(ct[:0], c.rnonce[:], ct, ad)
		p = pkt[dataHeadHeaderSize : dataHeadHeaderSize+h+bodyLen]
	}
	if err != nil {
		c.stats.forged.Add(1)
		return nil, nil, false
	}
	c.acceptedLocked(counter, from)
	return p, body, true
}

// acceptEarly handles a data or keepalive packet that reaches the initiator
// before Finished: if it authenticates, the responder holds the keys, which
// completes the handshake. A data payload is kept for the first Recv.
func (c *Conn) acceptEarly(pkt []byte, from netip.AddrPort) bool {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	var p []byte
	var ok bool
	if pkt[0] == typeDataHead {
		p, _, ok = c.openHeadLocked(pkt, from, nil, nil)
	} else {
		p, ok = c.openLocked(pkt, from, nil)
	}
	if !ok {
		return false
	}
	if pkt[0] != typeKeepalive {
		c.early = bytes.Clone(p)
	}
	return true
}

// confirmPeer records from as the peer's authenticated address.
func (c *Conn) confirmPeer(from netip.AddrPort) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if from != c.peer {
		c.peer = from
		c.link.Confirm(from)
	}
}

// lateHandshakeLocked answers handshake packets that arrive after the
// handshake: a repeated Finish means our Finished was lost, so the
// responder sends it again; an AuthFailed notice about this handshake means
// the peer rejected it, which ends the session unless the peer already
// proved it holds the keys. Everything else is stale and ignored.
func (c *Conn) lateHandshakeLocked(pkt []byte) {
	switch pkt[0] {
	case typeFinish:
		if c.finished == nil {
			return
		}
		h := sha256.Sum256(pkt)
		if subtle.ConstantTimeCompare(h[:], c.finishHash[:]) == 1 {
			// Best effort: if it is lost too, the peer asks again.
			_ = c.link.Send(c.finished)
		}
	case typeCancel:
		// The peer gave up before it heard from us (our Finished was
		// lost, say): honoured, as AuthFailed, only until it proved it has
		// the keys.
		m, err := parseCancel(pkt)
		if err == nil && m.id == c.id && !c.heardPeer && len(c.refs) > 0 && m.hello == c.refs[0] &&
			c.cancelKey != nil && hmac.Equal(m.tag[:], mac(c.cancelKey, m.hello[:])) {
			c.failure = ErrPeerCancelled
		}
	case typeAuthFailed:
		m, err := parseAuthFailed(pkt)
		if err != nil || m.id != c.id || c.heardPeer {
			return
		}
		for _, r := range c.refs {
			if r == m.hello || r == m.failed {
				c.failure = authError("the peer rejected the handshake")
				return
			}
		}
	}
}

// Stats returns a snapshot of the packet counters.
func (c *Conn) Stats() Stats {
	return Stats{
		Sealed:    c.stats.sealed.Load(),
		Opened:    c.stats.opened.Load(),
		Forged:    c.stats.forged.Load(),
		Replayed:  c.stats.replayed.Load(),
		Malformed: c.stats.malformed.Load(),
		Handshake: c.stats.handshake.Load(),
	}
}

// Close closes the link, which unblocks Recv, and stops the keepalive
// goroutine. Later Send and Recv calls fail with net.ErrClosed. Close is
// idempotent and returns the link's Close error.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		close(c.done)
		c.closeErr = c.link.Close()
		c.wg.Wait()
	})
	return c.closeErr
}
