package main

// The progress line (--progress, on by default when stderr is a terminal
// and stdout is not). Its rules:
//   - It goes to stderr only: never to stdout, which carries the payload,
//     and never in the chat, which has its own status line.
//   - It counts user data: the bytes read from stdin (sent) and written to
//     stdout (received), not datagrams on the wire.
//   - On a terminal it is one line redrawn in place at most four times a
//     second: "\r", the text cut to the terminal's width, erase to the end
//     of the line. Anything else written to stderr meanwhile (status
//     lines, -v logs, warnings) first erases it, and it is drawn again
//     after. At the end a summary line takes its place, also on failure.
//   - Elsewhere (a file, a pipe) it is a log line every 5 s, and the
//     summary as a last log line.
//   - It starts when the session is connected: before that the status
//     lines say what is happening, and a session that never connected
//     moved no bytes to sum up.

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/p2pcat/p2pcat/pipe"
)

const (
	progressRedraw   = 250 * time.Millisecond // a terminal's line, at most this often
	progressLogEvery = 5 * time.Second        // a log line when stderr is not a terminal
	progressRateOver = 3 * time.Second        // the rate on the line is over this much time
)

// progress shows how a session moves bytes. A nil *progress is off: its
// methods do nothing.
type progress struct {
	sent, received atomic.Int64

	out      io.Writer
	terminal *os.File     // stderr when it is a terminal: the line is drawn in place
	log      *slog.Logger // else the log lines go here

	mu       sync.Mutex // the fields below, and writes to out on a terminal
	onScreen bool       // the line is on the terminal now
	last     string     // the line's last text
	session  pipe.Session
	start    time.Time
	samples  []progressSample
	started  bool

	stop, done chan struct{}
}

type progressSample struct {
	at    time.Time
	bytes int64
}

// newProgress returns the session's progress, or nil when it is off: in
// the chat, with --no-progress, and by default unless stderr is a terminal
// and stdout is not, or stderr is not a terminal and -v was given.
func newProgress(c *cli.Context, verbose int) *progress {
	if chatMode(c) || c.Bool("no-progress") {
		return nil
	}
	asked := c.Bool("progress")
	p := &progress{out: c.App.ErrWriter, stop: make(chan struct{}), done: make(chan struct{})}
	if isTerminal(c.App.ErrWriter) {
		if !asked && isTerminal(c.App.Writer) {
			return nil // the payload is on the terminal: no line in its way
		}
		p.terminal = c.App.ErrWriter.(*os.File)
		return p
	}
	if !asked && verbose == 0 {
		return nil
	}
	return p
}

// stderr is where the session's other stderr output must go while the
// line may be on the terminal: p itself, which erases the line first.
func (p *progress) stderr(w io.Writer) io.Writer {
	if p == nil || p.terminal == nil {
		return w
	}
	return p
}

