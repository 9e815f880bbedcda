package secure

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

// Handshake runs the p2pcat v2 handshake over link (see the package
// documentation) and returns the established Conn, which owns link from
// then on: a Handshaker run once until p.Timeout. A failed authentication
// returns an error matching ErrAuth. If ctx ends or the timeout passes
// first, it returns an error wrapping ctx's error (or, for a responder that
// answered a Hello, one matching ErrUnconfirmed), and a link that cannot
// bound its Recv with a deadline is closed to unblock it.
func Handshake(ctx context.Context, link Link, p Params) (*Conn, error) {
	hs, err := NewHandshaker(p)
	if err != nil {
		return nil, err
	}
	conn, err := hs.Run(ctx, link, time.Now().Add(durationOr(p.Timeout, DefaultTimeout)))
	cerr := hs.Close()
	switch {
	case err == nil:
		return conn, nil
	case cerr != nil && ctx.Err() == nil && !errors.Is(err, ErrAuth):
		return nil, cerr // we answered a Hello, and it was never confirmed
	}
	return nil, err
}

// Handshaker is one handshake, which may run over several links in turn:
// the pipe runs it over each punch attempt's path until one carries it to
// the end. Its state (the Hello, the one Reply a responder gives, the keys)
// lives as long as the Handshaker, so that every attempt continues the same
// handshake and a responder never answers a second Hello: one password
// guess per run, whatever the attempts. It is used by one goroutine.
type Handshaker struct {
	p      Params
	h      *handshake
	conn   *Conn // the result, once done
	failed error // a terminal failure (authentication, cancel, version)
	closed bool
}

// NewHandshaker checks p, takes (or generates) the RSA key and prepares the
// handshake; an initiator draws its Hello now.
func NewHandshaker(p Params) (*Handshaker, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	key := p.RSAKey
	if key == nil {
		var err error
		if key, err = rsa.GenerateKey(rand.Reader, p.keyBits()); err != nil {
			return nil, fmt.Errorf("secure: generating RSA key: %w", err)
		}
	}
	p.RSAKey = nil // from here on only h.key, which wipe drops
	hs := &Handshaker{p: p}
	hs.h = newHandshake(nil, &hs.p, key)
	if p.Role == Initiator {
		if err := hs.h.makeHello(); err != nil {
			return nil, err
		}
	}
	return hs, nil
}

// Answered reports whether this side (a responder) has answered a Hello
// with its Reply: the one password-dependent answer of the handshake.
func (hs *Handshaker) Answered() bool { return hs.p.Role == Responder && hs.h.reply != nil }

// HasKeys reports whether this side (an initiator) accepted the peer's
// Reply and sent Finish: the path carried both directions, and only the
// peer's confirmation is missing.
func (hs *Handshaker) HasKeys() bool { return hs.p.Role == Initiator && hs.h.fin != nil }

// PeerAlsoInitiator reports whether this side, an initiator, received a
// well-formed Hello other than its own: the peer took the initiator's part
// too, so the two sides do not agree on their names. It only ever changes
// the words of a handshake that failed anyway (BothInitiators): anyone who
// can send from the peer's address can make a Hello, so it ends nothing.
func (hs *Handshaker) PeerAlsoInitiator() bool { return hs.p.Role == Initiator && hs.h.peerHello }

