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
package frame

import (
	"bytes"
	"io"
)

// DefaultMaxLine is the longest partial line held back before it is written
// in pieces.
const DefaultMaxLine = 64 << 10

// LineWriter writes only whole lines to W until Flush. It is not safe for
// concurrent use.
type LineWriter struct {
	W       io.Writer
	MaxLine int // 0: DefaultMaxLine
	buf     []byte
}

// Write takes p and writes out every complete line it now holds.
func (lw *LineWriter) Write(p []byte) (int, error) {
	max := lw.MaxLine
	if max <= 0 {
		max = DefaultMaxLine
	}
	n := len(p)
	if len(lw.buf) == 0 {
		// Fast path: write straight from p without copying.
		cut := bytes.LastIndexByte(p, '\n') + 1
		if len(p)-cut >= max {
			cut = len(p)
		}
		if cut > 0 {
			if _, err := lw.W.Write(p[:cut]); err != nil {
				return 0, err
			}
		}
		lw.buf = append(lw.buf, p[cut:]...)
		return n, nil
	}
	lw.buf = append(lw.buf, p...)
	cut := bytes.LastIndexByte(lw.buf, '\n') + 1
	if len(lw.buf)-cut >= max {
		cut = len(lw.buf)
	}
	if cut > 0 {
		if _, err := lw.W.Write(lw.buf[:cut]); err != nil {
			return 0, err
		}
		lw.buf = append(lw.buf[:0], lw.buf[cut:]...)
	}
	return n, nil
}

// Flush writes what is held, a last line without newline.
func (lw *LineWriter) Flush() error {
	if len(lw.buf) == 0 {
		return nil
	}
	_, err := lw.W.Write(lw.buf)
	lw.buf = lw.buf[:0]
	return err
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
