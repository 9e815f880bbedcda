// Package stream turns the authenticated datagrams of a Transport into a
// reliable, ordered, flow- and congestion-controlled byte stream in each
// direction, with TCP-like half-close.
//
// Reliability is selective repeat, QUIC style (RFC 9000/9002): packet
// numbers are never reused, acks carry packet-number ranges, losses are
// detected by a packet threshold (3) and a time threshold (9/8 RTT) plus a
// probe timeout, and lost data is sent again in new packets. Congestion
// control is BBR-like (bbr.go) and paced. Flow control: each ack carries
// the receive window, so the sender never has more than RecvBuffer bytes
// beyond what the peer's reader consumed, and Write blocks while the
// SendBuffer is full: memory is bounded on both sides.
//
// # Ending a session
//
// A side is complete when its own data and FIN were acknowledged, the
// peer's FIN arrived, and every byte before it was handed to Read. The
// peer's acknowledgements only say that our bytes reached its buffer; only
// its DONE says that it handed them all to its reader. So:
//
//   - A complete side sends DONE, again after a probe timeout (PTO),
//     doubling up to the keepalive interval, and at once whenever the peer
//     sends an ack-eliciting packet (a retransmission shows it has not seen
//     DONE yet). DONE is ack-eliciting.
//   - DONE also acknowledges the whole stream (the peer is complete, so it
//     holds all our data and FIN), so a side whose last ack was lost
//     becomes complete on the peer's DONE.
//   - A complete side finishes, cleanly, once it has the peer's DONE and
//     the peer acknowledged a packet that carried ours. With the peer's
//     DONE but no acknowledgement of ours, it lingers for 3 × PTO,
//     extended to 3 × PTO after each packet from the peer but never past
//     maxLinger (3 s), answering with DONE, and then finishes cleanly
//     anyway: the peer confirmed that it has everything, and only lacks
//     our word that we do.
//   - A complete side without the peer's DONE waits for it as long as the
//     peer is alive (its acknowledgements of our DONEs and keepalives keep
//     the idle timeout away: a peer whose stdout drains slowly is not
//     dead). When the peer falls silent first, the Conn fails with
//     ErrUnconfirmedEnd (which matches ErrIdleTimeout): everything of ours
//     reached the peer, but it never said it wrote it out.
//
// Finishing this way is a clean end: Done is closed, Err returns nil and
// Shutdown returns nil. This replaces TCP's TIME_WAIT guesswork: a clean
// end means every byte was delivered to the other side's reader and
// acknowledged, both ways.
package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/internal/textsafe"
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
	// flow-control window). Default 8 MiB each: enough for ~200 MB/s at
	// 40 ms RTT, and a side stays under ~20 MiB. Minimum 64 KiB.
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
	snd        sendState
	rcv        recvState
	rtt        rttEstimator
	cc         bbr
	stats      counters
	ackScr     [maxAckRanges]pnRange
	placeFrame frame // placeBody's, which runs on the receive loop
	pmtu       pmtuState

	lastRecv   time.Duration
	lastSent   time.Duration
	sleepUntil time.Duration // when the send loop wakes on its own; 0: running

	complete     bool
	completeAt   time.Duration
	lingerEnd    time.Duration // with the peer's DONE: finish by then even without an ack of ours
	doneNext     time.Duration
	doneEvery    time.Duration // DONE's resend interval, doubling up to the keepalive
	doneSent     int
	donePNs      [8]uint64 // the last packets that carried our DONE
	doneAcked    bool      // the peer acknowledged one of them
	finished     bool      // terminal
	err          error
	done         chan struct{}
	wake         chan struct{}
	closeTrOnce  sync.Once
	closeErr     error
	wg           sync.WaitGroup
	shutdownOnce sync.Once
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
	c.snd.buf = newByteRing(sendBuf)
	c.rcv.buf = newByteRing(recvBuf)
	c.rcv.advertised = uint64(recvBuf)
	// Until the first ack, assume the peer's window is the smallest any
	// Conn has.
	c.snd.peerWindow = minBuffer
	c.cc = newBBR(c.maxPayload)
	c.bufSize = c.maxPayload
	if lt, ok := tr.(LargeTransport); ok {
		c.payloadLimit = lt.PayloadLimit()
		c.pmtu = newPMTUState(c.maxPayload, c.payloadLimit)
		if len(c.pmtu.candidates) > 0 {
			c.bufSize = c.pmtu.candidates[0]
		}
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
		SRTT:                c.rtt.srtt(),
		RTTVar:              c.rtt.variance,
		MinRTT:              c.rtt.min,
		RTO:                 c.rtt.pto(),
		Cwnd:                c.cc.cwnd,
		PacingRate:          c.cc.pacingRate,
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
	c.closeTrOnce.Do(func() { c.closeErr = c.tr.Close() })
}

