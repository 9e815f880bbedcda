package secure

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

// makeHello draws the handshake id and the initiator's CPace share and
// builds the Hello, once per handshake: every Run sends the same one.
func (h *handshake) makeHello() error {
	var id handshakeID
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	h.sendMu.Lock()
	h.id = id
	h.sendMu.Unlock()
	st, ya, err := cpace.Start(h.prs, h.ci, h.id[:], adOf(h.pk), rand.Reader)
	if err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	h.cpace = st
	m := hello{id: h.id, pk: h.pk}
	copy(m.ya[:], ya)
	h.hello = m.marshal()
	h.setHello(h.hello)
	return nil
}

// runInitiator sends the current message (Hello, or Finish once a Reply
// was accepted), retransmits it, and processes answers until done.
func (h *handshake) runInitiator() (*Conn, error) {
	current := h.hello
	if h.fin != nil {
		current = h.fin
	}
	first := durationOr(h.p.Retransmit, DefaultRetransmit)
	h.resend = startResender(h.send, first, retransmitBackoff*first)
	defer h.resend.stop()
	h.send(current)
	h.resend.set(current)

	for {
		pkt, from, err := h.recv()
		if err != nil {
			return nil, err
		}
		switch pkt[0] {
		case typeReply:
			if h.reply != nil {
				if bytes.Equal(pkt, h.reply) {
					h.send(h.fin) // the responder did not get our Finish
				}
				continue
			}
			m, err := parseReply(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.hello) {
				continue
			}
			if err := h.acceptReply(m, pkt, from); err != nil {
				return nil, err
			}
			h.resend.set(h.fin)
		case typeFinished:
			if h.fin == nil {
				continue
			}
			m, err := parseFinished(pkt)
			if err != nil || m.id != h.id || m.ref != refOf(h.fin) {
				continue
			}
			return h.acceptFinished(m, pkt, from)
		case typeData, typeDataHead, typeKeepalive:
			if h.conn != nil && h.conn.acceptEarly(pkt, from) {
				return h.conn, nil
			}
		case typeAuthFailed:
			if h.noticeMatches(pkt) {
				return nil, authError("the responder rejected the handshake")
			}
		case typeCancel:
			if h.cancelMatches(pkt) {
				return nil, ErrPeerCancelled
			}
		case typeHello:
			// Only a responder answers a Hello; one that is not ours means
			// the peer is an initiator too (PeerAlsoInitiator).
			if m, err := parseHello(pkt); err == nil && m.id != h.id {
				h.peerHello = true
			}
		}
	}
}

// acceptReply verifies a Reply that names our Hello and answers it with
// Finish. Every failure here is an authentication failure: the Reply claims
// to answer us.
func (h *handshake) acceptReply(m *reply, pkt []byte, from netip.AddrPort) error {
	isk, err := h.checkEarlyTag(m, pkt)
	if err != nil {
		return err
	}
	defer clear(isk)
	if err := h.setCancelKey(isk); err != nil {
		return err
	}
	// The responder knows the password: from here on it is authenticated.
	h.link.Confirm(from)
	var secretI, secretR [32]byte
	defer clear(secretI[:])
	defer clear(secretR[:])
	ct, err := h.exchangeSecrets(m, pkt, &secretI, &secretR)
	if err != nil {
		return err
	}
	h.reply = bytes.Clone(pkt)
	return h.sendFinish(isk, secretI[:], secretR[:], ct, from)
}

// checkEarlyTag completes CPace with the responder's share and checks the
// Reply's early tag, the proof that the responder used the same password.
// It returns the ISK, which the caller clears.
func (h *handshake) checkEarlyTag(m *reply, pkt []byte) ([]byte, error) {
	isk, err := h.cpace.Finish(m.yb[:], adOf(m.pk), cpace.Initiator)
	if err != nil {
		h.notify(pkt)
		return nil, authError("the responder's CPace share is invalid")
	}
	h.cpace = nil
	want, err := earlyTag(isk, h.id, h.hello, pkt[:len(pkt)-tagSize])
	if err != nil {
		clear(isk)
		return nil, err
	}
	if !hmac.Equal(m.tag[:], want) {
		clear(isk)
		h.notify(pkt)
		return nil, authError("the responder's early confirmation did not verify")
	}
	return isk, nil
}

