package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/netem"
)

// TestEnding is the matrix of issue 11, "scripts can trust how p2pcat
// ends": for each state of a session and each way it can end, both real
// processes exit with the documented code and message within the bound.
//
// Two p2pcat processes, we ("alice") and the peer ("bob"). The waiting
// state runs against a real `p2pcat serve`; every other state runs in
// direct mode (--peer, --port) through a netem proxy, which drops the
// peer's packets on demand (Proxy.SetCut), holds the handshake (a Drop
// filter on handshake messages, probes passing) or delays the path. Each
// side's stdin is an os.Pipe the test holds: written to and kept open, or
// closed for EOF. States are reached by waiting on -vv log lines and on
// stdout, never by guessing how long something takes, except the short
// pauses that let a FIN cross loopback.
func TestEnding(t *testing.T) {
	// t.Parallel would run only GOMAXPROCS cases at once (2 on the CI
	// machine), and these cases spend their time waiting on timers: run
	// them concurrently, a few at a time, each in its own subtest.
	sem := make(chan struct{}, endingConcurrency)
	var wg sync.WaitGroup
	for _, c := range endingCases() {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			t.Run(c.name(), func(t *testing.T) { runEndingCase(t, c) })
		})
	}
	wg.Wait()
}

const (
	endingConcurrency = 4
	// endingSlack, and as much again as the bound itself, is added to
	// every bound: on a loaded 2-core machine running the race-enabled
	// binary, timers fire late, RSA keys take seconds and a process takes
	// a moment to exit. (A hang is forever; a bound twice over is still a
	// bound.)
	endingSlack = 3 * time.Second
	// endingGrace: how much longer than bound+slack a process may run
	// before the test kills it, so that a late exit is still reported
	// with its code and message.
	endingGrace = 4 * time.Second

	endingIdle    = 3 * time.Second // --idle-timeout of a side whose silence detection is tested
	endingConnect = 5 * time.Second // --connect-timeout where the connect timeout is tested
	endingFind    = 5 * time.Second // --timeout
	endingTTL     = 3 * time.Second // serve --pending-ttl for the SIGKILLed waiter
	endingLateFnd = 3 * time.Second // --timeout of the later find looking for a ghost
	endingPrompt  = time.Second     // "at once": well under any timeout the observer has
)

// endingState is where the session is when the fault comes.
type endingState string

const (
	stWaiting     endingState = "waiting"     // at the rendezvous server, the peer not there
	stConnecting  endingState = "connecting"  // found, punching and handshaking
	stBothOpen    endingState = "both-open"   // transferring, both stdins open
	stOursOpen    endingState = "ours-open"   // transferring, the peer's stdin at EOF
	stTheirsOpen  endingState = "theirs-open" // transferring, our stdin at EOF
	stClosing     endingState = "closing"     // both stdins at EOF, our FIN not acknowledged
	stUnconfirmed endingState = "unconfirmed" // we are complete and wait for the peer's word that it wrote everything out
	stLinger      endingState = "linger"      // both sides complete, the peer said so; we wait for its ack of our word
)

// endingFault is what happens to the target.
type endingFault string

const (
	fKill       endingFault = "SIGKILL"
	fCut        endingFault = "dropped" // every packet from the target dropped from now on
	fTerm       endingFault = "SIGTERM"
	fInt        endingFault = "SIGINT"
	fStdoutGone endingFault = "stdout-gone" // the target's stdout reader stops after 100 bytes, like head -c 100
	fNone       endingFault = "none"        // waiting: nobody comes; connecting: the path is cut from the start
	fServerKill endingFault = "server-SIGKILL"
)

type endingSide int

const (
	sideWe endingSide = iota
	sidePeer
)

func (s endingSide) String() string { return [...]string{"we", "peer"}[s] }

// endingWant is what one side must do: exit with one of codes, an error
// line containing every msg, within bound (slackBound) of the fault.
// No codes: the side is not checked.
type endingWant struct {
	codes []int
	msgs  []string
	bound time.Duration
}

