package secure

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"net/netip"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

func (h *handshake) runResponder() (*Conn, error) {
	for {
		pkt, from, err := h.recv()
		if err != nil {
			return nil, err
		}
		switch pkt[0] {
		case typeHello:
			if h.hello != nil {
				// Only the first Hello is answered: one guess per handshake.
				if bytes.Equal(pkt, h.hello) {
					h.send(h.reply) // the initiator did not get our Reply
				}
				continue
			}
			m, err := parseHello(pkt)
			if err != nil {
				continue
			}
			if err := h.answerHello(m, pkt); err != nil {
				return nil, err
			}
		case typeFinish:
			if h.reply == nil {
				continue
			}
			m, err := parseFinish(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.reply) {
				continue
			}
			return h.acceptFinish(m, pkt, from)
		case typeAuthFailed:
			if h.noticeMatches(pkt) {
				return nil, authError("the initiator rejected the handshake")
			}
		case typeCancel:
			if h.cancelMatches(pkt) {
				return nil, ErrPeerCancelled
			}
		}
	}
}

// answerHello answers the first valid Hello with a Reply. A Hello is not
// authenticated, so one that is unusable (bad key, invalid share) is
// dropped, not treated as an attack; only local failures return an error.
func (h *handshake) answerHello(m *hello, pkt []byte) error {
	peerKey, err := parsePublicKey(m.pk, h.p.minBits())
	if err != nil {
		return nil
	}
	st, yb, err := cpace.Start(h.prs, h.ci, m.id[:], adOf(h.pk), rand.Reader)
	if err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	isk, err := st.Finish(m.ya[:], adOf(m.pk), cpace.Responder)
	if err != nil {
		return nil
	}
	if _, err := rand.Read(h.secretR[:]); err != nil {
		clear(isk)
		return fmt.Errorf("secure: %w", err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, peerKey, h.secretR[:], labelSecretR)
	if err != nil {
		clear(isk)
		return fmt.Errorf("secure: encrypting to the initiator's key: %w", err)
	}
	h.sendMu.Lock()
	h.id = m.id
	h.sendMu.Unlock()
	h.hello = bytes.Clone(pkt)
	h.setHello(h.hello)
	h.isk = isk
	if err := h.setCancelKey(isk); err != nil {
		return err
	}
	r := reply{id: h.id, ref: refOf(h.hello), pk: h.pk, ct: ct}
	copy(r.yb[:], yb)
	tag, err := earlyTag(isk, h.id, h.hello, r.marshalUntagged())
	if err != nil {
		return err
	}
	copy(r.tag[:], tag)
	h.reply = r.marshal()
	h.send(h.reply)
	return nil
}

// acceptFinish verifies a Finish that names our Reply; success completes
// the responder's handshake.
func (h *handshake) acceptFinish(m *finish, pkt []byte, from netip.AddrPort) (*Conn, error) {
	var secretI [32]byte
	defer clear(secretI[:])
	si, err := rsa.DecryptOAEP(sha256.New(), nil, h.key, m.ct, labelSecretI)
	if err != nil || len(si) != len(secretI) {
		h.notify(pkt)
		return nil, authError("cannot decrypt the initiator's secret")
	}
	copy(secretI[:], si)
	clear(si)
	t := transcriptHash(h.hello, h.reply, pkt[:len(pkt)-tagSize])
	keys, err := deriveKeys(h.isk, secretI[:], h.secretR[:], t[:])
	if err != nil {
		return nil, err
	}
	defer keys.wipe()
	if !hmac.Equal(m.tag[:], mac(keys.confirmI, t[:])) {
		h.notify(pkt)
		return nil, authError("the initiator's key confirmation did not verify")
	}
	h.link.Confirm(from)

	h.fin = bytes.Clone(pkt)
	full := transcriptHash(h.hello, h.reply, h.fin)
	fd := finished{id: h.id, ref: refOf(h.fin)}
	copy(fd.tag[:], mac(keys.confirmR, full[:]))
	h.finished = fd.marshal()

	conn, err := newConn(h.link, h.id, dirKeys{keys.responderToInitiator, keys.headRI}, dirKeys{keys.initiatorToResponder, keys.headIR}, from, h.keepalive())
	if err != nil {
		return nil, err
	}
	conn.finished = h.finished
	conn.finishHash = sha256.Sum256(h.fin)
	conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin), refOf(h.finished)}
	conn.cancelKey = bytes.Clone(h.cancelKey)
	h.send(h.finished)
	return conn, nil
}