// Run runs the handshake over link until it completes, fails, ctx ends or
// the deadline passes. On success it returns the Conn, which owns link. At
// the deadline it returns ErrAttemptTimeout and the handshake can go on with
// another Run (over this link or another); a link failure (the caller closed
// it) can be resumed the same way. Authentication failures, the peer's
// Cancel and a version 1 peer are final. When ctx ends (the caller gives
// up), the peer is sent a Cancel notice and ctx's error is returned.
func (hs *Handshaker) Run(ctx context.Context, link Link, deadline time.Time) (*Conn, error) {
	switch {
	case hs.closed:
		return nil, errors.New("secure: handshake closed")
	case hs.failed != nil:
		return nil, hs.failed
	case hs.conn != nil:
		return hs.conn, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("secure: handshake: %w", err)
	}
	h := hs.h
	h.link = link
	if h.conn != nil {
		h.conn.setLink(link)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	release := h.unblockAtEnd(ctx, dctx, link, deadline)
	var conn *Conn
	var err error
	if hs.p.Role == Initiator {
		conn, err = h.runInitiator()
	} else {
		conn, err = h.runResponder()
	}
	return hs.settle(ctx, dctx, conn, err, release())
}

// unblockAtEnd makes link.Recv come back when dctx ends: by a past read
// deadline where the link has them (the link stays usable), else by closing
// it. When the caller gave up (ctx, not the deadline, which the peer runs
// into too), the peer is told first. The run calls release when its loop
// returned; release reports whether the link was closed under it.
func (h *handshake) unblockAtEnd(ctx, dctx context.Context, link Link, deadline time.Time) (release func() (closed bool)) {
	dl, canDeadline := link.(DeadlineLink)
	if canDeadline {
		_ = dl.SetReadDeadline(deadline)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(dctx, func() {
		defer close(fired)
		if ctx.Err() != nil {
			h.sendCancel()
		}
		if canDeadline {
			_ = dl.SetReadDeadline(time.Now())
		} else {
			_ = link.Close()
		}
	})
	return func() bool {
		ended := !stop()
		if ended {
			<-fired
		}
		if canDeadline {
			_ = dl.SetReadDeadline(time.Time{})
		}
		return ended && !canDeadline
	}
}

// settle turns the outcome of one run (its loop's result, and whether the
// link was closed under it) into Run's result: a Conn handed over, a final
// failure remembered, or the error of a run that may be resumed.
func (hs *Handshaker) settle(ctx, dctx context.Context, conn *Conn, err error, linkClosed bool) (*Conn, error) {
	switch {
	case err == nil && !linkClosed:
		hs.conn = conn
		conn.run()
		return conn, nil
	case err == nil:
		// Done, but the link was closed under the Conn meanwhile: there is
		// no session to hand over.
		conn.Close()
		err = hs.h.contextError(dctx)
		if ctx.Err() != nil {
			err = fmt.Errorf("secure: handshake: %w", context.Cause(ctx))
		}
		return nil, err
	case errors.Is(err, ErrAuth), errors.Is(err, ErrPeerCancelled), errors.Is(err, ErrPeerVersion):
		hs.failed = err
		return nil, err
	case ctx.Err() != nil:
		// The caller gave up (interrupted): that is what it wants to hear,
		// whatever else happened.
		return nil, fmt.Errorf("secure: handshake: %w", context.Cause(ctx))
	case dctx.Err() != nil, errors.Is(err, os.ErrDeadlineExceeded):
		// (The link's read deadline can fire a moment before dctx's.)
		return nil, hs.h.timeoutError()
	}
	return nil, err
}

// Close ends the handshake and wipes its secrets (a Conn it made keeps its
// own keys). It returns an error matching ErrUnconfirmed and ErrAuth when
// this side answered a Hello and the handshake never completed: a wrong
// password or session key on the other side, or a guess.
func (hs *Handshaker) Close() error {
	if hs.closed {
		return nil
	}
	answered := hs.Answered()
	hs.h.wipe()
	hs.closed = true
	if hs.conn == nil && answered && !errors.Is(hs.failed, ErrAuth) && !errors.Is(hs.failed, ErrPeerCancelled) {
		// (A Cancel that a responder believes proved the password.)
		return unconfirmedError{"no valid answer to our reply"}
	}
	return nil
}

// handshake is the state of one side. It is used by one goroutine, except
// for send, which the initiator's resender also calls.
type handshake struct {
	p         *Params
	link      Link
	key       *rsa.PrivateKey
	pk        []byte // our modulus, as sent
	ci, prs   []byte
	buf       [maxDatagram + 1]byte
	resend    *resender
	sendMu    sync.Mutex
	sendErr   error  // the last Send error, reported if the handshake times out
	helloRef  *ref   // ref(Hello) once there is one, for a Cancel notice (guarded by sendMu)
	cancelKey []byte // K_cancel once there is an ISK (guarded by sendMu)
	id        handshakeID

	// The transcript: whole datagrams, in order, once sent or accepted.
	hello, reply, fin, finished []byte

	cpace        *cpace.State // initiator, between Hello and Reply
	isk          []byte       // responder, between Hello and Finish
	secretR      [32]byte     // responder, between Hello and Finish
	wantConfirmR []byte       // initiator, between Finish and Finished
	conn         *Conn        // initiator, between Finish and Finished
	peerHello    bool         // initiator: a Hello not ours came (PeerAlsoInitiator)
}

func newHandshake(link Link, p *Params, key *rsa.PrivateKey) *handshake {
	h := &handshake{p: p, link: link, key: key, pk: key.N.Bytes()}
	initiatorName, responderName := p.LocalName, p.PeerName
	if p.Role == Responder {
		initiatorName, responderName = p.PeerName, p.LocalName
	}
	for _, s := range []string{"p2pcat v2", p.Session, initiatorName, responderName} {
		h.ci = appendLV(h.ci, []byte(s))
	}
	h.prs = appendLV(appendLV(nil, p.Password), p.SessionKey)
	return h
}

func (h *handshake) send(b []byte) {
	if err := h.link.Send(b); err != nil {
		// Datagrams get lost anyway; retransmission covers a failed send.
		h.sendMu.Lock()
		h.sendErr = err
		h.sendMu.Unlock()
	}
}

// recv returns the next handshake datagram: from the one allowed address
// when there is one (Params.OnlyFrom), and never a version 1 handshake
// message, which fails the handshake when it comes from that address.
func (h *handshake) recv() ([]byte, netip.AddrPort, error) {
	for {
		n, from, err := h.link.Recv(h.buf[:])
		if err != nil {
			return nil, from, fmt.Errorf("secure: handshake: %w", err)
		}
		if n == 0 || n > maxDatagram {
			continue
		}
		pkt := h.buf[:n]
		if h.p.OnlyFrom.IsValid() && from != h.p.OnlyFrom {
			if pkt[0] < typeData || pkt[0] > typeDataHead { // data packets authenticate themselves
				continue
			}
		}
		if isV1Handshake(pkt) {
			if h.p.OnlyFrom.IsValid() {
				return nil, from, fmt.Errorf("%w (it answered from %s)", ErrPeerVersion, from)
			}
			continue
		}
		return pkt, from, nil
	}
}

func (h *handshake) contextError(ctx context.Context) error {
	if err := context.Cause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("secure: handshake: %w", err)
	}
	return h.timeoutError()
}

// timeoutError is the error of a handshake run that reached its deadline.
func (h *handshake) timeoutError() error {
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	if h.sendErr != nil {
		return attemptTimeout(fmt.Sprintf("secure: handshake timed out (last send error: %v)", h.sendErr))
	}
	return attemptTimeout("secure: handshake timed out, no answer from the peer")
}

// wipe drops every secret the handshake held.
func (h *handshake) wipe() {
	h.key = nil
	h.cpace = nil
	clear(h.isk)
	clear(h.secretR[:])
	clear(h.wantConfirmR)
	clear(h.buf[:])
	clear(h.prs)
	h.sendMu.Lock()
	clear(h.cancelKey)
	h.cancelKey = nil
	h.sendMu.Unlock()
	h.isk, h.wantConfirmR, h.prs = nil, nil, nil
}

func (h *handshake) keepalive() time.Duration { return durationOr(h.p.Keepalive, DefaultKeepalive) }
