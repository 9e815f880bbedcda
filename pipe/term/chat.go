package term

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/term"

	"github.com/p2pcat/p2pcat/internal/textsafe"
)

// Chat is the interactive two-person chat on a terminal: a prompt line the
// user edits, the peer's lines printed above it in color with the peer's
// name (without breaking the line being typed), and status messages.
// Display rules:
//   - peer text is sanitized first (internal/textsafe): escape sequences
//     and invisible format characters are removed and other control
//     characters shown as '?', so a peer can neither drive our terminal nor
//     disguise its text;
//   - the peer's name is shown in cyan, status messages in dim yellow.
type Chat struct {
	in, out *os.File
	t       *term.Terminal
	mu      sync.Mutex
	peer    string // guarded by mu
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
	c := &Chat{in: in, out: out, t: term.NewTerminal(rw, "> "), peer: textsafe.Line(peer)}
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

// SetPeer changes the name shown on the peer's lines, for a chat opened
// before the peer was known (a listener learns it in the handshake). It
// may be called while lines are received.
func (c *Chat) SetPeer(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peer = textsafe.Line(name)
}

// Received shows one line from the peer.
func (c *Chat) Received(line []byte) {
	c.mu.Lock()
	peer := c.peer
	c.mu.Unlock()
	c.print(fmt.Sprintf("\x1b[36m%s:\x1b[0m %s\n", peer, textsafe.Text(string(line))))
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
