package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/p2pcat/p2pcat/internal/udpio"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// The exchange under every client call: one conversation with the
// server, its re-sends, and what counts as its answer.

// exchange is one request/answer conversation with the server, identified by
// a random request id that every answer echoes (so stray or forged answers
// from other conversations are ignored).
type exchange struct {
	c     *Client
	ctx   context.Context
	reqID uint64
	buf   []byte
	// pending is an answer read while waiting that belongs to the next round.
	pending wire.Message
	// heardAt is when the server last answered (the exchange's start until
	// it first does); heardAny says whether it ever did.
	heardAt  time.Time
	heardAny bool
	// authErr is what an Error code 4 (auth_failed) means to this exchange.
	authErr error
	// start is when the exchange began; sent counts the datagrams it sent,
	// re-sends included: the round trips it took when none was lost and
	// no stray datagram woke wait (scripts/setup_steps.sh reads them from
	// the -vv log).
	start time.Time
	sent  int
	// wakeOnStray: receive returns early, as at its deadline, when a
	// datagram from another address arrives, at most once per Retry
	// (strayWoke is when it last did); Find sets it once it has a cookie.
	wakeOnStray bool
	strayWoke   time.Time
	// stamped, when set, is the socket read with its kernel receive
	// timestamps on (into oob); arrived is when the last answer arrived:
	// its timestamp, or else heardAt.
	stamped *net.UDPConn
	oob     []byte
	arrived time.Time
}

func (c *Client) newExchange(ctx context.Context) *exchange {
	var b [8]byte
	rand.Read(b[:])
	now := time.Now()
	return &exchange{c: c, ctx: ctx, reqID: binary.BigEndian.Uint64(b[:]), buf: make([]byte, 2048), heardAt: now, start: now}
}

// errSilent: the server left us unanswered for longer than ServerTimeout.
var errSilent = errors.New("no answer")

// silent reports whether the server has been quiet for too long.
func (ex *exchange) silent() error {
	if d := time.Since(ex.heardAt); d >= ex.c.serverTimeout() {
		return errSilent
	}
	return nil
}

// final turns an exchange's failure into the error a caller returns: ctx's
// own error when it was cancelled (interrupted), ErrNoServer when the
// server never answered, ErrServerLost when it stopped.
func (ex *exchange) final(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, errSilent), errors.Is(err, context.DeadlineExceeded):
		if !ex.heardAny {
			return fmt.Errorf("%w at %s", ErrNoServer, ex.c.Server)
		}
		if errors.Is(err, errSilent) {
			return fmt.Errorf("%w at %s: no answer for %s", ErrServerLost, ex.c.Server, ex.c.serverTimeout())
		}
		return fmt.Errorf("%w at %s: the request did not complete in time", ErrServerLost, ex.c.Server)
	}
	return err
}

// leave sends a Leave three times in case one is lost, without waiting
// for an answer (the server sends none). The copies go leaveSpacing
// apart: a queue that overflows (a busy host's backlog, a router's
// buffer) drops back-to-back datagrams together, and a Leave lost
// altogether leaves the peer paired with a client that is gone.
func (ex *exchange) leave(m *wire.Leave) {
	for i := range 3 {
		if i > 0 {
			time.Sleep(leaveSpacing)
		}
		if ex.send(m) != nil {
			return
		}
	}
}

// leaveSpacing is the time between two copies of a Leave: the whole
// Leave costs an interrupted find 10 ms.
const leaveSpacing = 5 * time.Millisecond

func (ex *exchange) challenge(session string) (*wire.Challenge, error) {
	for {
		reply, err := ex.roundTrip(&wire.Hello{ReqID: ex.reqID, Session: session})
		if err != nil {
			return nil, err
		}
		if ch, ok := reply.(*wire.Challenge); ok {
			ex.c.log().Debug("rendezvous: challenge", "requests", ex.sent, "took", time.Since(ex.start).String())
			return ch, nil
		}
	}
}

func (ex *exchange) send(m wire.Message) error {
	b := wire.Pad(m.AppendTo(nil))
	if _, err := ex.c.Conn.WriteToUDPAddrPort(b, ex.c.Server); err != nil {
		return fmt.Errorf("sending to rendezvous server %s: %w", ex.c.Server, err)
	}
	ex.sent++
	return nil
}

// roundTrip sends m and returns the first answer to it, re-sending with
// backoff. Error answers become errors.
func (ex *exchange) roundTrip(m wire.Message) (wire.Message, error) {
	if ex.pending != nil {
		reply := ex.pending
		ex.pending = nil
		return ex.answer(reply)
	}
	retry, maxRetry := ex.c.retries()
	for {
		if err := ex.send(m); err != nil {
			return nil, err
		}
		reply, err := ex.receive(time.Now().Add(retry))
		if err != nil {
			return nil, err
		}
		if e, ok := reply.(*wire.Error); ok && (e.Code == wire.CodeRateLimited || e.Code == wire.CodeBusy) {
			// Back off and try again; the server is protecting itself.
			ex.c.log().Debug("rendezvous server asks to slow down", "code", e.Code.String())
			wake := ex.wakeOnStray
			ex.wakeOnStray = false // no stray datagram cuts this wait short
			_, err := ex.receive(time.Now().Add(maxRetry))
			ex.wakeOnStray = wake
			if err != nil {
				return nil, err
			}
			retry = maxRetry
			continue
		}
		if reply != nil {
			return ex.answer(reply)
		}
		if err := ex.silent(); err != nil {
			return nil, err
		}
		retry = min(2*retry, maxRetry)
	}
}

