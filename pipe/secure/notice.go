package secure

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
)

// setHello records the Hello of this handshake (sent or answered).
func (h *handshake) setHello(hello []byte) {
	r := refOf(hello)
	h.sendMu.Lock()
	h.helloRef = &r
	h.sendMu.Unlock()
}

// sendCancel tells the peer, with copies in case some are lost, that we
// give the handshake up. Before there is a Hello there is nothing the peer
// could check a notice against, and nothing is sent.
func (h *handshake) sendCancel() {
	h.sendMu.Lock()
	r, id, key := h.helloRef, h.id, h.cancelKey
	m := cancel{id: id}
	if r != nil {
		m.hello = *r
		if key != nil {
			copy(m.tag[:], mac(key, r[:]))
		}
	}
	h.sendMu.Unlock()
	if r == nil {
		return
	}
	b := m.marshal()
	for range noticeCopies {
		_ = h.link.Send(b)
	}
}

// setCancelKey derives K_cancel from the ISK, for Cancel notices.
func (h *handshake) setCancelKey(isk []byte) error {
	k, err := hkdf.Key(sha256.New, isk, h.id[:], infoCancel, 32)
	if err != nil {
		return fmt.Errorf("secure: hkdf: %w", err)
	}
	h.sendMu.Lock()
	h.cancelKey = k
	h.sendMu.Unlock()
	return nil
}

// cancelMatches reports whether pkt is a Cancel notice for this handshake
// that we may believe: once we hold K_cancel (a responder that answered, an
// initiator that accepted the Reply), only with its tag, which only a
// holder of the password can make; a responder's answer is thus never
// written off as an interruption by someone who only guessed. Before, an
// initiator takes any Cancel that names its Hello (it has given nothing
// away: at worst, a denial of service by someone who saw the Hello).
func (h *handshake) cancelMatches(pkt []byte) bool {
	m, err := parseCancel(pkt)
	if err != nil || h.hello == nil || m.id != h.id || m.hello != refOf(h.hello) {
		return false
	}
	h.sendMu.Lock()
	key := h.cancelKey
	h.sendMu.Unlock()
	if key != nil {
		return hmac.Equal(m.tag[:], mac(key, m.hello[:]))
	}
	return h.p.Role == Initiator
}

// notify tells the peer that the message failed verification, so it fails
// too instead of waiting for its timeout.
func (h *handshake) notify(failed []byte) {
	n := authFailed{id: h.id, failed: refOf(failed)}
	if h.hello != nil {
		n.hello = refOf(h.hello)
	} else {
		n.hello = refOf(failed) // the responder rejects nothing before Hello
	}
	b := n.marshal()
	for range noticeCopies {
		h.send(b)
	}
}

// noticeMatches reports whether pkt is an AuthFailed notice about this
// handshake: one of its refs names a message we sent or accepted.
func (h *handshake) noticeMatches(pkt []byte) bool {
	m, err := parseAuthFailed(pkt)
	if err != nil || h.hello == nil || m.id != h.id {
		return false
	}
	for _, msg := range [][]byte{h.hello, h.reply, h.fin, h.finished} {
		if msg == nil {
			continue
		}
		if r := refOf(msg); r == m.hello || r == m.failed {
			return true
		}
	}
	return false
}
