package pipe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/p2pcat/p2pcat/pipe/frame"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
)

// transfer links the stream to stdin/stdout (or the chat) until both
// directions are closed, then ends the stream gracefully. Every way out is
// bounded: the stream fails on its own when the peer falls silent (the idle
// timeout) or aborts.
//
// Ownership: transfer starts the uplink (stdin → stream) and the downlink
// (stream → stdout) and waits for both before it returns. Closing the
// stream ends their waits on it; a read of stdin or a write of stdout that
// is still pending then is ended by a past deadline where stdin or stdout
// has deadlines (an os.Pipe, a socket), which is cleared afterwards. Only
// a goroutine blocked in a read or write that nothing can interrupt (a
// terminal, a blocking fd, any other io.Reader) is left behind, and it
// returns at the call's return without touching anything (ioGate).
func transfer(ctx context.Context, st *stream.Conn, cfg Config) error {
	var upGate, downGate ioGate
	up, down := make(chan error, 1), make(chan error, 1)
	go upGate.run(up, func() error { return uplink(st, cfg, &upGate) })
	go downGate.run(down, func() error { return downlink(st, cfg, &downGate) })
	upEnded, downEnded := false, false // their results were received
	err := linkUntilEnd(ctx, st, cfg, up, down, &upEnded, &downEnded)
	st.Close() // idempotent; the stream's goroutines are gone after it
	if !upEnded {
		var set func(time.Time) error
		if d, ok := cfg.Stdin.(interface{ SetReadDeadline(time.Time) error }); ok && cfg.Chat == nil {
			set = d.SetReadDeadline
		}
		reclaim(&upGate, up, set)
	}
	if !downEnded {
		var set func(time.Time) error
		if d, ok := cfg.Stdout.(interface{ SetWriteDeadline(time.Time) error }); ok && cfg.Chat == nil {
			set = d.SetWriteDeadline
		}
		reclaim(&downGate, down, set)
	}
	return err
}

// linkUntilEnd runs the session until both directions are closed and the
// stream ended gracefully, or until it fails; *upEnded and *downEnded say
// which goroutines' results it received.
func linkUntilEnd(ctx context.Context, st *stream.Conn, cfg Config, up, down <-chan error, upEnded, downEnded *bool) error {
	upDone, downDone := false, false
	for !upDone || !downDone {
		select {
		case err := <-up:
			upDone, *upEnded = true, true
			var in *inputError
			switch {
			case errors.As(err, &in):
				st.Abort(stream.AbortInputFailed, reasonOf(in.err))
				return err
			case err != nil:
				return explain(err, cfg)
			}
		case err := <-down:
			downDone, *downEnded = true, true
			var out *outputError
			switch {
			case errors.As(err, &out) && errors.Is(out.err, syscall.EPIPE):
				st.Abort(stream.AbortOutputClosed, "its output was closed")
				return fmt.Errorf("%w; %s was told", ErrOutputClosed, cfg.Peer)
			case errors.As(err, &out):
				st.Abort(stream.AbortOutputFailed, reasonOf(out.err))
				return err
			case err != nil:
				return explain(err, cfg)
			}
			if cfg.OnPeerEOF != nil {
				cfg.OnPeerEOF()
			}
			if cfg.EndOnPeerEOF && !upDone {
				cfg.Status("%s left", cfg.Peer)
				st.CloseWrite()
				upDone = true // the uplink may still wait for stdin: transfer ends it
			}
		case <-st.Done():
			// The stream ended while a direction was still open: the peer
			// aborted or fell silent (a clean end needs both directions
			// closed, so there is always an error here).
			if err := st.Err(); err != nil {
				return explain(err, cfg)
			}
			return nil
		case <-ctx.Done():
			st.Abort(stream.AbortInterrupted, "interrupted")
			return ErrInterrupted
		}
	}
	// No deadline of our own: the stream fails when the peer falls silent
	// for the idle timeout, and a peer that answers but does not read yet
	// holds us as a full pipe would.
	if err := st.Shutdown(ctx); err != nil {
		if ctx.Err() != nil {
			st.Abort(stream.AbortInterrupted, "interrupted")
			return ErrInterrupted
		}
		return explain(err, cfg)
	}
	return nil
}

