// The Conn and its API: New, Write/ReadFrom, Read/Peek/Consume,
// CloseWrite, Shutdown, Abort, Close, Err and Stats. The Conn's goroutines
// and the rest of its methods live by the concern they serve: the receive
// loop and packet handling in recvloop.go, the send loop and packet
// production in sendloop.go, the close handshake in close.go, path MTU
// discovery in pmtu.go; the sending and receiving halves' state in
// sender.go and receiver.go.

package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// Transport carries datagrams between the two ends of a session.
type Transport interface {
	Send(p []byte) error          // seal and send one datagram; must not retain p; len(p) <= MaxPayload()
	Recv(buf []byte) (int, error) // block until the next authentic payload; returns an error once closed
	MaxPayload() int              // e.g. ~1150 bytes
	Close() error                 // unblocks Recv
}

// BatchTransport is a Transport that can send several datagrams with one
// system call; the send loop hands it each batch it builds.
type BatchTransport interface {
	Transport
	SendBatch(ps [][]byte) error
}

// SplitTransport is a BatchTransport that takes a packet in two parts, so
// that a DATA frame's bytes are never copied between the stream's buffers
// and the datagrams (pipe/secure's DataHead packets):
//
//   - SendSplitBatch sends packet i = heads[i] ‖ bodies[i]; a body is the
//     bytes of the packet's last frame, a DATA frame, and is read straight
//     from the send buffer. A split packet must be at least a byte shorter
//     than the largest packet allowed (the split costs a byte on the wire).
//   - RecvPlaced receives like Recv, but first shows a split packet's head
//     (not yet authentic) to place, which returns where in the receive
//     buffer its body belongs: room that holds nothing yet, since a packet
//     that fails to authenticate leaves it overwritten. It returns the
//     head's length and the placed body, or the whole packet's length and
//     a nil body when it did not place it.
type SplitTransport interface {
	BatchTransport
	SendSplitBatch(heads, bodies [][]byte) error
	RecvPlaced(buf []byte, place func(head []byte, bodyLen int) []byte) (n int, body []byte, err error)
}

// Errors that end a Conn.
var (
	ErrIdleTimeout = errors.New("stream: peer silent for too long")
	// ErrUnconfirmedEnd: complete, but the peer fell silent before its
	// DONE said that it handed all our bytes to its reader. It matches
	// ErrIdleTimeout.
	ErrUnconfirmedEnd = fmt.Errorf("%w before it confirmed the end (all our data reached it; it never said it wrote it out)", ErrIdleTimeout)
	// ErrPeerAborted is matched by the *PeerAbortError of a Conn whose peer
	// sent a CLOSE frame.
	ErrPeerAborted = errors.New("stream: peer aborted the session")
	ErrAborted     = errors.New("stream: session aborted")
	ErrClosed      = errors.New("stream: closed")
	ErrWriteClosed = errors.New("stream: write after CloseWrite")
)

// AbortCode says why a side aborted the session: the code of its CLOSE
// frame. The peer's program phrases its own message from it, so that the
// reason shown never depends on text chosen by the peer.
type AbortCode uint8

const (
	AbortError        AbortCode = 0 // a failure not listed below
	AbortInterrupted  AbortCode = 1 // the user interrupted it (Ctrl-C, SIGTERM)
	AbortInputFailed  AbortCode = 2 // reading its input failed
	AbortOutputFailed AbortCode = 3 // writing its output failed (a full disk, ...)
	AbortOutputClosed AbortCode = 4 // the reader of its output went away (EPIPE)
)

// PeerAbortError is a Conn's error when the peer aborted the session.
// Reason is the peer's text, already made safe to print.
type PeerAbortError struct {
	Code   AbortCode
	Reason string
}

func (e *PeerAbortError) Error() string {
	return fmt.Sprintf("%v (code %d): %q", ErrPeerAborted, e.Code, e.Reason)
}

// Is makes errors.Is(err, ErrPeerAborted) true.
func (e *PeerAbortError) Is(target error) bool { return target == ErrPeerAborted }

