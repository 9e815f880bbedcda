// Package frame is the line framing of the pipe's output.
//
// Rules (the default line mode):
//   - The sender sends whatever stdin gives as soon as it is read: a line
//     is on the wire the moment it is complete, and nothing waits for a
//     buffer to fill.
//   - The receiver writes whole lines only: bytes up to the last newline
//     it holds. The rest waits for its newline, so output never shows half
//     a line next to something else.
//   - A line longer than the buffer (binary data, a huge line) is written
//     in buffer-sized pieces, back to back; since nothing else writes to the
//     output in between, the pieces rejoin into the original bytes.
//   - At EOF whatever is left (a last line without newline) is written as is.
//
// The bytes that come out are exactly the bytes that went in.
//
// The package owns these rules and the line splitting for the chat
// (Lines); it sees bytes only, never the stream or the terminal (pipe
// connects them). It imports only the standard library.
package frame

import (
	"bytes"
	"io"
)

// DefaultMaxLine is the longest partial line held back before it is written
// in pieces.
const DefaultMaxLine = 64 << 10

// SpanWriter applies the rules above for a reader that keeps its bytes in
// its own buffer (pipe/stream's receive buffer, see stream.Conn.Peek): it
// writes whole lines straight from that buffer and reports how many bytes
// it wrote; the rest, a partial line, stays with the caller, who presents
// it again with the bytes that follow. Only a line
// that straddles the end of a ring buffer (a, then b) is copied, into a
// scratch buffer of at most MaxLine bytes. Every Write to W is whole lines,
// a piece of a line of at least MaxLine bytes, or the end of the stream.
type SpanWriter struct {
	W       io.Writer
	MaxLine int // 0: DefaultMaxLine
	scratch []byte
}

// WriteLines writes the whole lines at the start of a followed by b (b
// continues a; either may be empty) and returns how many bytes of a then b
// it wrote. A partial line of MaxLine bytes or more is written as it is
// (a piece of a long line); atEOF writes everything.
func (w *SpanWriter) WriteLines(a, b []byte, atEOF bool) (int, error) {
	max := w.MaxLine
	if max <= 0 {
		max = DefaultMaxLine
	}
	done := 0
	write := func(p []byte) error {
		if len(p) == 0 {
			return nil
		}
		_, err := w.W.Write(p)
		if err == nil {
			done += len(p)
		}
		return err
	}
	// a alone: its whole lines; its partial last line joins b's first.
	cut := linesCut(a, max, atEOF && len(b) == 0)
	if err := write(a[:cut]); err != nil {
		return done, err
	}
	if len(b) == 0 {
		return done, nil
	}
	if rest := a[cut:]; len(rest) > 0 {
		// The line that straddles the wrap, or its first MaxLine bytes.
		j := bytes.IndexByte(b, '\n') + 1
		switch {
		case j > 0 && len(rest)+j <= max:
		case j > 0 || len(rest)+len(b) >= max:
			j = max - len(rest)
		case atEOF:
			j = len(b)
		default:
			return done, nil // a partial line: wait for its end
		}
		w.scratch = append(append(w.scratch[:0], rest...), b[:j]...)
		if err := write(w.scratch); err != nil {
			return done, err
		}
		b = b[j:]
	}
	return done, write(b[:linesCut(b, max, atEOF)])
}

// linesCut returns how much of p to write: up to its last newline, or all
// of it when atEOF or when the partial line after that newline is max
// bytes or longer.
func linesCut(p []byte, max int, atEOF bool) int {
	cut := bytes.LastIndexByte(p, '\n') + 1
	if atEOF || len(p)-cut >= max {
		return len(p)
	}
	return cut
}

// Lines splits a byte stream into lines for display (the chat). Each
// complete line, without its newline, is passed to emit; a line longer than
// max is emitted in pieces. Flush emits the rest.
type Lines struct {
	Emit func(line []byte)
	Max  int
	buf  []byte
}

func (l *Lines) Write(p []byte) (int, error) {
	max := l.Max
	if max <= 0 {
		max = DefaultMaxLine
	}
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.Emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	for len(l.buf) >= max {
		l.Emit(l.buf[:max])
		l.buf = l.buf[max:]
	}
	l.buf = append([]byte(nil), l.buf...)
	return len(p), nil
}

// Flush emits a last line without newline, if any.
func (l *Lines) Flush() {
	if len(l.buf) > 0 {
		l.Emit(l.buf)
		l.buf = nil
	}
}