// ioGate lets transfer wait for one of its goroutines except while that
// goroutine is blocked in a call on stdin, stdout or the chat: the only
// waits that closing the stream does not end. The goroutine holds mu
// except during such a call (enter … leave), so that detach returns only
// once it is inside one or finished; after detach it makes no further call
// and drops the result of the call it is in. The zero value is ready; a nil
// *ioGate lets every call through (the data path's tests).
type ioGate struct {
	mu       sync.Mutex
	inCall   bool
	detached bool
}

// run runs f, the goroutine's body, and sends its result on done.
func (g *ioGate) run(done chan<- error, f func() error) {
	g.mu.Lock()
	err := f()
	g.mu.Unlock()
	done <- err
}

// enter precedes a call on stdin, stdout or the chat; false: transfer is
// done with this goroutine, which must not make it.
func (g *ioGate) enter() bool {
	if g == nil {
		return true
	}
	if g.detached {
		return false
	}
	g.inCall = true
	g.mu.Unlock()
	return true
}

// leave follows the call; false: transfer is done with this goroutine,
// which must drop what the call returned and return.
func (g *ioGate) leave() bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	g.inCall = false
	return !g.detached
}

// detach ends transfer's interest in the goroutine and reports whether it
// is blocked in a call.
func (g *ioGate) detach() (inCall bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.detached = true
	return g.inCall
}

// errDetached ends a goroutine that transfer detached.
var errDetached = errors.New("pipe: the session is over")

// reclaim waits for the goroutine behind g, whose result comes on done,
// once the stream is closed: at once when it is not in a call, else after
// a past deadline through setDeadline (nil when there are none) ends the
// call; the deadline is cleared after. A call that cannot be interrupted
// is left to return on its own.
func reclaim(g *ioGate, done <-chan error, setDeadline func(time.Time) error) {
	if !g.detach() {
		<-done
		return
	}
	if setDeadline == nil || setDeadline(time.Unix(1, 0)) != nil {
		return // os.ErrNoDeadline: a terminal, a blocking fd
	}
	<-done
	_ = setDeadline(time.Time{})
}

// inputError and outputError mark failures of stdin and stdout, as opposed
// to the stream's own.
type inputError struct{ err error }

func (e *inputError) Error() string { return "reading stdin: " + e.err.Error() }
func (e *inputError) Unwrap() error { return e.err }

type outputError struct{ err error }

func (e *outputError) Error() string { return e.err.Error() }
func (e *outputError) Unwrap() error { return e.err }