// endingCase is one row of the matrix: in state, fault hits target; then
// we (alice) and the peer (bob) must each end as wanted, the bounds
// counted from the fault. In stWaiting there is no peer yet: peer is what
// a later --find of us must do once we are gone.
type endingCase struct {
	state    endingState
	fault    endingFault
	target   endingSide
	we, peer endingWant
}

func (c endingCase) name() string {
	if c.fault == fNone || c.fault == fServerKill {
		return fmt.Sprintf("%s/%s", c.state, c.fault)
	}
	return fmt.Sprintf("%s/%s-%s", c.state, c.target, c.fault)
}

// endingExitEPIPE is the status for a stdout closed by its reader, as
// SIGPIPE gives in a pipeline (the other codes are main.go's constants).
const endingExitEPIPE = 141

// endingCases is the matrix (issue 11, "Must show").
func endingCases() []endingCase {
	codes := func(c ...int) []int { return c }
	var (
		unchecked = endingWant{}
		// The target of a SIGTERM or SIGINT, in any state.
		intr = endingWant{codes(exitSignal), nil, endingPrompt}
		// The other side of an interrupt while transferring or closing:
		// told at once.
		toldBob   = endingWant{codes(exitFailure), []string{"bob ended the session before it was complete", "interrupted"}, endingPrompt}
		toldAlice = endingWant{codes(exitFailure), []string{"alice ended the session before it was complete", "interrupted"}, endingPrompt}
		// A dead or silent peer while transferring or closing.
		lostBob = endingWant{codes(exitFailure), []string{"lost the connection to bob: no answer for " + endingIdle.String()}, endingIdle}
		// Connecting: a peer that was heard and then went away; one never
		// heard; the other side of an interrupt.
		lostBobEarly = endingWant{codes(exitFailure), []string{"lost the connection to bob"}, endingConnect}
		noPath       = endingWant{codes(exitNoPath), []string{"no path to the peer could be established"}, endingConnect}
		toldEarly    = endingWant{codes(exitFailure), []string{"interrupted"}, endingPrompt}
		// Waiting: nobody came; a later find of a waiter that is gone meets
		// nobody either (exit 3, not a ghost pairing and exit 5).
		noBob      = endingWant{codes(exitNoPeer), []string{"bob did not show up within " + endingFind.String()}, endingFind}
		noGhost    = endingWant{codes(exitNoPeer), []string{"alice did not show up"}, endingLateFnd}
		noServer   = endingWant{codes(exitFailure), []string{"rendezvous server"}, 10 * time.Second}
		headCloses = endingWant{codes(endingExitEPIPE), []string{"stdout was closed"}, endingPrompt}
		notRead    = endingWant{codes(exitFailure), []string{"bob ended the session before it was complete", "stopped reading"}, 2 * time.Second}
		// Linger: complete on both sides, nothing can be lost any more.
		// (up to 3 s of linger once complete, and a round trip or two to
		// become complete after the fault)
		complete = endingWant{codes(exitOK), nil, 5 * time.Second}
		// Complete, but the peer never said it wrote everything out: a
		// clean end cannot be claimed.
		unconfirmed = endingWant{codes(exitFailure), []string{"lost the connection to bob: no answer for " + endingIdle.String(), "never said it wrote it out"}, endingIdle}
	)
	return []endingCase{
		// state        fault        target    we            peer
		{stWaiting, fNone, sideWe, noBob, unchecked},
		{stWaiting, fTerm, sideWe, intr, noGhost},
		{stWaiting, fInt, sideWe, intr, noGhost},
		{stWaiting, fKill, sideWe, unchecked, noGhost},
		{stWaiting, fServerKill, sideWe, noServer, unchecked},

		{stConnecting, fNone, sideWe, noPath, noPath},
		{stConnecting, fKill, sidePeer, lostBobEarly, unchecked},
		{stConnecting, fCut, sidePeer, lostBobEarly, unchecked},
		{stConnecting, fTerm, sidePeer, toldEarly, intr},
		{stConnecting, fInt, sidePeer, toldEarly, intr},
		{stConnecting, fTerm, sideWe, intr, toldEarly},
		{stConnecting, fInt, sideWe, intr, toldEarly},

		{stBothOpen, fKill, sidePeer, lostBob, unchecked},
		{stBothOpen, fCut, sidePeer, lostBob, unchecked},
		{stBothOpen, fTerm, sidePeer, toldBob, intr},
		{stBothOpen, fInt, sidePeer, toldBob, intr},
		{stBothOpen, fTerm, sideWe, intr, toldAlice},
		{stBothOpen, fInt, sideWe, intr, toldAlice},
		{stBothOpen, fStdoutGone, sidePeer, notRead, headCloses},

		{stOursOpen, fKill, sidePeer, lostBob, unchecked},
		{stOursOpen, fCut, sidePeer, lostBob, unchecked},
		{stOursOpen, fTerm, sidePeer, toldBob, intr},
		{stOursOpen, fInt, sidePeer, toldBob, intr},
		{stOursOpen, fTerm, sideWe, intr, toldAlice},
		{stOursOpen, fInt, sideWe, intr, toldAlice},

		{stTheirsOpen, fKill, sidePeer, lostBob, unchecked},
		{stTheirsOpen, fCut, sidePeer, lostBob, unchecked},
		{stTheirsOpen, fTerm, sidePeer, toldBob, intr},
		{stTheirsOpen, fInt, sidePeer, toldBob, intr},
		{stTheirsOpen, fTerm, sideWe, intr, toldAlice},
		{stTheirsOpen, fInt, sideWe, intr, toldAlice},

		{stClosing, fKill, sidePeer, lostBob, unchecked},
		{stClosing, fCut, sidePeer, lostBob, unchecked},
		{stClosing, fTerm, sidePeer, toldBob, intr},
		{stClosing, fInt, sidePeer, toldBob, intr},
		{stClosing, fTerm, sideWe, intr, toldAlice},
		{stClosing, fInt, sideWe, intr, toldAlice},

		{stUnconfirmed, fKill, sidePeer, unconfirmed, unchecked},
		{stUnconfirmed, fCut, sidePeer, unconfirmed, unchecked},

		{stLinger, fKill, sidePeer, complete, unchecked},
		{stLinger, fCut, sidePeer, complete, unchecked},
	}
}

