package term

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"
)

// Chat is the interactive two-person chat on a terminal: a prompt line the
// user edits, the peer's lines printed above it in color with the peer's
// name (without breaking the line being typed), and status messages.
// Display rules:
//   - peer text is sanitized first: escape sequences are removed and other
//     control characters shown as '?', so a peer cannot drive our terminal;
//   - the peer's name is shown in cyan, status messages in dim yellow.
type Chat struct {
	in, out *os.File
	t       *term.Terminal
	peer    string
	mu      sync.Mutex
	started bool
	restore func()
}

// NewChat returns the chat on a terminal (in and out must be the same
// one), still in its normal mode: until Start, Ctrl-C interrupts p2pcat
// as usual and status lines are plain lines.
func NewChat(in, out *os.File, peer string) (*Chat, error) {
	rw := struct {
		io.Reader
		io.Writer
	}{in, out}
	c := &Chat{in: in, out: out, t: term.NewTerminal(rw, "> "), peer: Sanitize(peer)}
	if w, h, err := term.GetSize(int(out.Fd())); err == nil {
		c.t.SetSize(w, h)
	}
	return c, nil
}

// Start puts the terminal in raw mode (restored by Close) and shows the
// prompt: the chat begins. From then on Ctrl-C is a key that leaves the
// chat. It is idempotent.
func (c *Chat) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return nil
	}
	fd := int(c.in.Fd())
	old, err := term.MakeRaw(fd)
	if err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	c.started = true
	c.restore = func() { term.Restore(fd, old) }
	return nil
}

// ReadLine returns the next line the user typed (without newline), or
// io.EOF when the user leaves (Ctrl-D or Ctrl-C).
func (c *Chat) ReadLine() (string, error) { return c.t.ReadLine() }

// Received shows one line from the peer.
func (c *Chat) Received(line []byte) {
	c.print(fmt.Sprintf("\x1b[36m%s:\x1b[0m %s\n", c.peer, Sanitize(string(line))))
}

// Status shows a message from p2pcat itself.
func (c *Chat) Status(format string, args ...any) {
	c.print(fmt.Sprintf("\x1b[2;33m* %s\x1b[0m\n", fmt.Sprintf(format, args...)))
}

func (c *Chat) print(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		fmt.Fprint(c.out, s) // no prompt to redraw yet
		return
	}
	c.t.Write([]byte(s))
}

// Close restores the terminal. It is idempotent.
func (c *Chat) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.restore != nil {
		c.restore()
		c.restore = nil
		fmt.Fprint(os.Stderr, "\r\n")
	}
}

// Sanitize makes text from the peer safe to print on a terminal: ANSI/VT
// escape sequences (CSI, OSC, DCS and two-byte ESC sequences) are removed,
// other control characters (C0 except tab, DEL, C1) become '?', and invalid
// UTF-8 becomes U+FFFD.
func Sanitize(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b || r == 0x9b || r == 0x9d || r == 0x90:
			i = skipEscape(s, i)
			continue
		case r == utf8.RuneError && size == 1:
			b.WriteRune(utf8.RuneError)
		case r == '\t':
			b.WriteRune(r)
		case unicode.IsControl(r) || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			b.WriteByte('?')
		case unicode.Is(unicode.Bidi_Control, r):
			b.WriteByte('?') // no right-to-left overrides that disguise text
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// skipEscape returns the index just after the escape sequence starting at i.
func skipEscape(s string, i int) int {
	r, size := utf8.DecodeRuneInString(s[i:])
	j := i + size
	kind := r
	if r == 0x1b {
		if j >= len(s) {
			return j
		}
		switch s[j] {
		case '[':
			kind = 0x9b
			j++
		case ']':
			kind = 0x9d
			j++
		case 'P', 'X', '^', '_':
			kind = 0x90
			j++
		default:
			return j + 1 // ESC and one character
		}
	}
	switch kind {
	case 0x9b: // CSI: parameters and intermediates, then a final byte 0x40-0x7e
		for j < len(s) {
			c := s[j]
			j++
			if c >= 0x40 && c <= 0x7e {
				break
			}
		}
		return j
	default: // OSC, DCS and friends: until BEL or ST (ESC \)
		for j < len(s) {
			if s[j] == 0x07 {
				return j + 1
			}
			if s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\' {
				return j + 2
			}
			if s[j] == 0x9c {
				return j + 1
			}
			j++
		}
		return j
	}
}