// recvLoop reads datagrams and applies them. It owns rbuf.
func (c *Conn) recvLoop() {
	defer c.wg.Done()
	rbuf := make([]byte, max(64<<10, c.bufSize))
	abuf := make([]byte, 0, c.maxPayload)
	var f frame
	place := c.placeBody // bound once: a method value allocates
	for {
		var n int
		var body []byte // a DATA frame's bytes, already in the receive buffer
		var err error
		if c.split != nil {
			n, body, err = c.split.RecvPlaced(rbuf, place)
		} else {
			n, err = c.tr.Recv(rbuf)
		}
		if err != nil {
			c.mu.Lock()
			c.failLocked(fmt.Errorf("stream: transport: %w", err))
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		wantAck, wantSend := c.handlePacketLocked(rbuf[:n], body, &f)
		fin := c.finished
		c.mu.Unlock()
		if fin {
			return
		}
		if wantAck {
			// Send the ack from here if the send loop is not busy: this
			// saves a goroutine hand-off per ack.
			if c.sendMu.TryLock() {
				c.mu.Lock()
				var pkt []byte
				if c.rcv.ackNow && !c.finished {
					pkt = c.buildPureAckLocked(abuf[:0])
				}
				c.mu.Unlock()
				if pkt != nil {
					_ = c.tr.Send(pkt) // a failed send is a lost packet
				}
				c.sendMu.Unlock()
			} else {
				wantSend = true
			}
		}
		if wantSend {
			c.wakeSender()
		}
	}
}

// handlePacketLocked applies one received packet. body, when not nil, is
// the packet's last frame's bytes, which follow p and already lie in the
// receive buffer where they belong (placeBody). It reports whether an
// immediate ack is due and whether the send loop should run.
func (c *Conn) handlePacketLocked(p, body []byte, f *frame) (ackNow, wake bool) {
	if c.finished {
		return false, false
	}
	now := c.now()
	pn, frames, err := parsePacketNumber(p)
	if err != nil {
		c.stats.badFrames++
		return false, false
	}
	// Validate the whole packet before applying any of it.
	eliciting, hasData, dataOff, dataEnd := false, false, uint64(0), uint64(0)
	bodyLen, claimed := -1, false
	if body != nil {
		bodyLen = len(body)
	}
	for rest := frames; len(rest) > 0; {
		if rest, err = parseFrameWith(rest, f, body, bodyLen); err != nil {
			c.stats.badFrames++
			c.log.Debug("stream: dropping malformed packet", "err", err)
			return false, false
		}
		claimed = claimed || f.claimed
		switch f.typ {
		case frameData, frameDataFin:
			if hasData { // the wire format allows one per packet
				c.stats.badFrames++
				return false, false
			}
			hasData, dataOff, dataEnd = true, f.offset, f.offset+uint64(len(f.data))
			eliciting = true
		case framePing, frameDone, frameClose:
			eliciting = true
		}
	}
	if body != nil && !claimed {
		c.stats.badFrames++ // a body no DATA frame claims
		return false, false
	}
	c.stats.packetsRecv++
	c.lastRecv = now
	r := &c.rcv
	if hasData && (dataEnd > r.window() || dataOff > r.nxt && r.ooo.len() >= maxOOOSpans) {
		// No room for it: leave it unacknowledged, so it comes again.
		c.stats.badFrames++
		return false, false
	}
	dup, reordered := r.onPacketNumber(pn, now)
	if dup {
		c.stats.dup++
		if eliciting {
			r.ackWanted, r.ackNow = true, true // our ack may have been lost
		}
		return r.ackNow, false
	}
	for rest := frames; len(rest) > 0; {
		rest, _ = parseFrameWith(rest, f, body, bodyLen)
		switch f.typ {
		case frameAck:
			if c.onAckLocked(f, now) {
				wake = true
			}
			if c.doneSent > 0 && !c.doneAcked && c.ackCoversDoneLocked(f) {
				c.doneAcked = true
				wake = true
			}
		case frameData, frameDataFin:
			fin := f.typ == frameDataFin
			readable, old := r.onData(f.offset, f.data, fin)
			if readable {
				c.readable.Broadcast()
			}
			if old || fin || f.offset > r.nxt {
				r.ackNow = true // duplicate, FIN or a hole: tell the sender now
			}
		case frameDone:
			if c.snd.finSent && !r.peerDone {
				// The peer is complete: it holds our whole stream, and
				// handed all of it to its reader.
				r.peerDone = true
				c.snd.una = c.snd.end
				c.snd.finAcked = true
				c.snd.clearInFlight()
				c.writable.Broadcast()
				if c.complete {
					c.lingerEnd = now + min(3*c.rtt.pto(), maxLinger)
					c.doneNext = now // answer at once
				}
				c.log.Debug("stream: the peer confirmed the end", "complete", c.complete)
				wake = true
			}
		case frameClose:
			code := AbortCode(f.code)
			if f.code > uint64(AbortOutputClosed) {
				code = AbortError
			}
			c.failLocked(&PeerAbortError{Code: code, Reason: textsafe.Line(string(f.reason))})
			return false, false
		}
	}
	if eliciting && c.complete {
		// The peer still sends: it has not seen our DONE (which also
		// acknowledges everything). Answer with DONE now, and, lingering
		// with its DONE, stay around while it keeps trying, within
		// maxLinger.
		c.doneNext = now
		if r.peerDone {
			c.lingerEnd = min(max(c.lingerEnd, now+3*c.rtt.pto()), c.completeAt+maxLinger)
		}
		wake = true
	}
	if eliciting {
		r.ackWanted = true
		r.elicited++
		r.elicitedAll++
		every, delay := ackEveryPackets, maxAckDelay
		if r.elicitedAll > decimateAfter {
			every, delay = decimatedAckEvery, decimatedAckDelay
		}
		if r.elicited >= every || reordered {
			r.ackNow = true
		}
		if r.elicited == 1 {
			r.ackDeadline = now + delay
			if c.sleepUntil != 0 && r.ackDeadline < c.sleepUntil {
				wake = true
			}
		}
	}
	return r.ackWanted && r.ackNow, wake
}

// buildPureAckLocked builds a packet holding only an ACK frame.
func (c *Conn) buildPureAckLocked(b []byte) []byte {
	now := c.now()
	b = binary.AppendUvarint(b, c.snd.nextPN)
	b = c.appendAckLocked(b, now, c.maxPayload-len(b))
	c.recordSentLocked(c.snd.ring.push(), now, len(b), false)
	return b
}

// appendAckLocked appends an ACK frame no longer than room.
func (c *Conn) appendAckLocked(b []byte, now time.Duration, room int) []byte {
	r := &c.rcv
	nr := 0
	for i := len(r.pns.s) - 1; i >= 0 && nr < maxAckRanges; i-- {
		if maxAckLen(nr+1) > room {
			break
		}
		c.ackScr[nr] = pnRange{r.pns.s[i].lo, r.pns.s[i].hi - 1}
		nr++
	}
	if nr == 0 {
		return b
	}
	delay := uint64(max(now-r.largestAt, 0) / time.Microsecond)
	r.advertised = r.window()
	b = appendAck(b, r.largestPN, delay, r.streamAck(), r.advertised, c.ackScr[:nr])
	r.ackWanted, r.ackNow, r.elicited = false, false, 0
	return b
}

// recordSentLocked fills the ring record of the packet numbered nextPN.
func (c *Conn) recordSentLocked(p *sentPacket, now time.Duration, size int, eliciting bool) {
	s := &c.snd
	s.nextPN++
	c.stats.packetsSent++
	c.lastSent = now
	p.sentAt = now
	p.size = uint16(size)
	if !eliciting {
		p.state = pktAcked // nothing to wait for
		s.ring.popSettled()
		return
	}
	p.ackEliciting, p.inFlight = true, true
	if s.bytesInFlight == 0 {
		s.firstSentAt, s.deliveredAt = now, now
	}
	p.delivered, p.deliveredAt, p.firstSentAt = s.delivered, s.deliveredAt, s.firstSentAt
	p.appLimited = s.appLimitedUntil > 0
	s.bytesInFlight += size
	s.elicitingInFlight++
	s.lastElicitingAt = now
	// Pacing: allow a burst of one quantum after an idle period, and at
	// least what the timer's granularity makes us miss: Go timers may fire
	// a millisecond late, and a pacer that loses that credit sends below
	// its rate, which BBR then measures as the path's bandwidth.
	burst := max(c.cc.pacingInterval(c.cc.quantum()), pacerGranularity)
	if s.paceNext < now-burst {
		s.paceNext = now - burst
	}
	s.paceNext += c.cc.pacingInterval(size)
}

// sendLoop sends data, acks and control packets, and runs every timer.
func (c *Conn) sendLoop() {
	defer c.wg.Done()
	defer c.closeTransport()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Packets are built back to back in one arena, so the layer below can
	// hand them to the kernel in one GSO send without copying them.
	arena := make([]byte, batchBytes+c.bufSize)
	var bufs, bodies [sendBatch][]byte
	for {
		c.sendMu.Lock()
		c.mu.Lock()
		now := c.now()
		n, more, next := c.produceLocked(now, arena, &bufs, &bodies)
		pinned := c.snd.pinned
		finished := c.finished
		if more {
			c.sleepUntil = 0
		} else if next == 0 {
			c.sleepUntil = sleepForever
		} else {
			c.sleepUntil = next
		}
		c.mu.Unlock()
		// A failed send is a lost packet: recovery resends it.
		if c.split != nil && n > 0 {
			_ = c.split.SendSplitBatch(bufs[:n], bodies[:n])
			clear(bodies[:n])
		} else if bt, ok := c.tr.(BatchTransport); ok && n > 1 {
			_ = bt.SendBatch(bufs[:n])
		} else {
			for i := 0; i < n; i++ {
				_ = c.tr.Send(bufs[i])
			}
		}
		if pinned {
			// The bodies are sealed: the writer may reuse their room.
			c.mu.Lock()
			if c.snd.pin < c.snd.una {
				c.writable.Broadcast() // the pin held the writer back
			}
			c.snd.pinned = false
			c.mu.Unlock()
		}
		c.sendMu.Unlock()
		if finished {
			return
		}
		if more {
			continue
		}
		if next > 0 {
			timer.Reset(max(next-now, 0))
		} else {
			timer.Stop()
		}
		select {
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// produceLocked runs due timers and builds the next burst of packets into
// arena, back to back, with bufs[:n] pointing at them. A burst is one
// packet, or as many as fit in the pacer's quantum (about 1 ms of data at
// the pacing rate, at least two packets, at most batchBytes: one GSO
// send) and sendBatch, so that bursts on a slow path stay small. It
// reports whether more could be sent at once, and otherwise when it wants
// to run next (0: only when woken).
//
// With a SplitTransport a DATA frame's bytes are not copied into the arena:
// bodies[i] is packet i's body in the send buffer (nil when the packet is
// whole in bufs[i]), and the buffer is pinned (sendState.pinned) until the
// batch is sent.
func (c *Conn) produceLocked(now time.Duration, arena []byte, bufs, bodies *[sendBatch][]byte) (n int, more bool, next time.Duration) {
	if c.finished {
		return 0, false, 0
	}
	s, r := &c.snd, &c.rcv
	// We need the peer until we are complete and have its DONE: until
	// then its silence for the idle timeout ends the Conn, and we keep it
	// talking (keepalives, DONEs), so that a live peer is never taken for
	// a dead one.
	needPeer := !(c.complete && r.peerDone)
	if needPeer && now-c.lastRecv >= c.idle {
		if c.complete {
			c.failLocked(ErrUnconfirmedEnd)
		} else {
			c.failLocked(ErrIdleTimeout)
		}
		return 0, false, 0
	}
	if s.lossTime != 0 && now >= s.lossTime {
		c.detectLossesLocked(now)
		s.ring.popSettled()
	}
	if d := c.ptoDeadline(); d != 0 && now >= d {
		c.onPTOLocked()
	}
	c.checkPathLocked()

	// Close handshake (package documentation).
	sendDone, finishAfter := false, false
	if !c.complete && s.finAcked && r.allDelivered() {
		c.complete, c.completeAt = true, now
		c.lingerEnd = now + min(3*c.rtt.pto(), maxLinger)
		c.doneNext, c.doneEvery = now, c.rtt.pto()
		c.log.Debug("stream: complete", "peerDone", r.peerDone)
	}
	if c.complete {
		switch {
		case r.peerDone && (c.doneAcked || now >= c.lingerEnd):
			if !r.ackWanted {
				c.failLocked(nil)
				return 0, false, 0
			}
			// Acknowledge the peer's DONE first, so that it need not
			// linger for ours.
			r.ackNow, finishAfter = true, true
		case now >= c.doneNext:
			sendDone = true
			c.doneNext = now + c.doneEvery
			c.doneEvery = min(2*c.doneEvery, c.keepalive)
		}
	}
	ping := needPeer && now-c.lastSent >= c.keepalive

	used := 0  // bytes of arena taken
	total := 0 // bytes of packets built, bodies included
	if c.pmtu.due(s) && !c.complete {
		bufs[n] = c.buildMTUProbeLocked(arena[:0], now)
		used += len(bufs[n])
		total += len(bufs[n])
		n++
	}
	budget := min(c.cc.quantum(), batchBytes)
	for {
		if n == sendBatch || n > 0 && total+c.maxPayload > budget {
			more = true
			break
		}
		probe := s.probes > 0
		hasData := s.hasRetx() || s.newDataReady()
		canData := hasData && (probe || (s.bytesInFlight+c.maxPayload <= c.cc.cwnd && s.paceNext <= now))
		ackDue := r.ackWanted && (r.ackNow || now >= r.ackDeadline)
		pingNow := (ping || (probe && !hasData)) && !canData
		if !canData && !sendDone && !pingNow && !ackDue {
			break
		}
		b := binary.AppendUvarint(arena[used:used], s.nextPN)
		if r.ackWanted {
			b = c.appendAckLocked(b, now, min(c.maxPayload-len(b)-32, maxAckLen(maxAckRanges)))
		}
		eliciting := false
		if sendDone {
			b = append(b, frameDone)
			c.donePNs[c.doneSent%len(c.donePNs)] = s.nextPN
			c.doneSent++
			sendDone = false
		}
		if pingNow {
			b = append(b, framePing)
			eliciting, ping = true, false
		}
		p := s.ring.push()
		var body []byte
		if canData {
			b, body = c.appendDataLocked(b, p)
			eliciting = true
		}
		c.recordSentLocked(p, now, len(b)+len(body), eliciting)
		if probe && eliciting {
			s.probes--
		}
		bufs[n], bodies[n] = b, body
		used += len(b)
		total += len(b) + len(body)
		n++
		if finishAfter {
			c.failLocked(nil)
			return n, false, 0
		}
	}

	// Next wake-up: the earliest timer.
	next = c.lastRecv + c.idle
	if !needPeer {
		next = 0
	}
	at := func(t time.Duration) {
		if t > 0 && (next == 0 || t < next) {
			next = t
		}
	}
	if needPeer {
		at(c.lastSent + c.keepalive)
	}
	at(s.lossTime)
	at(c.ptoDeadline())
	if r.ackWanted {
		at(r.ackDeadline)
	}
	if c.complete {
		if r.peerDone {
			at(c.lingerEnd)
		}
		at(c.doneNext)
	}
	hasData := s.hasRetx() || s.newDataReady()
	if hasData && s.bytesInFlight+c.maxPayload <= c.cc.cwnd && !more {
		at(s.paceNext)
	}
	if !hasData && s.bytesInFlight+c.maxPayload <= c.cc.cwnd {
		// Nothing to send though the window allows: rate samples taken
		// now do not measure the path.
		s.appLimitedUntil = max(s.delivered+uint64(s.bytesInFlight), 1)
	}
	return n, more, next
}

// ackCoversDoneLocked reports whether the ACK frame f acknowledges one of
// the last packets that carried our DONE.
func (c *Conn) ackCoversDoneLocked(f *frame) bool {
	for i := range min(c.doneSent, len(c.donePNs)) {
		pn := c.donePNs[i]
		for _, r := range f.ranges[:f.nRanges] {
			if pn >= r.lo && pn <= r.hi {
				return true
			}
		}
	}
	return false
}

// appendDataLocked appends one DATA frame, lost data first, and fills the
// record p.
func (c *Conn) appendDataLocked(b []byte, p *sentPacket) (head, body []byte) {
	s := &c.snd
	room := c.maxPayload - len(b)
	rr, retx := s.nextRetx()
	off, avail := s.nxt, int(min(s.end-s.nxt, s.peerWindow-min(s.peerWindow, s.nxt)))
	finAll := s.finWritten && s.nxt+uint64(avail) == s.end // all that is left, FIN included
	if retx {
		off, avail, finAll = rr.off, int(rr.n), rr.fin
	}
	n := min(avail, room-dataHeaderLen(off, avail))
	// A body sealed straight from the send buffer (SplitTransport) costs a
	// byte on the wire: give it up only when the packet goes split.
	split := false
	if c.split != nil && n >= splitMinBody && len(b)+dataHeaderLen(off, n) <= splitMaxHead {
		k := n
		if len(b)+dataHeaderLen(off, k)+k == c.maxPayload {
			k--
		}
		if split = len(s.buf.span(off, k)) == k; split {
			n = k
		}
	}
	fin := finAll && n == avail
	if retx {
		rr.off += uint64(n)
		rr.n -= uint32(n)
		if rr.n == 0 && (fin || !rr.fin) {
			s.retxHead++
		}
		c.stats.retransmits++
	} else {
		s.nxt += uint64(n)
		if fin {
			s.finSent = true
		}
	}
	p.off, p.n, p.fin = off, uint32(n), fin
	b = appendDataHeader(b, fin, off, n)
	if split {
		// Kept for the batch being built: the writer stays off this room
		// until the batch is sealed (even if an ack frees it meanwhile).
		if !s.pinned || off < s.pin {
			s.pin = off
		}
		s.pinned = true
		return b, s.buf.span(off, n)
	}
	return s.buf.appendTo(b, off, n), nil
}

var _ io.ReadWriter = (*Conn)(nil)