// endingRun is one case in progress.
type endingRun struct {
	t       *testing.T
	ctx     context.Context
	c       endingCase
	session string

	server     string // waiting
	serverProc *proc
	proxy      *netem.Proxy // every other state
	seen       *firstBytes

	we, peer     *proc
	weIn, peerIn *stdinPipe
	peerOut      *os.File  // fStdoutGone: the read end of the peer's stdout
	started      time.Time // when the processes were started
}

func runEndingCase(t *testing.T, c endingCase) {
	r := &endingRun{t: t, ctx: testCtx(t, 90*time.Second), c: c, session: strings.NewReplacer("/", "-").Replace(c.name())}
	switch c.state {
	case stWaiting:
		r.reachWaiting()
	case stConnecting:
		r.reachConnecting()
	case stLinger, stUnconfirmed:
		r.reachLinger()
	default:
		r.reachTransfer()
	}
	t0 := r.inject()

	var wg sync.WaitGroup
	var weRes, peerRes endingResult
	if c.we.codes != nil {
		wg.Go(func() { weRes = awaitEnding(r.we, t0, c.we.bound) })
	}
	if c.peer.codes != nil && c.state != stWaiting {
		wg.Go(func() { peerRes = awaitEnding(r.peer, t0, c.peer.bound) })
	}
	wg.Wait()
	if c.we.codes != nil {
		r.check("we (alice)", r.we, c.we, weRes)
	}
	switch {
	case c.peer.codes == nil:
	case c.state == stWaiting:
		r.checkLateFind(t0)
	default:
		r.check("peer (bob)", r.peer, c.peer, peerRes)
	}
}

// endingResult is how a process ended, measured from the fault.
type endingResult struct {
	exited   bool
	code     int
	signaled bool
	elapsed  time.Duration
}

// awaitEnding waits for p's exit for at most bound + slack + grace after
// t0, then kills it.
// slackBound is the most a bound may take in the test: the bound twice
// over, plus endingSlack.
func slackBound(bound time.Duration) time.Duration { return 2*bound + endingSlack }

