package secure

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
)

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

// Send seals p into one datagram and sends it. It does not retain p. It is
// safe to call concurrently with Recv and with itself.
func (c *Conn) Send(p []byte) error {
	if len(p) > c.PayloadLimit() {
		return fmt.Errorf("secure: payload of %d bytes exceeds PayloadLimit %d", len(p), c.PayloadLimit())
	}
	return c.seal(typeData, p, nil)
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