// Config tunes a Conn. Zero values mean the documented defaults.
type Config struct {
	// IdleTimeout: when the peer is silent this long while we still need
	// something from it, the Conn fails with ErrIdleTimeout. Default 30 s.
	IdleTimeout time.Duration
	// KeepaliveInterval: when we sent nothing for this long, send a PING,
	// which keeps NAT mappings open and proves we are alive. Default 10 s.
	KeepaliveInterval time.Duration
	// SendBuffer bounds the bytes written but not yet acknowledged;
	// RecvBuffer bounds the bytes received but not yet read (it is the
	// flow-control window). Default 8 MiB each: a window of 8 MiB fills a
	// path of 200 MB/s at 40 ms RTT, and memory stays bounded by the two
	// buffers. Minimum 64 KiB.
	SendBuffer, RecvBuffer int
	// Logger receives debug-level events; nil discards them.
	Logger *slog.Logger
}

const (
	defaultIdleTimeout = 30 * time.Second
	defaultKeepalive   = 10 * time.Second
	defaultBuffer      = 8 << 20
	minPayload         = 200
	minBuffer          = 64 << 10 // also the window assumed before the peer's first ack
	sleepForever       = time.Duration(1<<63 - 1)
	// A packet goes split (SplitTransport) only as pipe/secure's DataHead
	// packets take it: a head of at most 32 bytes, a body of at least 16.
	splitMaxHead     = 32
	splitMinBody     = 16
	maxLinger        = 3 * time.Second
	sendBatch        = 64    // packets built per lock, sent per wake-up (UDP_MAX_SEGMENTS)
	batchBytes       = 64000 // bytes built per lock: sealed, one GSO send (64 KiB) in pipe/path
	pacerGranularity = 2 * time.Millisecond
	abortCopies      = 3
	abortSpacing     = 10 * time.Millisecond // copies at 0, 10 and 40 ms
)

// Stats is a snapshot of a Conn's counters and estimates.
type Stats struct {
	BytesSent, BytesReceived     uint64 // stream bytes: accepted by Write / handed to Read
	PacketsSent, PacketsReceived uint64
	Retransmits                  uint64 // packets that carried data sent before
	SpuriousRetransmits          uint64 // packets declared lost that were acked later
	LostPackets                  uint64
	DupPackets                   uint64 // packets received twice
	SRTT, RTTVar, MinRTT, RTO    time.Duration
	Cwnd                         int     // congestion window, bytes
	PacingRate                   float64 // bytes per second
	BytesInFlight                int
	SendBuffered                 int // written, not yet acknowledged
	RecvBuffered                 int // received, not yet read
}

type counters struct {
	packetsSent, packetsRecv, retransmits, spurious, lost, dup, badFrames uint64
}

// Conn is one end of the byte stream. Read and Write may be called from
// different goroutines; Conn owns two goroutines (receive and send loops)
// that Close waits for. ReadFrom and Peek/Consume are Write and Read
// without the copy in between: the caller's reader fills the send buffer,
// and the caller writes straight from the receive buffer.
//
// Together with the caller's goroutines they form a pipeline on each side,
// every stage bounded by a buffer: the writer (stdin) fills the send
// buffer, the send loop seals and sends, the receive loop receives, opens
// and fills the receive buffer, the reader (stdout) drains it.
type Conn struct {
	tr             Transport
	split          SplitTransport // tr, when it takes packets in two parts
	log            *slog.Logger
	idle           time.Duration
	keepalive      time.Duration
	maxPayload     int       // the packet size: grows after a path MTU probe (guarded by mu)
	baseMaxPayload int       // the Transport's MaxPayload, which every path carries
	payloadLimit   int       // the largest payload the Transport takes (LargeTransport), or 0
	pathSwitches   uint64    // the PathTransport's count when last checked
	bufSize        int       // the largest packet this Conn may ever build
	epoch          time.Time // times are durations since epoch (monotonic)

	// sendMu serialises tr.Send so packet numbers go out in order. Lock
	// order: sendMu before mu.
	sendMu sync.Mutex

	mu         sync.Mutex
	readable   sync.Cond
	writable   sync.Cond
	snd        sender   // the sending half (sender.go)
	rcv        receiver // the receiving half (receiver.go)
	stats      counters
	placeFrame frame // placeBody's, which runs on the receive loop
	pmtu       pmtuState

	lastRecv   time.Duration
	lastSent   time.Duration
	sleepUntil time.Duration // when the send loop wakes on its own; 0: running

	closing     closeHandshake // the close handshake (close.go)
	finished    bool           // terminal
	err         error
	done        chan struct{}
	wake        chan struct{}
	closeTrOnce sync.Once
	wg          sync.WaitGroup
}