func awaitEnding(p *proc, t0 time.Time, bound time.Duration) endingResult {
	timer := time.NewTimer(time.Until(t0.Add(slackBound(bound) + endingGrace)))
	defer timer.Stop()
	select {
	case <-p.done:
		code, sig := p.exitStatus()
		return endingResult{exited: true, code: code, signaled: sig, elapsed: time.Since(t0)}
	case <-timer.C:
		p.cmd.Process.Kill()
		<-p.done
		return endingResult{elapsed: time.Since(t0)}
	}
}

func (r *endingRun) check(who string, p *proc, want endingWant, res endingResult) {
	t := r.t
	t.Helper()
	limit := slackBound(want.bound)
	if !res.exited {
		t.Errorf("%s: still running %v after the fault (bound %v, %v with slack); killed. error line: %q\nstderr (tail):\n%s",
			who, res.elapsed.Round(time.Millisecond), want.bound, limit, p.errorLine(), p.stderrTail(25))
		return
	}
	how := fmt.Sprintf("exit %d", res.code)
	if res.signaled {
		how = fmt.Sprintf("killed by a signal (status %d)", res.code)
	}
	t.Logf("%s: %s after %v (bound %v, %v with slack): %q", who, how, res.elapsed.Round(time.Millisecond), want.bound, limit, p.errorLine())
	var problems []string
	switch {
	case !slices.Contains(want.codes, res.code):
		problems = append(problems, fmt.Sprintf("%s, want exit %v", how, want.codes))
	case res.signaled && res.code != endingExitEPIPE:
		// Only "head closed our stdout" may look like a signal to the shell.
		problems = append(problems, fmt.Sprintf("%s, want a real exit %v", how, want.codes))
	}
	line := p.errorLine()
	for _, m := range want.msgs {
		if !strings.Contains(line, m) {
			problems = append(problems, fmt.Sprintf("error line %q lacks %q", line, m))
		}
	}
	if res.elapsed > limit {
		problems = append(problems, fmt.Sprintf("took %v, over %v", res.elapsed.Round(time.Millisecond), limit))
	}
	if len(problems) > 0 {
		t.Errorf("%s: %s\nstderr (tail):\n%s", who, strings.Join(problems, "; "), p.stderrTail(25))
	}
}

// args are the flags of one side: short timeouts where they are what is
// tested; the observer of an interrupt (or of a closed stdout) gets long
// ones, so that only the peer's notice can end it in time.
func (r *endingRun) args(side endingSide, name, find string) []string {
	a := []string{"--name", name, "--find", find, "--session", r.session, "-vv",
		"--idle-timeout", endingIdle.String(), "--timeout", endingFind.String()}
	connect := 15 * time.Second // setup only: a loaded machine generates RSA keys slowly
	if r.c.state == stConnecting || r.c.state == stWaiting {
		connect = endingConnect
	}
	switch r.c.fault {
	case fTerm, fInt, fStdoutGone:
		if side != r.c.target {
			a = append(a, "--idle-timeout", "30s")
			connect = 30 * time.Second
		}
	case fServerKill:
		a = append(a, "--timeout", "60s") // the server's death, not the timeout, must end it
	}
	return append(a, "--connect-timeout", connect.String())
}

// inject applies the fault and returns its time.
func (r *endingRun) inject() time.Time {
	target := r.we
	from := netem.AtoB
	if r.c.target == sidePeer {
		target, from = r.peer, netem.BtoA
	}
	switch r.c.fault {
	case fNone:
		return r.started
	case fKill:
		target.cmd.Process.Kill()
	case fTerm:
		target.signal(syscall.SIGTERM)
	case fInt:
		target.signal(syscall.SIGINT)
	case fCut:
		r.proxy.SetCut(from, true)
	case fStdoutGone:
		r.peerOut.Close()
	case fServerKill:
		r.serverProc.cmd.Process.Kill()
	}
	return time.Now()
}

// --- reaching the states ---