// wait re-sends a waiting find every MaxRetry until an answer other than
// "still waiting" arrives, which it keeps for the next roundTrip; a stray
// datagram re-sends it sooner (see Find).
func (ex *exchange) wait(m wire.Message) error {
	_, maxRetry := ex.c.retries()
	for {
		reply, err := ex.receive(time.Now().Add(maxRetry))
		if err != nil {
			return err
		}
		if r, ok := reply.(*wire.FindResp); ok && r.Status == wire.FindWaiting {
			continue
		}
		if reply != nil {
			ex.pending = reply
			return nil
		}
		if err := ex.silent(); err != nil {
			return err
		}
		if err := ex.send(m); err != nil {
			return err
		}
	}
}

// receive returns the next answer to this exchange, or nil at the deadline.
func (ex *exchange) receive(deadline time.Time) (wire.Message, error) {
	if d, ok := ex.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ex.ctx, func() {
		defer close(fired)
		ex.c.Conn.SetReadDeadline(time.Now())
	})
	defer func() {
		// The socket goes on to carry the session: leave no deadline on it,
		// and no wake-up that still runs and could set one after we clear it.
		if !stop() {
			<-fired
		}
		ex.c.Conn.SetReadDeadline(time.Time{})
	}()
	for {
		if err := ex.ctx.Err(); err != nil {
			return nil, err
		}
		ex.c.Conn.SetReadDeadline(deadline)
		n, from, stamp, err := ex.read()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := ex.ctx.Err(); err != nil {
					return nil, err
				}
				// ctx's own timer may fire a moment after the socket's:
				// its deadline is past all the same, and nothing more
				// (say, a re-sent Find after our Leave) may go out.
				if d, ok := ex.ctx.Deadline(); ok && !time.Now().Before(d) {
					return nil, context.DeadlineExceeded
				}
				return nil, nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			// ICMP port unreachable surfaces as a read error on some
			// systems: the server is not there (yet); keep trying.
			ex.c.log().Debug("rendezvous read error", "err", err)
			continue
		}
		if udpio.Unmap(from) != udpio.Unmap(ex.c.Server) {
			if ex.strayWakes(from) {
				return nil, nil
			}
			continue // a peer's early probe, or noise
		}
		if id, ok := wire.ReqIDOf(ex.buf[:n]); !ok || id != ex.reqID {
			continue
		}
		msg, err := wire.Decode(ex.buf[:n])
		if err != nil {
			// A server of another version says so in an Error we can read
			// (its layout is the same in every version): fail at once,
			// rather than ignore it until we time out.
			if e, v, ok := wire.DecodeAnyVersionError(ex.buf[:n]); ok && v != wire.Version {
				return nil, &versionError{server: ex.c.Server, version: int(v), message: e.Message}
			}
			// A FindResp of our own version that does not decode (a
			// peer name that is no name, say) is an answer we must not
			// act on, nor wait for again: the server is broken.
			if h, herr := wire.ParseHeader(ex.buf[:n]); herr == nil && h.Type == wire.TypeFindResp {
				return nil, fmt.Errorf("%w from %s: %v", ErrBadAnswer, ex.c.Server, err)
			}
			ex.c.log().Debug("ignoring undecodable answer", "err", err)
			continue
		}
		ex.heardAt, ex.heardAny = time.Now(), true
		ex.arrived = ex.heardAt
		if d := ex.heardAt.Sub(stamp); !stamp.IsZero() && d >= 0 && d < time.Second {
			// As an offset from now, which keeps the monotonic clock
			// reading (a step of the wall clock moves nothing).
			ex.arrived = ex.heardAt.Add(-d)
		}
		return msg, nil
	}
}

// read reads the next datagram into ex.buf, with its kernel receive time
// when the socket is stamped (zero otherwise).
func (ex *exchange) read() (n int, from netip.AddrPort, stamp time.Time, err error) {
	if ex.stamped == nil {
		n, from, err = ex.c.Conn.ReadFromUDPAddrPort(ex.buf)
		return n, from, time.Time{}, err
	}
	n, oobn, _, from, err := ex.stamped.ReadMsgUDPAddrPort(ex.buf, ex.oob)
	if err == nil {
		stamp, _ = udpio.ReceiveTime(ex.oob[:oobn])
	}
	return n, from, stamp, err
}

// strayWakes reports whether a datagram from another address than the
// server's, arriving now, ends the receive early (see Find).
func (ex *exchange) strayWakes(from netip.AddrPort) bool {
	retry, _ := ex.c.retries()
	if !ex.wakeOnStray || time.Since(ex.strayWoke) < retry {
		return false
	}
	ex.strayWoke = time.Now()
	ex.c.log().Debug("a datagram from another address while finding: asking the server again", "from", from.String())
	return true
}

func (ex *exchange) answer(m wire.Message) (wire.Message, error) {
	e, ok := m.(*wire.Error)
	if !ok {
		return m, nil
	}
	switch e.Code {
	case wire.CodeAuthFailed:
		if ex.authErr != nil {
			return nil, ex.authErr
		}
		return nil, ErrSessionKeyRefused
	case wire.CodeTaken:
		return nil, ErrTaken
	case wire.CodeVersion:
		// In our own version: the server takes us for another one.
		return nil, &versionError{server: ex.c.Server, version: -1, message: e.Message}
	}
	return nil, &ServerError{Code: e.Code, Message: e.Message}
}
