package secure

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// A side whose caller gives up mid-handshake (the user interrupted it)
// tells the peer with a Cancel notice naming the Hello, and the peer stops
// at once with ErrPeerCancelled instead of waiting for its timeout. A
// notice naming another Hello changes nothing.
func TestCancelNoticeStopsThePeer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hold   byte // the message type the network drops, to hold both sides mid-handshake
		cancel Role // the side whose caller gives up
	}{
		{"initiator gives up after the Reply", typeFinish, Initiator},
		{"responder gives up after answering", typeFinish, Responder},
		{"responder gives up, its Reply lost", typeReply, Responder},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, li, lr := newMemPair(12)
			answered := make(chan struct{})
			var once sync.Once
			n.setTap(func(_ *memLink, b []byte) [][]byte {
				if b[0] == tc.hold {
					once.Do(func() { close(answered) })
					return nil
				}
				return [][]byte{b}
			})
			ctx, giveUp := context.WithCancel(t.Context())
			defer giveUp()
			pi, pr := testParams(Initiator, testPassword), testParams(Responder, testPassword)
			ctxI, ctxR := t.Context(), t.Context()
			if tc.cancel == Initiator {
				ctxI = ctx
			} else {
				ctxR = ctx
			}
			errs := make(chan error, 2)
			go func() { _, err := Handshake(ctxI, li, pi); errs <- err }()
			go func() { _, err := Handshake(ctxR, lr, pr); errs <- err }()
			<-answered
			// A forged notice about another Hello is ignored.
			forged := (&cancel{id: testID, hello: ref{1, 2, 3}}).marshal()
			li.inject(lr.source(), forged)
			lr.inject(li.source(), forged)
			time.Sleep(50 * time.Millisecond)
			start := time.Now()
			giveUp()
			var gotCancelled, gotCanceled bool
			for range 2 {
				err := <-errs
				switch {
				case errors.Is(err, ErrPeerCancelled):
					gotCancelled = true
				case errors.Is(err, context.Canceled):
					gotCanceled = true
				default:
					t.Errorf("handshake ended with %v", err)
				}
			}
			if !gotCancelled || !gotCanceled {
				t.Fatalf("want one side Canceled and the other ErrPeerCancelled")
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("the peer took %v to stop (its timeout is 10 s): the notice did not work", el)
			}
		})
	}
}

// An initiator whose Cancel cannot prove the password (it never got the
// Reply, so it has no K_cancel) does not make an answered responder call
// it an interruption: that is what a guesser would send after reading the
// Reply. The responder ends with ErrUnconfirmed, and the guess shows.
func TestUnprovenCancelDoesNotHideAGuess(t *testing.T) {
	n, li, lr := newMemPair(13)
	answered := make(chan struct{})
	var once sync.Once
	n.setTap(func(_ *memLink, b []byte) [][]byte {
		if b[0] == typeReply {
			once.Do(func() { close(answered) })
			return nil
		}
		return [][]byte{b}
	})
	ctx, giveUp := context.WithCancel(t.Context())
	defer giveUp()
	pr := testParams(Responder, testPassword)
	pr.Timeout = time.Second
	errs := make(chan error, 1)
	go func() { _, err := Handshake(ctx, li, testParams(Initiator, testPassword)); _ = err }()
	go func() { _, err := Handshake(t.Context(), lr, pr); errs <- err }()
	<-answered
	giveUp()
	if err := <-errs; !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("responder: %v, want ErrUnconfirmed", err)
	}
}

// An attacker who plays the initiator with a guess gets one Reply (its one
// guess), never a second one for another Hello, and the responder, when
// no valid Finish follows, fails with ErrUnconfirmed (and ErrAuth): the
// guess shows. The attacker here checks the early tag with its guess and
// goes quiet, as a silent guesser would (its AuthFailed notices are
// dropped).
func TestResponderAnswersOneGuessAndSaysSo(t *testing.T) {
	n, li, lr := newMemPair(21)
	var mu sync.Mutex
	replies := map[string]bool{} // distinct Replies (a retransmitted Hello gets the same one again)
	n.setTap(func(from *memLink, b []byte) [][]byte {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case from == li && b[0] == typeAuthFailed:
			return nil // the guesser stays silent
		case from == lr && b[0] == typeReply:
			replies[string(b)] = true
		}
		return [][]byte{b}
	})
	pr := testParams(Responder, testPassword)
	pr.Timeout = 2 * time.Second
	done := make(chan error, 1)
	go func() { _, err := Handshake(t.Context(), lr, pr); done <- err }()

	guess := testParams(Initiator, "a wrong guess")
	if _, err := Handshake(t.Context(), li, guess); !errors.Is(err, ErrAuth) {
		t.Fatalf("guesser: %v, want ErrAuth (its guess was wrong)", err)
	}
	// A second guess, a new Hello: no answer.
	guess2 := testParams(Initiator, "another wrong guess")
	guess2.Timeout = 500 * time.Millisecond
	if _, err := Handshake(t.Context(), li, guess2); errors.Is(err, ErrAuth) || err == nil {
		t.Fatalf("second guess: %v, want a timeout (no Reply at all)", err)
	}
	err := <-done
	if !errors.Is(err, ErrUnconfirmed) || !errors.Is(err, ErrAuth) {
		t.Fatalf("responder: %v, want ErrUnconfirmed and ErrAuth", err)
	}
	if !strings.Contains(err.Error(), "never confirmed") {
		t.Fatalf("responder's message %q does not say the handshake was never confirmed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(replies) != 1 {
		t.Fatalf("the responder sent %d different Replies, want 1", len(replies))
	}
}