func (r *endingRun) reachWaiting() {
	t := r.t
	var extra []string
	if r.c.fault == fKill {
		// The killed waiter cannot withdraw: its find must expire.
		extra = []string{"--pending-ttl", endingTTL.String()}
	}
	r.serverProc, r.server = startServeProc(t, r.ctx, extra...)
	r.weIn = newStdinPipe(t)
	r.started = time.Now()
	r.we = startP2pcat(t, r.weIn.r, peerEnv(r.server, "ending-pw"), r.args(sideWe, "alice", "bob")...)
	r.weIn.started()
	if !r.we.waitStderr(r.ctx, "waiting for peer") {
		t.Fatalf("we never waited for the peer:\n%s", r.we.stderrTail(25))
	}
}

// checkLateFind: after the waiter is gone, a find of it meets nobody.
func (r *endingRun) checkLateFind(t0 time.Time) {
	t := r.t
	if r.c.fault == fKill {
		// Its last re-send was at most now; the server forgets it one TTL
		// after that.
		select {
		case <-time.After(time.Until(t0.Add(endingTTL + time.Second))):
		case <-r.ctx.Done():
			t.Fatal("test timeout")
		}
	} else {
		<-r.we.done // the interrupted waiter has exited (checked above)
	}
	start := time.Now()
	bob := startP2pcat(t, nil, peerEnv(r.server, "ending-pw"), "--name", "bob", "--find", "alice", "--session", r.session, "-vv",
		"--timeout", endingLateFnd.String(), "--connect-timeout", endingLateFnd.String())
	r.check("a later find of us", bob, r.c.peer, awaitEnding(bob, start, r.c.peer.bound))
}

