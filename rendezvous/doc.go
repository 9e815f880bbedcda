// Package rendezvous is the client side of p2pcat's meeting point: what the
// pipe and the CLI use to ask a rendezvous server for their peer.
//
// It owns:
//   - the Client (client.go): Find, which waits for the pairing with the
//     peer (or, for a listener, with whoever finds it: FindRequest.AnyPeer),
//     and Register, which reserves a session; their errors (ErrSessionKeyRefused,
//     ErrPeerNotFound, ...) from which the CLI picks exit codes; both run
//     over an exchange (exchange.go): one conversation with the server, its
//     re-sends, and which datagram is its answer (with the kernel's receive
//     time, Match.Received);
//   - session keys (sessionkey.go): their text form, the verifier the server
//     stores, and the signatures that Find and Register carry (the server
//     checks them with VerifyFindFlags and VerifyRegister from here);
//   - the NAT check and STUN queries (natcheck.go): STUNBinding, CheckNAT.
//
// The wire format is in rendezvous/wire and PROTOCOL.md; the server is
// rendezvous/server.
//
// Imports: rendezvous imports only rendezvous/wire, rendezvous/internal/*,
// internal/* and pion/stun; never rendezvous/server, bbolt or prometheus,
// so that the pipe does not carry the server. rendezvous/server imports
// this package, never the other way round.
package rendezvous