// New starts a Conn over tr. The Conn owns tr and closes it.
func New(tr Transport, cfg Config) *Conn {
	c := &Conn{
		tr:             tr,
		log:            cfg.Logger,
		idle:           cfg.IdleTimeout,
		keepalive:      cfg.KeepaliveInterval,
		maxPayload:     tr.MaxPayload(),
		baseMaxPayload: tr.MaxPayload(),
		epoch:          time.Now(),
		done:           make(chan struct{}),
		wake:           make(chan struct{}, 1),
	}
	c.split, _ = tr.(SplitTransport)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.idle <= 0 {
		c.idle = defaultIdleTimeout
	}
	if c.keepalive <= 0 {
		c.keepalive = defaultKeepalive
	}
	sendBuf, recvBuf := cfg.SendBuffer, cfg.RecvBuffer
	if sendBuf <= 0 {
		sendBuf = defaultBuffer
	}
	if recvBuf <= 0 {
		recvBuf = defaultBuffer
	}
	sendBuf, recvBuf = max(sendBuf, minBuffer), max(recvBuf, minBuffer)
	c.readable.L, c.writable.L = &c.mu, &c.mu
	c.snd = newSender(sendBuf, c.maxPayload, &c.stats, c)
	c.rcv = newReceiver(recvBuf)
	c.bufSize = c.maxPayload
	if lt, ok := tr.(LargeTransport); ok {
		c.payloadLimit = lt.PayloadLimit()
		c.pmtu = newPMTUState(c.maxPayload, c.payloadLimit)
		c.bufSize = max(c.bufSize, c.pmtu.largest())
	}
	if c.maxPayload < minPayload {
		c.failLocked(fmt.Errorf("stream: transport payload of %d bytes is too small (need %d)", c.maxPayload, minPayload))
		c.closeTransport()
		return c
	}
	c.wg.Add(2)
	go c.recvLoop()
	go c.sendLoop()
	return c
}

func (c *Conn) now() time.Duration { return time.Since(c.epoch) }

func (c *Conn) wakeSender() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Write copies p into the send buffer, blocking while it is full. Data is
// sent at once (no Nagle-style waiting).
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.snd
	written := 0
	for len(p) > 0 {
		if c.finished {
			return written, c.errLocked()
		}
		if s.finWritten {
			return written, ErrWriteClosed
		}
		free := uint64(s.buf.max) - (s.end - s.held())
		if free == 0 {
			c.writable.Wait()
			continue
		}
		n := min(free, uint64(len(p)))
		s.buf.fit(s.held(), s.end+n)
		s.buf.write(s.end, p[:n])
		s.end += n
		p = p[n:]
		written += int(n)
		c.wakeSender()
	}
	return written, nil
}

// Read reads in-order bytes. It returns io.EOF after the peer's CloseWrite
// and all its data.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &c.rcv
	for {
		if c.finished && c.err != nil {
			return 0, c.err
		}
		if n := r.read(p); n > 0 {
			c.afterReadLocked()
			return n, nil
		}
		if err := r.readErr(); err != nil {
			return 0, err
		}
		if c.finished {
			return 0, c.errLocked()
		}
		c.readable.Wait()
	}
}

// maxReadChunk bounds one read of ReadFrom: large enough that a file is
// read with few system calls, small enough that the send loop gets the
// first bytes soon.
const maxReadChunk = 256 << 10

