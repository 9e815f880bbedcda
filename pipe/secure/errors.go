package secure

import (
	"context"
	"errors"
	"fmt"
)

// ErrAuth means the handshake failed authentication. Both sides return it
// (wrapped) when the passwords differ.
var ErrAuth = errors.New("authentication failed: wrong password or someone in the middle")

func authError(reason string) error { return fmt.Errorf("%w (%s)", ErrAuth, reason) }

// ErrUnconfirmed is matched (together with ErrAuth) by the error of a
// responder's handshake that answered a Hello and never received a valid
// Finish: the other side used another password or session key, or someone
// tested a guess (see the package documentation).
var ErrUnconfirmed = errors.New("a handshake was begun and never confirmed: a wrong password or session key on the other side, or someone guessing it")

type unconfirmedError struct{ why string }

func (e unconfirmedError) Error() string {
	return fmt.Sprintf("authentication failed: %v (%s)", ErrUnconfirmed, e.why)
}

func (unconfirmedError) Is(target error) bool { return target == ErrAuth || target == ErrUnconfirmed }

// ErrBothInitiators is matched by the error of a handshake that never
// completed while the peer sent a Hello of its own
// (Handshaker.PeerAlsoInitiator): both sides took the initiator's part, so
// they disagree on the two names, which decide the parts (a rendezvous
// server that named one side's peer otherwise, or a peer that calls itself
// otherwise). The sides cannot authenticate each other (the command exits
// as for ErrAuth), but nobody tried a password: it is not ErrAuth.
var ErrBothInitiators = errors.New("authentication failed: the peer began the handshake as its initiator too, so the two sides disagree on their names (did the rendezvous server name the peer otherwise?)")

// BothInitiators wraps err, why the attempts ended, in ErrBothInitiators.
func BothInitiators(err error) error { return fmt.Errorf("%w: %w", ErrBothInitiators, err) }

// ErrPeerCancelled means the peer gave the handshake up before it was
// complete (its user interrupted it) and said so with a Cancel notice.
var ErrPeerCancelled = errors.New("the peer gave up the connection before it was complete")

// ErrPeerVersion means the peer speaks protocol version 1 (an older
// p2pcat): its handshake cannot meet ours.
var ErrPeerVersion = errors.New("the peer runs an older p2pcat (protocol version 1); run the same version on both sides")

// ErrAttemptTimeout: Run reached its deadline; the handshake may go on
// with another Run. It matches context.DeadlineExceeded.
var ErrAttemptTimeout = fmt.Errorf("secure: handshake timed out: %w", context.DeadlineExceeded)

// attemptTimeout is Run's error at its deadline: it matches
// ErrAttemptTimeout and context.DeadlineExceeded.
type attemptTimeout string

func (e attemptTimeout) Error() string { return string(e) + ": " + context.DeadlineExceeded.Error() }

func (attemptTimeout) Is(target error) bool {
	return target == ErrAttemptTimeout || target == context.DeadlineExceeded
}

// ErrCounterExhausted is returned by Send once the packet counter reached
// its limit; the Conn cannot send again and a new handshake is needed.
var ErrCounterExhausted = errors.New("secure: packet counter exhausted, start a new session")
