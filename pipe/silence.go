package pipe

import (
	"sync"
	"time"
)

// An attempt that hears nothing from the peer is over early (unless it is
// the last, races the relay or punches the birthday way): at
// unheardTimeout, or refusedGrace after the first ICMP port unreachable
// about a datagram to one of the peer's candidates (path.Conn.Refused: a
// router took our probe for itself, so this pair of sockets is spoilt),
// whichever comes first. Both sides probe from the moment they are paired,
// so on a path that works their probes cross within a round trip.
//
// The watch runs from the punch on, so it also ends an attempt that is
// still waiting for the RSA key (awaitKey); a handshake run in progress is
// cut by a past read deadline on the path, which ends it as a timeout
// would, without a message sent again.

// watchSilence starts the attempt's watch, when the attempt ends for
// silence; a.unheard is closed when it is over.
func (a *attempt) watchSilence() {
	a.stopWatch = func() {}
	if a.last || !a.relayAt.IsZero() || a.birthdayPunching {
		return
	}
	over := make(chan struct{})
	done := make(chan struct{})
	var once sync.Once
	a.unheard = over
	a.stopWatch = func() { once.Do(func() { close(done) }) }
	if a.crossMissed {
		a.cfg.Logger.Debug("punch attempt: nothing crossed", "attempt", a.n+1)
		close(over) // the attempt's reads have not begun: nothing to cut
		return
	}
	go a.watch(over, done)
}

// watch closes over when the attempt is over for silence, and then cuts
// the link's reads until done: a run of the handshake that began just
// before the cut set its own read deadline, and the next cut ends it too.
func (a *attempt) watch(over chan<- struct{}, done <-chan struct{}) {
	if !a.silentUntilOver(done) {
		return
	}
	if isClosed(a.link.MovedOn()) {
		a.cfg.Logger.Debug("punch attempt: the peer moved on to another", "attempt", a.n+1)
	} else {
		a.cfg.Logger.Debug("punch attempt: nothing heard from the peer", "attempt", a.n+1, "icmp_refused", a.refusalCounts() && isClosed(a.link.Refused()))
	}
	close(over)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		_ = a.link.SetReadDeadline(time.Now())
		select {
		case <-done:
			return
		case <-tick.C:
		}
	}
}

// silentUntilOver waits for the attempt's moment to end for silence and
// reports whether nothing was heard from the peer until then, or whether
// the peer moved on to another attempt (path.Conn.MovedOn) in the
// meantime; false when done came first.
func (a *attempt) silentUntilOver(done <-chan struct{}) bool {
	end := time.Now().Add(unheardTimeout)
	timer := time.NewTimer(unheardTimeout)
	defer timer.Stop()
	var refused <-chan struct{} // nil: never
	if a.refusalCounts() {
		refused = a.link.Refused()
	}
	for {
		select {
		case <-done:
			return false
		case <-a.link.MovedOn():
			return true
		case <-refused:
			refused = nil
			if soon := time.Now().Add(refusedGrace); soon.Before(end) {
				end = soon
				timer.Reset(refusedGrace)
			}
		case <-timer.C:
			return a.link.Stats().LastHeard.IsZero() && !a.link.Pending()
		}
	}
}

// refusalCounts reports whether an ICMP port unreachable from the peer's
// address says something about the peer's router: not when the server saw
// both sides at the same public address (one NAT in front of both, which
// refuses what we send to its public address when it does not hairpin;
// the LAN candidates carry the session).
func (a *attempt) refusalCounts() bool {
	return a.match.Observed.Addr() != a.match.PeerObserved.Addr()
}
