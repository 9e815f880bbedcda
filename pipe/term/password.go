package term

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/term"
)

// PasswordEnv is the environment variable that supplies the password
// non-interactively. There is deliberately no flag: argv is visible to
// every user on the machine.
const PasswordEnv = "P2PCAT_PASSWORD"

// ErrNoPassword means there is no password in the environment and no
// terminal to ask on.
var ErrNoPassword = errors.New("no password: set " + PasswordEnv + " or run where a terminal can prompt for it")

// ErrEmptyPassword means the password given is empty.
var ErrEmptyPassword = errors.New("empty password")

// ErrPasswordMismatch means the two entries of a confirmed prompt differ.
var ErrPasswordMismatch = errors.New("the two passwords differ")

// ttyPath is the controlling terminal. Tests point it elsewhere so that a
// developer's terminal never receives a prompt during `go test`.
var ttyPath = "/dev/tty"

// SetTestOnlyTTY replaces the terminal device path; tests only.
func SetTestOnlyTTY(path string) { ttyPath = path }

// Password returns the password from P2PCAT_PASSWORD, or else prompts on the
// controlling terminal without echo (even when stdin is a pipe, so
// `cat file | p2pcat ...` still prompts). With confirm it asks twice. When
// ctx ends during the prompt (Ctrl-C: the terminal keeps sending SIGINT
// while it hides the input), the terminal's echo is restored and ctx's
// error is returned.
func Password(ctx context.Context, prompt string, confirm bool) ([]byte, error) {
	if v, ok := os.LookupEnv(PasswordEnv); ok {
		if v == "" {
			return nil, fmt.Errorf("%w: %s is set but empty", ErrEmptyPassword, PasswordEnv)
		}
		return []byte(v), nil
	}
	tty, err := os.OpenFile(ttyPath, os.O_RDWR, 0)
	if err != nil {
		return nil, ErrNoPassword
	}
	defer tty.Close()
	fd := int(tty.Fd())
	if !term.IsTerminal(fd) {
		return nil, ErrNoPassword
	}
	saved, err := term.GetState(fd)
	if err != nil {
		return nil, fmt.Errorf("reading the password from the terminal: %w", err)
	}
	pw, err := ask(ctx, tty, fd, saved, prompt)
	if err != nil {
		return nil, err
	}
	if len(pw) == 0 {
		return nil, ErrEmptyPassword
	}
	if confirm {
		again, err := ask(ctx, tty, fd, saved, "Again: ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pw, again) {
			return nil, ErrPasswordMismatch
		}
	}
	return pw, nil
}

// ask prints prompt on tty and reads one password from the terminal fd
// without echo. When ctx ends first, it restores the terminal's saved state
// and returns ctx's error.
func ask(ctx context.Context, tty *os.File, fd int, saved *term.State, prompt string) ([]byte, error) {
	fmt.Fprint(tty, prompt)
	type result struct {
		pw  []byte
		err error
	}
	// ReadPassword cannot be cancelled: it runs on its own goroutine,
	// which is left blocked on the terminal if ctx ends first (the
	// process is about to exit then).
	done := make(chan result, 1)
	go func() {
		pw, err := term.ReadPassword(fd)
		done <- result{pw, err}
	}()
	select {
	case r := <-done:
		fmt.Fprintln(tty)
		if r.err != nil {
			return nil, fmt.Errorf("reading the password from the terminal: %w", r.err)
		}
		return r.pw, nil
	case <-ctx.Done():
		term.Restore(fd, saved)
		fmt.Fprintln(tty)
		return nil, ctx.Err()
	}
}
