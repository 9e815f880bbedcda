package main

// --exec CMD (ncat -e / --sh-exec): one command per authenticated session,
// run through /bin/sh -c in its own process group.
//
//   - Its stdin is what the peer sends; it is closed when the peer
//     finished sending (pipe.Config.OnPeerEOF). Its stdout is what we send;
//     its stderr is ours, as it is.
//   - Environment: ours, with P2PCAT_PEER_NAME (the authenticated peer's
//     name), P2PCAT_SESSION (the session met in), and without our secrets
//     (P2PCAT_PASSWORD, P2PCAT_SESSION_KEY) and the variables that would
//     make a p2pcat it runs a listener too.
//   - It starts only once the handshake authenticated the peer
//     (pipe.Config.OnAuthenticated): an unauthenticated peer never runs it.
//   - The session ends when the command exited and its output drained.
//     A command that exits non-zero (or is killed) fails the session: the
//     peer is told that our input failed, "the command exited with status
//     N", and exits 1; the status is logged either way.
//   - When the session ends otherwise (interrupted, the peer aborted or
//     fell silent), the command's process group gets SIGTERM, and SIGKILL
//     killGrace later if it is still there.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/p2pcat/p2pcat/pipe"
)

// killGrace is how long a command has after SIGTERM before SIGKILL.
const killGrace = 2 * time.Second

// execHidden are variables the command does not inherit.
var execHidden = []string{"P2PCAT_PASSWORD", "P2PCAT_SESSION_KEY", "P2PCAT_LISTENER", "P2PCAT_KEEP_OPEN", "P2PCAT_MAX_SESSIONS", "P2PCAT_EXEC"}

// execSession is --exec's command for one session.
type execSession struct {
	command, session string
	log              *slog.Logger
	cmd              *exec.Cmd
	// The pipes: the peer's bytes go into toCmd (the session's Stdout),
	// ours come from fromCmd (the session's Stdin); cmdIn and cmdOut are
	// the command's ends, closed here once it has them.
	toCmd, fromCmd, cmdIn, cmdOut *os.File
	setupErr                      error // the pipes could not be made
	closeTo                       sync.Once
	started                       bool
	exited                        chan struct{} // closed when the command exited
	waitErr                       error         // the command's exit, once exited is closed
	stop                          chan struct{} // closed when the session stops waiting for the exit
	stopOnce                      sync.Once
}

// newExecSession prepares command for one session; nothing runs before
// the session's handshake succeeded.
func newExecSession(command, session string, stderr io.Writer, log *slog.Logger) *execSession {
	e := &execSession{command: command, session: session, log: log, exited: make(chan struct{}), stop: make(chan struct{})}
	e.cmd = exec.Command("/bin/sh", "-c", command)
	e.cmd.Stderr = stderr
	ownProcessGroup(e.cmd)
	var err1, err2 error
	e.cmdIn, e.toCmd, err1 = os.Pipe()
	e.fromCmd, e.cmdOut, err2 = os.Pipe()
	if e.setupErr = errors.Join(err1, err2); e.setupErr != nil {
		e.closeAll()
		return e
	}
	e.cmd.Stdin, e.cmd.Stdout = e.cmdIn, e.cmdOut
	return e
}

// attach makes the command the session's input and output.
func (e *execSession) attach(cfg *pipe.Config) {
	cfg.Stdin, cfg.Stdout = &commandOutput{e: e}, e.toCmd
	cfg.Chat, cfg.EndOnPeerEOF = nil, false
	cfg.OnAuthenticated = e.start
	cfg.OnPeerEOF = e.closeInput
}

// start runs the command for the authenticated peer.
func (e *execSession) start(peer string) error {
	if e.setupErr != nil {
		return fmt.Errorf("the command could not start: %w", e.setupErr)
	}
	e.cmd.Env = append(execEnv(os.Environ()), "P2PCAT_PEER_NAME="+peer, "P2PCAT_SESSION="+e.session)
	if err := e.cmd.Start(); err != nil {
		return fmt.Errorf("the command could not start: %w", err)
	}
	e.started = true
	e.cmdIn.Close()
	e.cmdOut.Close()
	e.log.Info("command started", "peer", peer, "pid", e.cmd.Process.Pid)
	go func() {
		e.waitErr = e.cmd.Wait()
		close(e.exited)
	}()
	return nil
}

// execEnv is env without execHidden's variables and the two we set.
func execEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "P2PCAT_PEER_NAME" || k == "P2PCAT_SESSION" || slices.Contains(execHidden, k) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// closeInput closes the command's stdin: the peer finished sending.
func (e *execSession) closeInput() { e.closeTo.Do(func() { e.toCmd.Close() }) }

// finish ends the command after the session: it waits for a command that
// is exiting, else stops its process group, and logs how it exited.
func (e *execSession) finish() {
	e.closeInput()
	e.stopOnce.Do(func() { close(e.stop) })
	if !e.started {
		e.closeAll()
		return
	}
	e.fromCmd.Close()
	select {
	case <-e.exited:
	default:
		e.kill()
	}
	status := exitStatus(e.waitErr)
	if e.waitErr == nil {
		e.log.Info("command exited", "status", status)
		return
	}
	e.log.Warn("command failed", "command", e.command, "status", status)
}

// kill stops the command's process group: SIGTERM, then SIGKILL.
func (e *execSession) kill() {
	signalGroup(e.cmd, false)
	t := time.NewTimer(killGrace)
	defer t.Stop()
	select {
	case <-e.exited:
	case <-t.C:
		signalGroup(e.cmd, true)
		<-e.exited
	}
}

func (e *execSession) closeAll() {
	for _, f := range []*os.File{e.toCmd, e.fromCmd, e.cmdIn, e.cmdOut} {
		if f != nil {
			f.Close()
		}
	}
}

// exitStatus says how the command exited, as the peer and the log read it.
func exitStatus(err error) string {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		if err != nil {
			return err.Error()
		}
		return "0"
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%s)", ws.Signal(), ws.Signal())
	}
	return fmt.Sprint(ee.ExitCode())
}

// commandFailed is the session's input error when the command failed: the
// peer reads its text as the reason.
type commandFailed struct{ status string }

func (c *commandFailed) Error() string {
	if strings.HasPrefix(c.status, "killed") {
		return "the command was " + c.status
	}
	return "the command exited with status " + c.status
}

// commandOutput is the session's input: the command's stdout, whose end
// waits for the command's exit and reports a failure as an error.
type commandOutput struct{ e *execSession }

func (r *commandOutput) Read(p []byte) (int, error) {
	n, err := r.e.fromCmd.Read(p)
	if err != io.EOF {
		return n, err
	}
	select {
	case <-r.e.exited:
	case <-r.e.stop:
		return n, os.ErrDeadlineExceeded
	}
	if r.e.waitErr != nil {
		return n, &commandFailed{exitStatus(r.e.waitErr)}
	}
	return n, io.EOF
}

// SetReadDeadline lets the session end a pending Read (pipe.Config.Stdin):
// a past deadline also ends the wait for the command's exit.
func (r *commandOutput) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		r.e.stopOnce.Do(func() { close(r.e.stop) })
	}
	return r.e.fromCmd.SetReadDeadline(t)
}
