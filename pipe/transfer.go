package pipe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/p2pcat/p2pcat/pipe/frame"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
)

// transfer links the stream to stdin/stdout (or the chat) until both
// directions are closed, then ends the stream gracefully. Every way out is
// bounded: the stream fails on its own when the peer falls silent (the idle
// timeout) or aborts, and transfer returns then even while the uplink is
// still blocked reading stdin.
func transfer(ctx context.Context, st *stream.Conn, cfg Config) error {
	down := make(chan error, 1)
	go func() { down <- downlink(st, cfg) }()
	up := make(chan error, 1)
	// The uplink goroutine may stay blocked reading stdin after the session
	// ends (a terminal nobody types into); the process exits around it.
	go func() { up <- uplink(st, cfg) }()

	upDone, downDone := false, false
	for !upDone || !downDone {
		select {
		case err := <-up:
			upDone = true
			var in *inputError
			switch {
			case errors.As(err, &in):
				st.Abort(stream.AbortInputFailed, reasonOf(in.err))
				return err
			case err != nil:
				return explain(err, cfg)
			}
		case err := <-down:
			downDone = true
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
			if cfg.EndOnPeerEOF && !upDone {
				cfg.Status("%s left", cfg.Peer)
				st.CloseWrite()
				upDone = true
			}
		case <-st.Done():
			// The stream ended while a direction was still open: the peer
			// aborted or fell silent (a clean end needs both directions
			// closed, so there is always an error here).
			if err := st.Err(); err != nil {
				st.Close()
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
		st.Close()
		return explain(err, cfg)
	}
	return nil
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
func downlink(st *stream.Conn, cfg Config) error {
	if cfg.Chat != nil {
		lines := &frame.Lines{Emit: cfg.Chat.Received}
		_, err := io.CopyBuffer(lines, st, make([]byte, 64<<10))
		lines.Flush()
		return err
	}
	// A partial line is held in the stream's buffer until its end arrives;
	// it is shorter than frame.DefaultMaxLine, which the receive buffer
	// (at least 64 KiB) always holds, so waiting for one byte more
	// cannot stall the stream.
	w := &frame.SpanWriter{W: cfg.Stdout}
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
func uplink(st *stream.Conn, cfg Config) error {
	if cfg.Chat != nil {
		for {
			line, err := cfg.Chat.ReadLine()
			if err != nil {
				return st.CloseWrite() // Ctrl-D or Ctrl-C: leave the chat
			}
			if _, err := st.Write([]byte(line + "\n")); err != nil {
				return nil // the session is ending; its error is reported by the downlink
			}
		}
	}
	in := &sourceReader{r: cfg.Stdin}
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
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}
