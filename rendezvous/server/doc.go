// Package server is p2pcat's rendezvous server, run by `p2pcat serve`: it
// pairs two clients who ask for each other (or a listener with whoever asks
// for it) and keeps registered sessions.
//
// It owns:
//   - the Server and its Config (server.go): the read loop, cookies
//     (cookie.go), per-IP rate limits (ratelimit.go), the table of
//     pending finds and pairings (table.go), the registration writer;
//   - the relay for pairs without a direct path (relay.go);
//   - the STUN answers on the rendezvous port and its alternate (stun.go);
//   - the Prometheus metrics (metrics.go) and batched sends (batch.go);
//   - the registrations on disk, in rendezvous/server/store (bbolt).
//
// Imports: server may import rendezvous (session-key checks,
// MinRegisterTTL), rendezvous/wire, rendezvous/internal/*, internal/*,
// bbolt (through store) and prometheus. Nothing outside `p2pcat serve` and
// tests imports it: the client side never does.
package server
