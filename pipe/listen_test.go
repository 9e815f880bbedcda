package pipe

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/p2pcat/p2pcat/rendezvous"
)

// TestListenerRefusesPathNames: a name from the server that would leave
// or hide in a directory is refused before the handshake, and OnFound
// does not hear of it; a usable one becomes Peer.
func TestListenerRefusesPathNames(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.1:4000")
	for _, name := range []string{"../etc", "a/b", `a\b`, ".hidden", ".", "..", ""} {
		cfg := Config{Listen: true, OnFound: func(string, netip.AddrPort) { t.Errorf("OnFound for %q", name) }}
		err := cfg.found(rendezvous.Match{PeerName: name, PeerObserved: from})
		var pe *PeerNameError
		if !errors.As(err, &pe) || !errors.Is(err, ErrPeerNameRefused) || pe.Name != name || pe.From != from || cfg.Peer != "" {
			t.Errorf("name %q: err %v, Peer %q", name, err, cfg.Peer)
		}
	}
	for _, name := range []string{"bob", "bob.laptop", "x..y", "ünï"} {
		var heard string
		cfg := Config{Listen: true, OnFound: func(peer string, f netip.AddrPort) { heard = peer }}
		if err := cfg.found(rendezvous.Match{PeerName: name, PeerObserved: from}); err != nil || cfg.Peer != name || heard != name {
			t.Errorf("name %q: err %v, Peer %q, OnFound heard %q", name, err, cfg.Peer, heard)
		}
	}
}

// TestListenSettings: a listener with a peer's name or address is refused.
func TestListenSettings(t *testing.T) {
	for _, cfg := range []Config{
		{Listen: true, Peer: "bob"},
		{Listen: true, PeerAddr: netip.MustParseAddrPort("127.0.0.1:9")},
	} {
		if cfg.checkListen() == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if err := (&Config{Listen: true}).checkListen(); err != nil {
		t.Error(err)
	}
}