// startDirect starts both sides in direct mode through a netem proxy.
func (r *endingRun) startDirect(imp netem.Impairment, drop func(netem.Direction, []byte) bool, peerOut bool) {
	t := r.t
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	r.seen = &firstBytes{}
	proxy, err := netem.Start(r.ctx, netem.Config{
		A: netip.MustParseAddrPort("127.0.0.1:" + portA), B: netip.MustParseAddrPort("127.0.0.1:" + portB),
		AtoB: imp, BtoA: imp, Capture: r.seen.record, Drop: drop,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	r.proxy = proxy
	if r.c.state == stConnecting && r.c.fault == fNone {
		proxy.SetCut(netem.AtoB, true)
		proxy.SetCut(netem.BtoA, true)
	}
	env := []string{"P2PCAT_PASSWORD=ending-pw"}
	r.weIn, r.peerIn = newStdinPipe(t), newStdinPipe(t)
	r.started = time.Now()
	// No path MTU probing: a probe lost after the fault would wake the
	// stream's timers and mask a missing liveness check (issue 11 saw the
	// idle timeout fire only in such runs).
	r.we = startP2pcat(t, r.weIn.r, env, append(r.args(sideWe, "alice", "bob"), "--port", portA, "--peer", proxy.FaceA().String(), "--no-mtu-probe")...)
	peerArgs := append(r.args(sidePeer, "bob", "alice"), "--port", portB, "--peer", proxy.FaceB().String(), "--no-mtu-probe")
	if peerOut {
		r.peer, r.peerOut = startP2pcatPipedOut(t, r.peerIn.r, env, peerArgs...)
	} else {
		r.peer = startP2pcat(t, r.peerIn.r, env, peerArgs...)
	}
	r.weIn.started()
	r.peerIn.started()
}

// endingIsHandshake: the handshake's messages, Hello to AuthFailed (not
// Cancel, which must get through when a case holds the handshake and then
// interrupts a side: PROTOCOL.md 3.1).
func endingIsHandshake(d []byte) bool { return len(d) > 0 && d[0] >= endingHello && d[0] <= 0xEC }

const (
	endingProbe  = 0xF0
	endingHello  = 0xE8
	endingReply  = 0xE9
	endingFinish = 0xEA
)

func (r *endingRun) reachConnecting() {
	t := r.t
	switch r.c.fault {
	case fNone:
		r.startDirect(netem.Impairment{}, nil, false)
		return
	case fKill, fCut:
		// No handshake message gets through; probes do, so each side
		// hears the other.
		r.startDirect(netem.Impairment{}, func(_ netem.Direction, d []byte) bool { return endingIsHandshake(d) }, false)
		r.waitSeen("probes both ways and our Hello", func(s *firstBytes) bool {
			return s.count(netem.AtoB, endingProbe) > 0 && s.count(netem.BtoA, endingProbe) > 0 && s.count(netem.AtoB, endingHello) > 0
		})
	default:
		// alice (the initiator: her name sorts first) sends Hello, bob
		// answers Reply, alice's Finish is dropped: both are mid-handshake
		// with messages exchanged, and each can authenticate the other's
		// packets.
		r.startDirect(netem.Impairment{}, func(dir netem.Direction, d []byte) bool {
			return dir == netem.AtoB && len(d) > 0 && d[0] == endingFinish
		}, false)
		r.waitSeen("Hello, Reply and a dropped Finish", func(s *firstBytes) bool {
			return s.count(netem.AtoB, endingHello) > 0 && s.count(netem.BtoA, endingReply) > 0 && s.count(netem.AtoB, endingFinish) > 0
		})
	}
	for _, p := range []*proc{r.we, r.peer} {
		if p.sawStderr("msg=connected") {
			t.Fatalf("connected although the handshake is held:\n%s", p.stderrTail(25))
		}
	}
}

// reachTransfer connects both sides, moves a megabyte each way that
// stays open, and closes the stdins the state calls for.
func (r *endingRun) reachTransfer() {
	t := r.t
	r.startDirect(netem.Impairment{}, nil, r.c.fault == fStdoutGone)
	// A side whose stdin is at EOF in this state has an empty one, like
	// the issue's `</dev/null`; the others send a megabyte, as in the
	// issue. Then nothing is in flight when the fault comes, and only the
	// session's liveness checks can notice it.
	fromWe, fromPeer := endingBulk("alice"), endingBulk("bob")
	switch r.c.state {
	case stOursOpen:
		fromPeer = ""
		r.peerIn.close()
	case stTheirsOpen:
		fromWe = ""
		r.weIn.close()
	}
	r.waitConnected()
	if r.c.fault == fStdoutGone {
		// We send without end; the peer's reader takes 100 bytes and
		// closes its end.
		go func() {
			line := []byte("alice streams this line to bob, who reads only the first hundred bytes of it all\n")
			for r.weIn.write(r.ctx, line) == nil {
				time.Sleep(time.Millisecond)
			}
		}()
		r.peerOut.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 100)
		if _, err := io.ReadFull(r.peerOut, buf); err != nil {
			t.Fatalf("reading the peer's stdout: %v\nbob:\n%s", err, r.peer.stderrTail(25))
		}
		return
	}
	if fromWe != "" {
		r.write(r.weIn, fromWe)
	}
	if fromPeer != "" {
		r.write(r.peerIn, fromPeer)
	}
	r.waitStdout(r.peer, fromWe)
	r.waitStdout(r.we, fromPeer)
	if r.c.state == stClosing {
		r.reachClosing()
		return
	}
	r.pause() // a FIN crosses and is acknowledged
}

// reachClosing closes both stdins while the proxy holds back the
// acknowledgement of our FIN: it drops our direction (the FIN never
// arrives) after the peer's FIN has crossed, so that the peer's packets
// still reach us; or, when we are the one interrupted, the peer's
// direction (our FIN arrives, its ack and the peer's FIN do not), so that
// our notice still reaches a peer that is itself not complete.
func (r *endingRun) reachClosing() {
	if r.c.target == sideWe && (r.c.fault == fTerm || r.c.fault == fInt) {
		r.proxy.SetCut(netem.BtoA, true)
		r.peerIn.close()
		r.weIn.close()
		r.pause()
		return
	}
	r.peerIn.close()
	r.pause() // the peer's FIN crosses and is acknowledged
	r.proxy.SetCut(netem.AtoB, true)
	r.weIn.close()
	r.pause() // our FIN is sent, and lost
}

// endingBulk is a megabyte of lines from name, the last one short.
func endingBulk(name string) string {
	line := name + " sends a megabyte of lines before the fault comes\n"
	return strings.Repeat(line, (1<<20)/len(line)) + "last line from " + name + "\n"
}

// reachLinger: we are complete. The path's delay, 300 ms each way, leaves
// a round trip for the fault between what we wait for and what comes next.
// The side whose stdin ends first completes first, when the other's FIN
// arrives, and waits for the other's DONE (stUnconfirmed: we close first);
// the other completes when its FIN is acknowledged, gets the first side's
// DONE a moment later and answers it, and then waits only for the
// acknowledgement of its own (stLinger: we close second), which the fault
// keeps from coming.
func (r *endingRun) reachLinger() {
	t := r.t
	const oneWay = 300 * time.Millisecond
	r.startDirect(netem.Impairment{Delay: oneWay}, nil, false)
	r.waitConnected()
	r.write(r.weIn, "line from alice\n")
	r.write(r.peerIn, "line from bob\n")
	r.waitStdout(r.peer, "line from alice\n")
	r.waitStdout(r.we, "line from bob\n")
	// Complete without the peer's DONE; or complete with it (the DONE may
	// come just before our completion or just after it).
	first, second, wants := r.weIn, r.peerIn, []string{`"stream: complete" peerDone=false`}
	if r.c.state == stLinger {
		first, second, wants = r.peerIn, r.weIn, []string{`"stream: complete" peerDone=true`, `"stream: the peer confirmed the end" complete=true`}
	}
	first.close()
	time.Sleep(5 * oneWay)
	second.close()
	deadline := time.Now().Add(20 * time.Second)
	for !slices.ContainsFunc(wants, r.we.sawStderr) {
		if time.Now().After(deadline) {
			t.Fatalf("we never logged %q:\n%s", wants, r.we.stderrTail(25))
		}
		time.Sleep(2 * time.Millisecond)
	}
	select {
	case <-r.we.done:
		t.Logf("note: we had already finished when the fault came")
	default:
	}
}

func (r *endingRun) waitConnected() {
	for _, p := range []*proc{r.we, r.peer} {
		if !p.waitStderr(r.ctx, "msg=connected") {
			r.t.Fatalf("never connected:\n%s", p.stderrTail(25))
		}
	}
}

// waitStdout waits until p's stdout is want.
func (r *endingRun) waitStdout(p *proc, want string) {
	deadline := time.Now().Add(20 * time.Second)
	for p.stdout.Len() < len(want) {
		if time.Now().After(deadline) {
			r.t.Fatalf("stdout has %d of the %d bytes sent:\n%s", p.stdout.Len(), len(want), p.stderrTail(25))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.stdout.String(); got != want {
		r.t.Fatalf("stdout differs from what was sent (%d bytes, want %d)", len(got), len(want))
	}
}

func (r *endingRun) waitSeen(what string, cond func(*firstBytes) bool) {
	deadline := time.Now().Add(15 * time.Second)
	for !cond(r.seen) {
		if time.Now().After(deadline) {
			r.t.Fatalf("the proxy never saw %s (%v)\nwe:\n%s\npeer:\n%s", what, r.proxy.Stats(), r.we.stderrTail(15), r.peer.stderrTail(15))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *endingRun) write(in *stdinPipe, line string) {
	if err := in.write(r.ctx, []byte(line)); err != nil {
		r.t.Fatalf("writing stdin: %v", err)
	}
}

// pause lets packets cross loopback and be acknowledged.
func (r *endingRun) pause() { time.Sleep(300 * time.Millisecond) }

// firstBytes counts the datagrams the proxy received by direction and
// first byte (the packet type, PROTOCOL.md 1.2).
type firstBytes struct{ n [2][256]atomic.Uint64 }

func (f *firstBytes) record(dir netem.Direction, d []byte) {
	if len(d) > 0 {
		f.n[dir][d[0]].Add(1)
	}
}

func (f *firstBytes) count(dir netem.Direction, b byte) uint64 { return f.n[dir][b].Load() }

// startServeProc is startServeWith that also returns the server's
// process, for a test that kills it.
func startServeProc(t *testing.T, ctx context.Context, extra ...string) (*proc, string) {
	t.Helper()
	p := startP2pcat(t, nil, nil, append([]string{"serve", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--log-format", "json"}, extra...)...)
	addr := p.waitJSONLog(ctx, "rendezvous server listening")["addr"].(string)
	return p, addr
}
