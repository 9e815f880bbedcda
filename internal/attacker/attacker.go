// Package attacker plays the adversaries of p2pcat's threat model
// (PROTOCOL.md section 5) against the real binary, over real loopback
// sockets, for the attack suite (attack_e2e_test.go). It is test support:
// nothing in the product imports it.
//
// The adversaries:
//
//   - Server: a malicious rendezvous server. It speaks the real wire format
//     (rendezvous/wire) and answers as its Behaviour says: claim that a
//     session is registered, pair a victim with an attacker in every punch
//     attempt, and record every datagram it receives.
//   - Peer: an attacker's UDP socket that records what it receives and
//     plays either side of the v2 handshake with a guessed password, through
//     pipe/secure's exported API over a Link of its own (which can keep its
//     failure notices to itself, as an attacker would), or sends forged
//     handshake messages and probes built from the wire bytes.
//   - Tap: a NAT in front of an honest rendezvous server that captures
//     every datagram between the clients and the server: the passive
//     observer of the client-server path, and the source of pairing ids.
//   - Middle: a man in the middle of a direct-mode peer path that forwards,
//     drops, reflects, replays, corrupts or substitutes datagrams, keeping
//     the handshake's references (ref fields) consistent so that only the
//     cryptography can tell.
//   - Derived: the password-derived values an attacker would look for in a
//     capture (version 1's credential and find proof, and derivations a
//     version 2 might have used), for dictionary attacks on captures.
//
// Every socket is bound to 127.0.0.1 on an ephemeral port. Every type with
// goroutines has a Close that stops them and waits for them.
package attacker

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
)

// Datagram is one datagram received by a socket of this package.
type Datagram struct {
	From netip.AddrPort
	At   time.Time
	Data []byte
}

// keyPool holds the attacker's RSA keys. The handshake accepts only
// 2048-bit keys or larger, which take a while to generate on a loaded
// machine; an attacker has no reason to use a fresh one per Hello.
var keyPool struct {
	sync.Mutex
	keys []*rsa.PrivateKey
}

// Key returns the attacker's i-th 2048-bit RSA key, generating the pool up
// to it on first use.
func Key(i int) *rsa.PrivateKey {
	keyPool.Lock()
	defer keyPool.Unlock()
	for len(keyPool.keys) <= i {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(fmt.Sprintf("attacker: generating an RSA key: %v", err)) // crypto/rand does not fail
		}
		keyPool.keys = append(keyPool.keys, k)
	}
	return keyPool.keys[i]
}

func listenLoopback() (*net.UDPConn, netip.AddrPort, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	_ = c.SetReadBuffer(4 << 20)
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

// readLoop reads c until it is closed, handing each datagram (a copy) to
// f. It is the body of every socket goroutine here.
func readLoop(c *net.UDPConn, f func(Datagram)) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue // an ICMP report about an earlier send
		}
		f(Datagram{From: udpio.Unmap(from), At: time.Now(), Data: append([]byte(nil), buf[:n]...)})
	}
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