// ReadFrom reads r until EOF straight into the send buffer, with no copy
// in between: each read fills free space of the buffer, outside the lock,
// and its bytes are sent at once, like Write's. It blocks while the buffer
// is full. It returns the bytes read and nil at EOF (it does not
// CloseWrite), r's error, or the Conn's error once it ended. Write and
// ReadFrom must not be called concurrently.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		dst, err := c.reserveWrite(maxReadChunk)
		if err != nil {
			return total, err
		}
		// Only this writer touches the buffer beyond end: the send loop
		// reads below end, and a growing ring keeps [una, end) in place
		// and is only grown by the writer.
		n, rerr := r.Read(dst)
		if n > 0 {
			if err := c.commitWrite(n); err != nil {
				return total, err
			}
			total += int64(n)
			// A reader that never blocks (a file) would otherwise keep a
			// lone P (Config.TransferProcs in pipe) until the buffer is
			// full: the send loop, just woken, must get its turn now, or
			// the first packets wait until megabytes are read.
			runtime.Gosched()
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// reserveWrite waits for free space in the send buffer and returns up to
// max bytes of it, contiguous, for the writer to fill outside the lock.
func (c *Conn) reserveWrite(max int) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.snd
	for {
		if c.finished {
			return nil, c.errLocked()
		}
		if s.finWritten {
			return nil, ErrWriteClosed
		}
		used := s.end - s.held()
		if free := uint64(s.buf.max) - used; free > 0 {
			// Fill the ring as it is; grow it only once it is full, so
			// that small reads (a terminal) keep a small ring.
			n := min(free, uint64(max))
			if room := uint64(len(s.buf.buf)) - used; room > 0 {
				n = min(n, room)
			}
			s.buf.fit(s.held(), s.end+n)
			return s.buf.span(s.end, int(n)), nil
		}
		c.writable.Wait()
	}
}

// commitWrite makes n bytes written into a reserved span part of the
// stream.
func (c *Conn) commitWrite(n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return c.errLocked()
	}
	if c.snd.finWritten {
		return ErrWriteClosed
	}
	c.snd.end += uint64(n)
	c.wakeSender()
	return nil
}

// Peek waits until at least want bytes are readable (at least one when
// want <= 0) and returns every readable byte without copying: a, then b
// when they wrap around the end of the receive buffer. The slices alias the
// buffer and stay valid until Consume; only one goroutine may read (Peek
// and Consume, or Read) at a time. At the end of the stream Peek returns
// what is left, possibly fewer than want bytes or none, with io.EOF; after
// a failure, the Conn's error. want is capped at the receive buffer's size.
func (c *Conn) Peek(want int) (a, b []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &c.rcv
	want = max(1, min(want, r.buf.max))
	for {
		if c.finished && c.err != nil {
			return nil, nil, c.err
		}
		avail := int(r.nxt - r.readOff)
		atEnd := r.finKnown && r.nxt == r.finOff
		if avail >= want || atEnd {
			a, b = r.buf.spans(r.readOff, avail)
			if atEnd {
				err = io.EOF
			}
			return a, b, err
		}
		if c.finished {
			return nil, nil, c.errLocked()
		}
		c.readable.Wait()
	}
}

// Consume releases the first n bytes that Peek returned: they count as
// read.
func (c *Conn) Consume(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &c.rcv
	n = min(n, int(r.nxt-r.readOff))
	if n <= 0 {
		return
	}
	r.readOff += uint64(n)
	c.afterReadLocked()
}

// afterReadLocked runs after the reader took bytes: it advertises the
// freed space once it is worth a packet (a quarter of the buffer, so a
// blocked sender resumes soon), and wakes the send loop when the stream
// may be complete.
func (c *Conn) afterReadLocked() {
	r := &c.rcv
	if r.window()-r.advertised >= uint64(r.buf.max)/4 {
		r.ackWanted, r.ackNow = true, true
		c.wakeSender()
	}
	if r.allDelivered() {
		c.wakeSender()
	}
}

// CloseWrite half-closes: the peer reads EOF after all data written so far.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snd.finWritten && c.err == nil {
		return nil // idempotent, also after a clean end
	}
	if c.finished {
		return c.errLocked()
	}
	c.snd.finWritten = true
	c.wakeSender()
	return nil
}

