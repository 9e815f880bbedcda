// Package path owns the session's datagram socket: it gathers this host's
// candidate addresses, punches a path to the peer's candidates, learns the
// peer's real address from the packets that authenticate (ICE's
// peer-reflexive candidates), falls back to the rendezvous server's relay,
// and carries the secure layer's datagrams, many per system call where the
// kernel allows.
//
// It is the lowest layer of the pipe: pipe/secure runs over a Conn (as its
// Link) and tells it which packets authenticated (Confirm, Heard); path
// knows nothing of the layers above. It may import the standard library,
// x/net and x/sys, internal/udpio (batched I/O, address spelling),
// internal/textsafe (the relay's end reason, shown to the user) and
// rendezvous/wire (the relay's messages); not the rendezvous client or
// server.
//
// The files, by concern:
//
//	path.go           the Conn: its state, New, Confirm, Heard, Close
//	socket.go         the Socket it runs over, Listen, socket buffers
//	candidates.go     this host's candidates, and those learned from probes
//	punch.go          the punch routine, round by round
//	amplify.go        the bound on what goes to an unproven address
//	relay.go          the relay client
//	send.go, recv.go  where a datagram goes, and what comes in
//	offload_linux.go  UDP GSO and GRO
//	batch_linux.go    sendmmsg and recvmmsg, without offload
//
// Rules of the punch:
//
//   - Until a packet from the peer authenticates (the secure layer calls
//     Confirm), every datagram the secure layer sends goes to every
//     candidate, public ones first: whichever path works carries it.
//   - Both sides also send Probe datagrams (0xF0 | pairing id) to every
//     candidate at a short interval, so each NAT sees outbound traffic to the
//     other and lets the other's packets in. A probe that arrives teaches us a
//     candidate (the address the peer's NAT really uses) and is answered
//     with a probe, but it is never trusted: only Confirm picks the path.
//   - After Confirm, datagrams go to the confirmed address only. A later
//     authentic packet from another address moves the path there (roaming).
//
// The relay (when the server offers it and Options allow):
//
//   - The relay is one more path, through the rendezvous server: datagrams
//     are wrapped in a relay header (rendezvous/wire/relay.go) and sent to
//     the server, which forwards them to the peer. A relayed datagram is
//     reported to the secure layer as coming from the server's address, and
//     Confirm with that address selects the relay.
//   - Before confirmation the relay carries copies of what is sent once
//     Options.RelayAfter has passed (at once with RelayOnly).
//   - A direct path is preferred: while relaying, both sides go on probing
//     the direct candidates (every second); a probe from the peer shows a
//     direct path that may work, and then a copy of a datagram goes there
//     too, at most every 200 ms. When it authenticates at the peer, the
//     peer moves to the direct path, and we follow when its packets come
//     direct. A relayed packet moves a direct path back to the relay only
//     when nothing came direct for a second (the NAT mapping was lost).
//
// Datagrams from the rendezvous server (late answers) and stray probes are
// dropped here and never reach the secure layer.
package path
