package pipe

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/p2pcat/p2pcat/pipe/frame"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
)

// transfer links the stream to stdin/stdout (or the chat) until both
// directions are closed, then ends the stream gracefully.
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
			if err != nil {
				st.Abort("local input failed")
				return explain(err, cfg)
			}
		case err := <-down:
			downDone = true
			if err != nil {
				st.Abort("local output failed")
				return explain(err, cfg)
			}
			if cfg.EndOnPeerEOF && !upDone {
				cfg.Status("%s left", cfg.Peer)
				st.CloseWrite()
				upDone = true
			}
		case <-ctx.Done():
			st.Abort("interrupted")
			return ErrInterrupted
		}
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.IdleTimeout)
	defer cancel()
	if err := st.Shutdown(sctx); err != nil {
		st.Close()
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		return explain(err, cfg)
	}
	return nil
}

func explain(err error, cfg Config) error {
	switch {
	case errors.Is(err, stream.ErrIdleTimeout), errors.Is(err, context.DeadlineExceeded):
		// The second: the peer did not acknowledge the end of our data
		// within the idle timeout (Shutdown).
		return fmt.Errorf("lost the connection to %s: no answer for %s", cfg.Peer, cfg.IdleTimeout)
	case errors.Is(err, stream.ErrPeerAborted):
		return fmt.Errorf("%s ended the session before it was complete: %w", cfg.Peer, err)
	case errors.Is(err, secure.ErrAuth):
		return err
	}
	return err
}

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
			return werr
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
			return fmt.Errorf("reading stdin: %w", in.err)
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
