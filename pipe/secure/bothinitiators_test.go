package secure

import (
	"errors"
	"testing"
	"time"
)

// TestBothInitiators: two sides that both take the initiator's part (they
// disagree on the names) each see the other's Hello; neither completes, and
// PeerAlsoInitiator says why. An initiator whose Hellos go unanswered, or
// that only gets its own Hello back (a reflection), does not say so.
func TestBothInitiators(t *testing.T) {
	run := func(hs *Handshaker, l Link) error {
		_, err := hs.Run(t.Context(), l, time.Now().Add(300*time.Millisecond))
		return err
	}
	_, la, lb := newMemPair(1)
	defer la.Close()
	defer lb.Close()
	a, err := NewHandshaker(testParams(Initiator, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	pb := testParams(Initiator, testPassword)
	pb.LocalName, pb.PeerName = "aaron", "bob"
	b, err := NewHandshaker(pb)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- run(a, la) }()
	go func() { errs <- run(b, lb) }()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrAttemptTimeout) {
			t.Fatalf("Run: %v, want a timeout", err)
		}
	}
	if !a.PeerAlsoInitiator() || !b.PeerAlsoInitiator() {
		t.Fatalf("PeerAlsoInitiator: %v, %v; want both", a.PeerAlsoInitiator(), b.PeerAlsoInitiator())
	}
	if err := BothInitiators(ErrAttemptTimeout); !errors.Is(err, ErrBothInitiators) || errors.Is(err, ErrAuth) || !errors.Is(err, ErrAttemptTimeout) {
		t.Fatalf("BothInitiators: %v", err)
	}

	// Alone: nobody answers, or the link reflects our own datagrams.
	_, lc, ld := newMemPair(2)
	defer lc.Close()
	defer ld.Close()
	c, err := NewHandshaker(testParams(Initiator, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	go func() { // the other end sends back what it gets: our own Hello
		buf := make([]byte, 2048)
		for {
			n, _, err := ld.Recv(buf)
			if err != nil {
				return
			}
			_ = ld.Send(buf[:n])
		}
	}()
	if err := run(c, lc); !errors.Is(err, ErrAttemptTimeout) {
		t.Fatalf("Run alone: %v, want a timeout", err)
	}
	if c.PeerAlsoInitiator() {
		t.Fatal("PeerAlsoInitiator after only our own Hello came back")
	}
}