// exchangeSecrets decrypts the responder's secret from the Reply into
// secretR, draws ours into secretI and returns it encrypted to the
// responder's key, for Finish.
func (h *handshake) exchangeSecrets(m *reply, pkt []byte, secretI, secretR *[32]byte) ([]byte, error) {
	peerKey, err := parsePublicKey(m.pk, h.p.minBits())
	if err != nil {
		return nil, fmt.Errorf("secure: responder's %w", err)
	}
	sr, err := rsa.DecryptOAEP(sha256.New(), nil, h.key, m.ct, labelSecretR)
	if err != nil || len(sr) != len(secretR) {
		h.notify(pkt)
		return nil, authError("cannot decrypt the responder's secret")
	}
	copy(secretR[:], sr)
	clear(sr)
	if _, err := rand.Read(secretI[:]); err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, peerKey, secretI[:], labelSecretI)
	if err != nil {
		return nil, fmt.Errorf("secure: encrypting to the responder's key: %w", err)
	}
	return ct, nil
}

// sendFinish derives the session keys from the accepted Reply, builds
// Finish with its confirmation, prepares the Conn that Finished (or the
// first data packet) completes, and sends Finish.
func (h *handshake) sendFinish(isk, secretI, secretR, ct []byte, from netip.AddrPort) error {
	f := finish{id: h.id, ref: refOf(h.reply), ct: ct}
	untagged := f.marshalUntagged()
	t := transcriptHash(h.hello, h.reply, untagged)
	keys, err := deriveKeys(isk, secretI, secretR, t[:])
	if err != nil {
		return err
	}
	defer keys.wipe()
	copy(f.tag[:], mac(keys.confirmI, t[:]))
	h.fin = f.marshal()
	full := transcriptHash(h.hello, h.reply, h.fin)
	h.wantConfirmR = mac(keys.confirmR, full[:])

	h.conn, err = newConn(h.link, h.id, dirKeys{keys.initiatorToResponder, keys.headIR}, dirKeys{keys.responderToInitiator, keys.headRI}, from, h.keepalive())
	if err != nil {
		return err
	}
	h.conn.refs = []ref{refOf(h.hello), refOf(h.reply), refOf(h.fin)}
	h.conn.cancelKey = bytes.Clone(h.cancelKey)
	h.send(h.fin)
	return nil
}

// acceptFinished verifies a Finished that names our Finish; success
// completes the initiator's handshake.
func (h *handshake) acceptFinished(m *finished, pkt []byte, from netip.AddrPort) (*Conn, error) {
	if !hmac.Equal(m.tag[:], h.wantConfirmR) {
		h.notify(pkt)
		return nil, authError("the responder's key confirmation did not verify")
	}
	h.conn.confirmPeer(from)
	return h.conn, nil
}

// resender retransmits the initiator's current message on a timer that
// doubles after each retransmission and restarts when the message changes.
// Its goroutine is owned by the handshake, which stops it before returning.
type resender struct {
	send       func([]byte)
	first, max time.Duration
	mu         sync.Mutex
	msg        []byte
	kick       chan struct{}
	done       chan struct{}
	wg         sync.WaitGroup
}

func startResender(send func([]byte), first, max time.Duration) *resender {
	r := &resender{send: send, first: first, max: max, kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.wg.Add(1)
	go r.routine()
	return r
}

// set makes msg the message to retransmit, starting from the first delay.
func (r *resender) set(msg []byte) {
	r.mu.Lock()
	r.msg = msg
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *resender) stop() {
	close(r.done)
	r.wg.Wait()
}

func (r *resender) routine() {
	defer r.wg.Done()
	delay := r.first
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-r.kick:
			delay = r.first
			t.Reset(delay)
		case <-t.C:
			r.mu.Lock()
			msg := r.msg
			r.mu.Unlock()
			if msg != nil {
				r.send(msg)
			}
			delay = min(2*delay, r.max)
			t.Reset(delay)
		}
	}
}
