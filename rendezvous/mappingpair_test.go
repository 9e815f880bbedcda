package rendezvous_test

import (
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

// TestMappingPair: both of the server's STUN sockets answer from one
// socket in one exchange; without an alternate the primary's answer comes
// back soon after it, not at the caller's deadline.
func TestMappingPair(t *testing.T) {
	srv := rendezvoustest.Start(t, server.Config{})
	if !srv.STUNAlternate.IsValid() {
		t.Fatal("the test server has no alternate STUN socket")
	}
	c := udpOn(t, "127.0.0.1")
	p, a, err := rendezvous.MappingPair(ctxTimeout(t, 5*time.Second), c, srv.Addr, srv.STUNAlternate)
	if err != nil {
		t.Fatal(err)
	}
	if p != addrOf(c) || a != addrOf(c) {
		t.Fatalf("mapped %v and %v, want the socket's own %v twice", p, a, addrOf(c))
	}

	dead := udpOn(t, "127.0.0.1") // nothing answers here
	start := time.Now()
	p, a, err = rendezvous.MappingPair(ctxTimeout(t, 5*time.Second), c, srv.Addr, addrOf(dead))
	took := time.Since(start)
	if err != nil || p != addrOf(c) || a.IsValid() {
		t.Fatalf("without an alternate: %v %v %v, want the primary's answer only", p, a, err)
	}
	if took > time.Second {
		t.Errorf("took %v without an alternate, want about the primary's round trip and the slack", took)
	}
}