// reasonOf is what the peer is told about a local failure: the system's
// words for it, without our file names.
func reasonOf(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// explain turns the stream's error into one the user reads.
func explain(err error, cfg Config) error {
	var pa *stream.PeerAbortError
	switch {
	case errors.Is(err, stream.ErrUnconfirmedEnd):
		return fmt.Errorf("lost the connection to %s: no answer for %s (all our data reached it, but it never said it wrote it out)", cfg.Peer, cfg.IdleTimeout)
	case errors.Is(err, stream.ErrIdleTimeout):
		return fmt.Errorf("lost the connection to %s: no answer for %s", cfg.Peer, cfg.IdleTimeout)
	case errors.As(err, &pa):
		return &PeerEndedError{Peer: cfg.Peer, Code: pa.Code, Reason: pa.Reason}
	case errors.Is(err, secure.ErrPeerCancelled):
		return cfg.peerCancelled()
	}
	return err
}

// PeerEndedError: the peer aborted the session before it was complete.
type PeerEndedError struct {
	Peer   string
	Code   stream.AbortCode
	Reason string // the peer's words, safe to print
}

func (e *PeerEndedError) Error() string {
	why := ""
	switch e.Code {
	case stream.AbortInterrupted:
		why = "it was interrupted (Ctrl-C or SIGTERM)"
	case stream.AbortOutputClosed:
		why = "it stopped reading (its output was closed)"
	case stream.AbortOutputFailed:
		why = fmt.Sprintf("its output failed (%s)", e.Reason)
	case stream.AbortInputFailed:
		why = fmt.Sprintf("its input failed (%s)", e.Reason)
	default:
		why = fmt.Sprintf("%q", e.Reason)
	}
	return fmt.Sprintf("%s ended the session before it was complete: %s", e.Peer, why)
}

func (e *PeerEndedError) Unwrap() error { return stream.ErrPeerAborted }

// downlink writes the peer's bytes to stdout in whole lines (or hands them
// to the chat) until the peer's EOF. Stdout is written straight from the
// stream's receive buffer (Peek, then Consume what was written): no copy
// in between.
func downlink(st *stream.Conn, cfg Config, g *ioGate) error {
	if cfg.Chat != nil {
		lines := &frame.Lines{Emit: func(line []byte) {
			if g.enter() {
				cfg.Chat.Received(line)
				g.leave()
			}
		}}
		_, err := io.CopyBuffer(lines, st, make([]byte, 64<<10))
		lines.Flush()
		return err
	}
	// A partial line is held in the stream's buffer until its end arrives;
	// it is shorter than frame.DefaultMaxLine, which the receive buffer
	// (at least 64 KiB) always holds, so waiting for one byte more
	// cannot stall the stream.
	w := &frame.SpanWriter{W: &sinkWriter{w: cfg.Stdout, gate: g}}
	held := 0
	for {
		a, b, err := st.Peek(held + 1)
		atEOF := err == io.EOF
		if err != nil && !atEOF {
			return err
		}
		n, werr := w.WriteLines(a, b, atEOF)
		st.Consume(n)
		if werr != nil {
			return &outputError{werr}
		}
		held = len(a) + len(b) - n
		if atEOF && held == 0 {
			return nil
		}
	}
}

// uplink sends stdin (or the lines typed in the chat) as soon as it is read,
// then half-closes. Stdin is read straight into the stream's send buffer.
func uplink(st *stream.Conn, cfg Config, g *ioGate) error {
	if cfg.Chat != nil {
		for {
			if !g.enter() {
				return nil
			}
			line, err := cfg.Chat.ReadLine()
			if !g.leave() {
				return nil // the session is over: the line is dropped
			}
			if err != nil {
				return st.CloseWrite() // Ctrl-D or Ctrl-C: leave the chat
			}
			if _, err := st.Write([]byte(line + "\n")); err != nil {
				return nil // the session is ending; its error is reported by the downlink
			}
		}
	}
	in := &sourceReader{r: cfg.Stdin, gate: g}
	if _, err := st.ReadFrom(in); err != nil {
		if in.err != nil {
			return &inputError{in.err}
		}
		return nil // the session ended; the downlink reports why
	}
	return st.CloseWrite()
}

// sourceReader remembers r's failure, to tell it from the stream's.
type sourceReader struct {
	r    io.Reader
	gate *ioGate
	err  error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if !s.gate.enter() {
		return 0, errDetached
	}
	n, err := s.r.Read(p)
	if !s.gate.leave() {
		return 0, errDetached // the session is over: the bytes are dropped
	}
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// sinkWriter writes stdout through the downlink's gate.
type sinkWriter struct {
	w    io.Writer
	gate *ioGate
}

func (s *sinkWriter) Write(p []byte) (int, error) {
	if !s.gate.enter() {
		return 0, errDetached
	}
	n, err := s.w.Write(p)
	if !s.gate.leave() {
		return n, errDetached
	}
	return n, err
}
