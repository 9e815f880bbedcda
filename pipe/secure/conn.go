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
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"fmt"
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

// confirmPeer records from as the peer's authenticated address.
func (c *Conn) confirmPeer(from netip.AddrPort) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if from != c.peer {
		c.peer = from
		c.link.Confirm(from)
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