// watch makes cfg count stdin and stdout and start the progress when the
// session is connected. The log lines go to cfg.Logger with -v, else to a
// logger of their own.
func (p *progress) watch(cfg *pipe.Config, verbose int) {
	if p == nil {
		return
	}
	p.log = cfg.Logger
	if verbose == 0 {
		p.log = slog.New(slog.NewTextHandler(p.out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	cfg.Stdin = countingReader{cfg.Stdin, &p.sent}
	if p.terminal != nil && isTerminal(cfg.Stdout) {
		cfg.Stdout = terminalOutput{p, cfg.Stdout} // no deadline to keep: a terminal has none
	}
	cfg.Stdout = countingWriter{cfg.Stdout, &p.received}
	cfg.OnConnected = p.begin
}

// begin starts the progress; its goroutine ends in finish.
func (p *progress) begin(s pipe.Session) {
	p.mu.Lock()
	p.session, p.start, p.started = s, time.Now(), true
	p.samples = []progressSample{{p.start, 0}}
	p.mu.Unlock()
	every := progressLogEvery
	if p.terminal != nil {
		every = progressRedraw
		p.show()
	}
	go p.loop(every)
}

func (p *progress) loop(every time.Duration) {
	defer close(p.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
			p.show()
		}
	}
}

// show draws the line, or logs it.
func (p *progress) show() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	sent, received := p.sent.Load(), p.received.Load()
	rate := p.rateLocked(now, sent+received)
	elapsed := now.Sub(p.start)
	if p.terminal == nil {
		p.log.Info("progress", "sent", sent, "received", received, "rate", humanRate(rate), "elapsed", elapsed.Round(time.Second).String(), "path", p.pathLocked())
		return
	}
	p.last = fmt.Sprintf("p2pcat: sent %s, received %s, %s, %s, %s", humanBytes(sent), humanBytes(received), humanRate(rate), clock(elapsed), p.pathLocked())
	p.drawLocked()
}

// finish ends the progress with the summary; err is the session's result.
func (p *progress) finish(err error) {
	if p == nil {
		return
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if !started {
		return
	}
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	elapsed := time.Since(p.start)
	sent, received := p.sent.Load(), p.received.Load()
	avg := float64(sent+received) / max(elapsed.Seconds(), 1e-3)
	result := "done"
	if err != nil {
		result = "stopped"
	}
	if p.terminal == nil {
		p.log.Info("summary", "result", result, "sent", sent, "received", received, "rate", humanRate(avg), "elapsed", elapsed.Round(time.Millisecond).String(), "path", p.pathLocked())
		return
	}
	p.eraseLocked()
	fmt.Fprintf(p.out, "p2pcat: %s: sent %s, received %s in %s (%s), %s\n", result, humanBytes(sent), humanBytes(received),
		took(elapsed), humanRate(avg), p.pathLocked())
	p.last = ""
}

// Write writes other stderr output (status lines, logs, warnings) with
// the line out of its way.
func (p *progress) Write(b []byte) (int, error) { return p.besideLine(p.out, b) }

// besideLine writes b to w with the line out of its way: erased first,
// drawn again after a whole line.
func (p *progress) besideLine(w io.Writer, b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.eraseLocked()
	n, err := w.Write(b)
	if len(b) > 0 && b[len(b)-1] == '\n' && p.last != "" {
		p.drawLocked()
	}
	return n, err
}

// terminalOutput is stdout on the terminal the line is drawn on (asked
// for with --progress): the peer's lines print above the line.
type terminalOutput struct {
	p *progress
	w io.Writer
}

func (t terminalOutput) Write(b []byte) (int, error) { return t.p.besideLine(t.w, b) }

func (p *progress) drawLocked() {
	line := p.last
	if w, _, err := term.GetSize(int(p.terminal.Fd())); err == nil && w > 1 && len(line) >= w {
		line = line[:w-1] // a line that wraps could not be redrawn in place
	}
	io.WriteString(p.out, "\r"+line+"\x1b[K")
	p.onScreen = true
}

func (p *progress) eraseLocked() {
	if p.onScreen {
		io.WriteString(p.out, "\r\x1b[K")
		p.onScreen = false
	}
}

// rateLocked is the bytes per second over the last progressRateOver (or
// since the last log line), from the samples of total bytes.
func (p *progress) rateLocked(now time.Time, total int64) float64 {
	p.samples = append(p.samples, progressSample{now, total})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= progressRateOver {
		p.samples = p.samples[1:]
	}
	first := p.samples[0]
	if d := now.Sub(first.at).Seconds(); d > 0 {
		return float64(total-first.bytes) / d
	}
	return 0
}

func (p *progress) pathLocked() string {
	if p.session.Relayed() {
		return "relay"
	}
	return "direct"
}

// humanBytes writes n in binary units: 512 B, 1.5 KiB, 3.0 GiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 4 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %s", v, []string{"KiB", "MiB", "GiB", "TiB", "PiB"}[unit])
}

func humanRate(bytesPerSecond float64) string {
	return humanBytes(int64(bytesPerSecond)) + "/s"
}

// took writes d as seconds with a tenth under a minute, else as clock.
func took(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return clock(d)
}

// clock writes d as m:ss, or h:mm:ss from an hour on.
func clock(d time.Duration) string {
	s := int(d.Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// countingReader counts what is read from stdin. It keeps stdin's read
// deadline, with which the session ends a read still pending at its end
// (pipe.Config.Stdin).
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c countingReader) SetReadDeadline(t time.Time) error {
	if d, ok := c.r.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return os.ErrNoDeadline
}

// countingWriter counts what is written to stdout, keeping its write
// deadline.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (c countingWriter) SetWriteDeadline(t time.Time) error {
	if d, ok := c.w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return d.SetWriteDeadline(t)
	}
	return os.ErrNoDeadline
}
