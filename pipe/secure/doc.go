// Package secure authenticates two peers that share a password, agrees on
// session keys, and then carries their datagrams encrypted and
// authenticated.
//
// It owns the p2pcat v2 handshake (handshake.go runs it over one or more
// links, initiator.go and responder.go are its two sides, keys.go the key
// schedule, notice.go the AuthFailed and Cancel notices, messages.go the
// wire format, params.go its configuration, rsakey.go the ephemeral RSA
// key's generation) and the data plane that follows
// it: Conn (conn.go), sealing (seal.go), opening (recv.go) and the replay
// window (replay.go). Below it is a Link (link.go), which pipe/path
// implements; above it, pipe runs the handshake and carries its stream over
// the Conn. It imports the standard library and pipe/cpace, and nothing
// else of p2pcat: it reaches the path only through Link and knows nothing
// of the stream.
//
// # Overview (protocol p2pcat v2)
//
// Inputs: the role (initiator or responder: the side whose name sorts first
// initiates), the session name, both peer names, the password, and for a
// registered session the session key's CPace input; none of them leaves
// the machine.
//
// Notation: H = SHA-256; lv(x) = LEB128(len(x)) || x; ref(m) = the first 16
// bytes of H(m) for a whole datagram m; HMAC = HMAC-SHA256; HKDF =
// HKDF-SHA256 (RFC 5869).
//
// # Wire format
//
// One message per UDP datagram, never more than 1200 bytes. Integers are
// big-endian; a variable field has a 2-byte length of 1 to 512; a datagram
// with bytes left over is malformed. The first byte is the type:
//
//	Hello      = 0xE8 | hsid (16) | len (2) | pk_I | Ya (32)
//	Reply      = 0xE9 | hsid (16) | ref(Hello) (16)
//	             | len (2) | pk_R | Yb (32) | len (2) | ct_R | early tag (32)
//	Finish     = 0xEA | hsid (16) | ref(Reply) (16) | len (2) | ct_I | confirm_I (32)
//	Finished   = 0xEB | hsid (16) | ref(Finish) (16) | confirm_R (32)
//	AuthFailed = 0xEC | hsid (16) | ref(Hello as the sender saw it) (16)
//	             | ref(the message that failed verification) (16)
//	Cancel     = 0xED | hsid (16) | ref(Hello) (16) | tag (32)
//	Data       = 0xD0 | counter (8) | AES-256-GCM ciphertext of the payload | tag (16)
//	Keepalive  = 0xD1 | counter (8) | tag (16)
//	DataHead   = 0xD2 | counter (8) | h (1) | protected head (h) | AES-256-GCM ciphertext of the body | tag (16)
//
// hsid is 16 random bytes drawn by the initiator for its Hello. The type
// values avoid the first-byte ranges RFC 7983 gives STUN, ZRTP, DTLS, TURN
// channels and RTP. With 4096-bit keys the largest message, Reply, is 1141
// bytes. A Data or Keepalive packet is sealed with the sender's direction
// key; its nonce is 4 zero bytes || counter and its additional data the
// 9-byte header. The counter starts at 0, grows by one per packet and is
// never reused; the receiver accepts each counter once, within a window of
// 4032 behind the highest it accepted.
//
// # Key exchange
//
// Each side has a fresh RSA key (2048 to 4096 bits, public exponent 65537)
// used for this handshake only; pk is its modulus, big-endian without
// leading zeros. Each side draws a fresh 32-byte secret, secret_I or
// secret_R. The password is bound with CPace (draft-irtf-cfrg-cpace-21,
// CPACE-RISTR255-SHA512, initiator-responder setting, package pipe/cpace):
//
//	PRS = lv(password) || lv(session key input)      (the second empty for an unregistered session)
//	sid = hsid
//	CI  = lv("p2pcat v2") || lv(session name) || lv(initiator name) || lv(responder name)
//	ADa = H(pk_I)            ADb = H(pk_R)
//
// CPace yields the shares Ya, Yb and the 64-byte ISK. Then:
//
//	ct_R      = RSA-OAEP-SHA256(pk_I, secret_R, label "p2pcat v2 secret responder")
//	ct_I      = RSA-OAEP-SHA256(pk_R, secret_I, label "p2pcat v2 secret initiator")
//	K_early   = HKDF(ikm = ISK, salt = hsid, info = "p2pcat v2 early confirm", 32 bytes)
//	early tag = HMAC(K_early, H(Hello || Reply without its tag))
//	T         = H(Hello || Reply || Finish without confirm_I)
//	K_cI || K_cR || K_IR || K_RI || K_hIR || K_hRI
//	          = HKDF(ikm = ISK || secret_I || secret_R, salt = T, info = "p2pcat v2 keys", 192 bytes)
//	confirm_I = HMAC(K_cI, T)
//	confirm_R = HMAC(K_cR, H(Hello || Reply || Finish))
//
// The flow:
//
//	I -> R  Hello    {hsid, pk_I, Ya}
//	R -> I  Reply    {ref(Hello), pk_R, Yb, ct_R, early tag}
//	I -> R  Finish   {ref(Reply), ct_I, confirm_I}
//	R -> I  Finished {ref(Finish), confirm_R}
//
// The initiator checks the early tag before anything else, so a wrong
// password is detected after one round trip, and only then decrypts ct_R.
// The responder checks confirm_I, and the initiator confirm_R; each
// confirmation covers the whole transcript, so any change to a public key,
// share or ciphertext makes it fail. The responder is done when Finish
// verifies; the initiator when Finished verifies, or when an authentic data
// or keepalive packet arrives first (only a responder holding the keys can
// make one).
//
// # One guess, and it shows
//
// The only password-dependent answer a side gives to someone who has not
// proven the password is the responder's Reply (its early tag lets whoever
// sent the Hello test one guess). A handshake therefore answers one Hello,
// the first usable one, and no other for as long as it runs, which is the
// whole connect phase of a run: the pipe keeps the same handshake across
// its punch attempts (the link below changes, the handshake does not), and
// the initiator retransmits the same Hello. When the handshake ends,
// however it ends (timeout, the link closed under it), after a Reply went
// out and no valid Finish came back, it fails with an error matching both
// ErrAuth and ErrUnconfirmed: a handshake was begun and never confirmed,
// which is a wrong password or session key on the other side, or someone
// guessing. The initiator gives nothing password-dependent to an unproven
// peer: it checks the early tag first, and a Reply that fails it ends the
// handshake with ErrAuth.
//
// Rules for an unreliable network:
//
//   - Only the initiator retransmits, on a timer with exponential backoff:
//     Hello until a Reply arrives, then Finish until it is done. The
//     responder only answers: a repeated Hello gets the same Reply, a
//     repeated Finish (also after the handshake, from the Conn) gets the same
//     Finished. Identical datagrams are therefore harmless.
//   - Every answer names the message it answers by ref, and every message
//     carries hsid. Datagrams that do not parse, carry another hsid, or
//     name a message this side did not send are dropped, so stale and stray
//     packets are ignored.
//   - With Params.OnlyFrom (direct mode) every handshake datagram from
//     another address is dropped, so nobody else can take the responder's
//     one answer.
//   - A message that names ours but fails verification (invalid share,
//     wrong tag, undecryptable ciphertext) ends the handshake with ErrAuth.
//     Before returning, the side sends three copies of AuthFailed
//     {ref(Hello), ref(failed message)}; the other side returns ErrAuth when
//     either ref matches a message of its handshake, so both sides fail at
//     once. The notice is unauthenticated: it can only make a handshake
//     fail, never succeed. After the handshake the Conn honours it only until
//     the first authentic packet from the peer. Cancel, sent when the
//     caller gives up (ctx cancelled, not a timeout), works the same way.
//   - A packet from an address other than the current peer's is processed
//     like any other; once a packet authenticates (Reply or Finished for the
//     initiator, Finish for the responder, any data packet later), its source
//     is passed to Link.Confirm.
//
// Afterwards each side drops its RSA private key, the secrets, the CPace
// state, the ISK and the confirmation keys, overwriting the byte slices it
// owns (big.Int values of the RSA key cannot be reliably overwritten).
//
// # Threat model
//
// PROTOCOL.md section 5 has the full table. In short: a passive
// eavesdropper learns neither the password (no offline dictionary attack:
// the CPace shares reveal nothing about it) nor the keys; recorded sessions
// stay secret if the password leaks later (the keys depend on ephemeral
// CPace scalars and RSA keys). An active attacker without the password, the
// rendezvous server included, can deny service and test one password guess
// per run of the victim, and the victim sees it as an authentication
// failure; it cannot make the peers accept a substituted key, share or
// ciphertext, agree on a key it knows, or forge, alter or replay data
// packets. Someone who knows the password (and, for a registered session,
// its key) can impersonate either peer: they are the only credentials.
package secure