// Shutdown ends the session gracefully: CloseWrite, then wait until our
// data and FIN are acknowledged, the peer's FIN arrived and every byte was
// handed to Read (someone must keep reading), then the DONE handshake
// (see the package documentation). It returns nil only when every byte was
// delivered and acknowledged both ways; the Conn is closed then. If ctx
// ends first it returns ctx's error and leaves the Conn open: call Abort or
// Close.
func (c *Conn) Shutdown(ctx context.Context) error {
	if err := c.CloseWrite(); err != nil {
		return err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		return fmt.Errorf("stream: shutdown: %w", ctx.Err())
	}
	err := c.Err()
	c.Close()
	return err
}

// Abort sends a close notice with code and reason (several copies, in
// case some are lost) so that the peer fails promptly with a
// *PeerAbortError, then tears down.
func (c *Conn) Abort(code AbortCode, reason string) error {
	c.sendMu.Lock()
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		c.sendMu.Unlock()
		return c.Close()
	}
	pkt := make([]byte, 0, c.maxPayload)
	pkt = binary.AppendUvarint(pkt, c.snd.nextPN)
	c.recordSentLocked(c.snd.ring.push(), c.now(), len(pkt)+1, false)
	pkt = appendClose(pkt, code, reason[:min(len(reason), c.maxPayload-len(pkt)-8, maxReasonBytes)])
	c.failLocked(ErrAborted)
	c.mu.Unlock()
	var err error
	for i := range abortCopies {
		// Spread out: mid-transfer the path is full, and copies sent back
		// to back tend to be lost together behind the data in flight.
		time.Sleep(time.Duration(i*i) * abortSpacing)
		if e := c.tr.Send(pkt); e != nil && err == nil {
			err = fmt.Errorf("stream: sending close notice: %w", e)
		}
	}
	c.sendMu.Unlock()
	c.Close()
	return err
}

// Close tears everything down without notice to the peer and waits for the
// Conn's goroutines. It is idempotent.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.failLocked(ErrClosed)
	c.mu.Unlock()
	c.closeTransport()
	c.wg.Wait()
	return nil
}

// Done is closed when the Conn reaches its terminal state.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the Conn is live and after a clean end (see the package
// documentation); otherwise it tells why the Conn ended.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Conn) errLocked() error {
	if c.err != nil {
		return c.err
	}
	return ErrClosed
}

// Stats returns a snapshot of counters and estimates.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		BytesSent:           c.snd.end,
		BytesReceived:       c.rcv.readOff,
		PacketsSent:         c.stats.packetsSent,
		PacketsReceived:     c.stats.packetsRecv,
		Retransmits:         c.stats.retransmits,
		SpuriousRetransmits: c.stats.spurious,
		LostPackets:         c.stats.lost,
		DupPackets:          c.stats.dup,
		SRTT:                c.snd.rtt.srtt(),
		RTTVar:              c.snd.rtt.variance,
		MinRTT:              c.snd.rtt.min,
		RTO:                 c.snd.rtt.pto(),
		Cwnd:                c.snd.cc.cwnd,
		PacingRate:          c.snd.cc.pacingRate,
		BytesInFlight:       c.snd.bytesInFlight,
		SendBuffered:        int(c.snd.end - c.snd.una),
		RecvBuffered:        int(c.rcv.nxt - c.rcv.readOff),
	}
}

// failLocked moves the Conn to its terminal state; err nil is a clean end.
func (c *Conn) failLocked(err error) {
	if c.finished {
		return
	}
	c.finished, c.err = true, err
	if err != nil {
		c.log.Debug("stream: conn failed", "err", err)
	} else {
		c.log.Debug("stream: conn finished cleanly")
	}
	close(c.done)
	c.readable.Broadcast()
	c.writable.Broadcast()
	c.wakeSender()
}

func (c *Conn) closeTransport() {
	c.closeTrOnce.Do(func() { _ = c.tr.Close() }) // nothing is left to report it to
}

var _ io.ReadWriter = (*Conn)(nil)
