package rendezvous_test

// The client side of finds for any peer (FindRequest.AnyPeer, p2pcat
// --listen) and of the peer's name in a match.

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// TestFindRequestChecked: a request no server would accept fails before
// anything is sent, with an error that says why.
func TestFindRequestChecked(t *testing.T) {
	srv := startFake(t, func([]byte) [][]byte { return nil })
	for name, c := range map[string]struct {
		fr   rendezvous.FindRequest
		want string
	}{
		"any peer with a peer": {rendezvous.FindRequest{Session: "s", Name: "a", Peer: "b", AnyPeer: true}, "names no peer"},
		"no peer":              {rendezvous.FindRequest{Session: "s", Name: "a"}, "no peer name"},
		"again without peer":   {rendezvous.FindRequest{Session: "s", Name: "a", Again: true}, "no peer name"},
		"any peer and again":   {rendezvous.FindRequest{Session: "s", Name: "a", AnyPeer: true, Again: true}, "cannot continue"},
		"same names":           {rendezvous.FindRequest{Session: "s", Name: "a", Peer: "a"}, "must differ"},
		"bad name, any peer":   {rendezvous.FindRequest{Session: "s", Name: "a b", AnyPeer: true}, "contains the character"},
	} {
		_, err := srv.client(t).Find(ctxTimeout(t, 10*time.Second), c.fr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one that says %q", name, err, c.want)
		}
	}
	if got := srv.received(); len(got) != 0 {
		t.Fatalf("%d datagrams sent for requests that were refused", len(got))
	}
}

// matchingFake answers Hello with a Challenge and every Find with a match
// that names peerName, and hands the finds it got to finds.
func matchingFake(t *testing.T, peerName string, finds chan<- *wire.Find) *fakeServer {
	return startFake(t, func(pkt []byte) [][]byte {
		switch m, _ := wire.Decode(pkt); m := m.(type) {
		case *wire.Hello:
			return [][]byte{(&wire.Challenge{ReqID: m.ReqID, Cookie: []byte("cookie")}).AppendTo(nil)}
		case *wire.Find:
			select {
			case finds <- m:
			default:
			}
			r := &wire.FindResp{ReqID: m.ReqID, Status: wire.FindMatched, Observed: netip.MustParseAddrPort("192.0.2.1:1"),
				PairingID: [16]byte{7}, PeerName: peerName, PeerObserved: netip.MustParseAddrPort("192.0.2.2:2")}
			return [][]byte{r.AppendTo(nil)}
		}
		return nil
	})
}

// TestAnyPeerFind: a listener's find goes out with the any-peer flag and no
// peer, and its match says whom the server paired it with; a finder's
// again-find carries its flag.
func TestAnyPeerFind(t *testing.T) {
	finds := make(chan *wire.Find, 1)
	srv := matchingFake(t, "laptop", finds)
	m, err := srv.client(t).Find(ctxTimeout(t, 10*time.Second), rendezvous.FindRequest{Session: "s", Name: "homebox", AnyPeer: true})
	if err != nil || m.PeerName != "laptop" {
		t.Fatalf("Find = %+v, %v; want a match with laptop", m, err)
	}
	if f := <-finds; f.Flags != wire.FindAnyPeer || f.Peer != "" || f.Name != "homebox" {
		t.Fatalf("the listener sent %+v", f)
	}
	srv = matchingFake(t, "homebox", finds)
	m, err = srv.client(t).Find(ctxTimeout(t, 10*time.Second), rendezvous.FindRequest{Session: "s", Name: "laptop", Peer: "homebox", Again: true})
	if err != nil || m.PeerName != "homebox" {
		t.Fatalf("again-find = %+v, %v", m, err)
	}
	if f := <-finds; f.Flags != wire.FindAgain || f.Peer != "homebox" {
		t.Fatalf("the again-find sent %+v", f)
	}
}

// TestBadPeerNameRefused: a server that names a peer with an invalid name
// (a terminal escape), or another peer than the one we asked for, is a
// broken or hostile one: Find fails with ErrBadAnswer and the name goes no
// further.
func TestBadPeerNameRefused(t *testing.T) {
	// The encoder writes what it is given; the decoder refuses it.
	evil := startFake(t, func(pkt []byte) [][]byte {
		switch m, _ := wire.Decode(pkt); m := m.(type) {
		case *wire.Hello:
			return [][]byte{(&wire.Challenge{ReqID: m.ReqID, Cookie: []byte("cookie")}).AppendTo(nil)}
		case *wire.Find:
			r := &wire.FindResp{ReqID: m.ReqID, Status: wire.FindMatched, PeerName: "\x1b]0;owned\x07",
				Observed: netip.MustParseAddrPort("192.0.2.1:1"), PeerObserved: netip.MustParseAddrPort("192.0.2.2:2")}
			return [][]byte{r.AppendTo(nil)}
		}
		return nil
	})
	start := time.Now()
	m, err := evil.client(t).Find(ctxTimeout(t, 30*time.Second), rendezvous.FindRequest{Session: "s", Name: "homebox", AnyPeer: true})
	if !errors.Is(err, rendezvous.ErrBadAnswer) || m.PeerName != "" || strings.Contains(err.Error(), "\x1b") {
		t.Fatalf("an escape for a peer name: %+v, %q; want ErrBadAnswer without it", m, err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("failed after %v, want at the first answer", el)
	}
	other := matchingFake(t, "mallory", make(chan *wire.Find))
	if m, err := other.client(t).Find(ctxTimeout(t, 10*time.Second), rendezvous.FindRequest{Session: "s", Name: "alice", Peer: "bob"}); !errors.Is(err, rendezvous.ErrBadAnswer) {
		t.Fatalf("paired with mallory when we asked for bob: %+v, %v; want ErrBadAnswer", m, err)
	}
}
