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
	case errors.Is(err, stream.ErrIdleTimeout):
		return fmt.Errorf("lost the connection to %s: no answer for %s", cfg.Peer, cfg.IdleTimeout)
	case errors.Is(err, stream.ErrPeerAborted):
		return fmt.Errorf("%s ended the session before it was complete: %w", cfg.Peer, err)
	case errors.Is(err, secure.ErrAuth):
		return err
	}
	return err
}

// downlink copies the peer's bytes to stdout in whole lines (or to the
// chat) until the peer's EOF.
func downlink(st *stream.Conn, cfg Config) error {
	buf := make([]byte, 256<<10)
	if cfg.Chat != nil {
		lines := &frame.Lines{Emit: cfg.Chat.Received}
		_, err := io.CopyBuffer(lines, st, buf)
		lines.Flush()
		return err
	}
	lw := &frame.LineWriter{W: cfg.Stdout}
	if _, err := io.CopyBuffer(lw, onlyReader{st}, buf); err != nil {
		return err
	}
	return lw.Flush()
}

// uplink sends stdin (or the lines typed in the chat) as soon as it is read,
// then half-closes.
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
	buf := make([]byte, 64<<10)
	for {
		n, err := cfg.Stdin.Read(buf)
		if n > 0 {
			if _, werr := st.Write(buf[:n]); werr != nil {
				return nil // the session ended; the downlink reports why
			}
		}
		if err == io.EOF {
			return st.CloseWrite()
		}
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
}

// onlyReader hides the stream's other methods from io.CopyBuffer so it
// uses our buffer (and never a WriterTo/ReaderFrom shortcut).
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }
