package path

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestCrossPorts: a run of consecutive ports after the primary one (the
// pairing id says which run), or before it near the top of the range;
// never the primary port itself, never port 0, never past 65535.
func TestCrossPorts(t *testing.T) {
	for _, primary := range []uint16{1024, 40000, 65535 - 9*CrossSockets, 65535 - CrossSockets, 65535} {
		for run := range crossRuns + 1 {
			var id [16]byte
			id[0] = byte(run)
			ports := CrossPorts(primary, id)
			if len(ports) != CrossSockets {
				t.Fatalf("CrossPorts(%d, run %d): %d ports, want %d", primary, run, len(ports), CrossSockets)
			}
			off := 1 + (run%crossRuns)*CrossSockets
			up := int(primary)+off+CrossSockets-1 <= 65535
			for i, p := range ports {
				want := int(primary) + off + i
				if !up {
					want = int(primary) - off - i
				}
				if int(p) != want || p == 0 || p == primary {
					t.Fatalf("CrossPorts(%d, run %d)[%d] = %d, want %d", primary, run, i, p, want)
				}
			}
		}
	}
	var a, b [16]byte
	b[0] = 1
	if slices.Equal(CrossPorts(40000, a), CrossPorts(40000, b)) {
		t.Error("two pairings got the same run of ports")
	}
}

// TestCrossSchedule: every tuple goes exactly once, each side's sends are
// in time order (sendTimed needs it), within CrossDuration, and every
// burst spans the vernier: the leader's offsets in one burst run from
// below -10 µs to above +10 µs.
func TestCrossSchedule(t *testing.T) {
	at := time.Unix(1000, 0)
	var tuples []int
	for k := range CrossSockets {
		tuples = append(tuples, tupleOf(k))
	}
	slices.Sort(tuples)
	for i, tu := range tuples {
		if tu != i {
			t.Fatalf("tupleOf is not a permutation of the tuples: %v", tuples)
		}
	}
	for _, lead := range []bool{false, true} {
		x := Crossing{At: at, Lead: lead}
		for k := 1; k < CrossSockets; k++ {
			if !x.sendAt(k).After(x.sendAt(k - 1)) {
				t.Fatalf("lead=%v: slot %d at %v, not after slot %d at %v", lead, k, x.sendAt(k), k-1, x.sendAt(k-1))
			}
		}
		end := x.sendAt(CrossSockets - 1).Sub(at)
		if end > CrossDuration || lead && end != CrossDuration {
			t.Errorf("lead=%v: last send %v after At; CrossDuration is %v", lead, end, CrossDuration)
		}
	}
	lead, follow := Crossing{At: at, Lead: true}, Crossing{At: at}
	for b := range crossBursts {
		lo, hi := time.Hour, -time.Hour
		for p := range perBurst {
			k := b*perBurst + p
			off := lead.sendAt(k).Sub(follow.sendAt(k))
			lo, hi = min(lo, off), max(hi, off)
		}
		if lo > -10*time.Microsecond || hi < 10*time.Microsecond {
			t.Errorf("burst %d: the leader's offsets span %v..%v, want beyond ±10µs", b, lo, hi)
		}
	}
}

// freePortRun finds a primary port whose CrossPorts are all free on
// loopback (best effort: a port taken after the check is a lost tuple,
// which CrossPunch survives).
func freePortRun(t *testing.T, avoid uint16, id [16]byte) uint16 {
	t.Helper()
	for range 50 {
		p := uint16(20000 + rand.IntN(30000))
		if p > avoid-2*CrossSockets && p < avoid+2*CrossSockets {
			continue
		}
		ok := true
		for _, q := range CrossPorts(p, id) {
			s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(q)})
			if err != nil {
				ok = false
				break
			}
			s.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no run of free ports for a crossing")
	return 0
}

// TestCrossPunchLoopback runs both sides of a crossing over loopback,
// where every tuple crosses: the leader takes the earliest (slot 0's
// tuple), and once its path's first plain probe comes on that tuple, the
// follower takes the same one. Both close every other socket.
func TestCrossPunchLoopback(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var id [16]byte
	id[0] = 7
	pa := freePortRun(t, 0, id)
	pb := freePortRun(t, pa, id)
	at := time.Now().Add(20 * time.Millisecond)
	lead := Crossing{At: at, Ports: CrossPorts(pa, id), PeerPorts: CrossPorts(pb, id), Lead: true}
	follow := Crossing{At: at, Ports: CrossPorts(pb, id), PeerPorts: CrossPorts(pa, id)}
	ctx := context.Background()
	type out struct {
		res CrossResult
		err error
	}
	fc := make(chan out, 1)
	go func() {
		r, err := CrossPunch(ctx, lo, id, follow, time.Second, nil)
		fc <- out{r, err}
	}()
	lr, err := CrossPunch(ctx, lo, id, lead, time.Second, nil)
	if err != nil || lr.Sock == nil {
		t.Fatalf("leader: %+v, %v; want a tuple", lr, err)
	}
	defer lr.Sock.Close()
	if want := CrossPorts(pb, id)[tupleOf(0)]; lr.Peer.Port() != want {
		t.Errorf("leader took the tuple to port %d, want slot 0's (%d)", lr.Peer.Port(), want)
	}
	// The leader's path: plain probes on its tuple.
	probe := newProbe(id)
	for range 3 {
		lr.Sock.WriteToUDPAddrPort(probe, lr.Peer)
	}
	f := <-fc
	if f.err != nil || f.res.Sock == nil {
		t.Fatalf("follower: %+v, %v; want the leader's tuple", f.res, f.err)
	}
	defer f.res.Sock.Close()
	fport := uint16(f.res.Sock.LocalAddr().(*net.UDPAddr).Port)
	lport := uint16(lr.Sock.LocalAddr().(*net.UDPAddr).Port)
	if fport != lr.Peer.Port() || lport != f.res.Peer.Port() {
		t.Errorf("the sides took different tuples: leader %d→%v, follower %d→%v", lport, lr.Peer, fport, f.res.Peer)
	}
	// Every other socket of both sides is closed.
	for _, p := range append(CrossPorts(pa, id), CrossPorts(pb, id)...) {
		if p == fport || p == lport {
			continue
		}
		s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(p)})
		if err != nil {
			t.Errorf("port %d still open after the crossing: %v", p, err)
			continue
		}
		s.Close()
	}
}

// TestCrossPunchNothingCrosses: a peer that never answers (and a stranger
// sending the right probes from the wrong port) leaves both roles without
// a tuple, within the budget, every socket closed.
func TestCrossPunchNothingCrosses(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var id [16]byte
	pa := freePortRun(t, 0, id)
	pb := freePortRun(t, pa, id)
	for _, leads := range []bool{true, false} {
		x := Crossing{At: time.Now().Add(10 * time.Millisecond), Ports: CrossPorts(pa, id), PeerPorts: CrossPorts(pb, id), Lead: leads}
		stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		go func() {
			probe, mark := newProbe(id), crossProbe(newProbe(id))
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				for _, p := range CrossPorts(pa, id) {
					stranger.WriteToUDPAddrPort(mark, netip.AddrPortFrom(lo, p))
					stranger.WriteToUDPAddrPort(probe, netip.AddrPortFrom(lo, p))
				}
			}
		}()
		budget := 200 * time.Millisecond
		start := time.Now()
		res, err := CrossPunch(context.Background(), lo, id, x, budget, nil)
		close(stop)
		stranger.Close()
		if err != nil || res.Sock != nil || res.Heard != 0 {
			t.Errorf("lead=%v: %+v, %v; want no tuple, nothing heard", leads, res, err)
		}
		// A slack of seconds for a loaded machine: the point is that it ends.
		if took := time.Since(start); took > budget+5*time.Second {
			t.Errorf("lead=%v: took %v for a budget of %v", leads, took, budget)
		}
		if res.Probes != CrossSockets {
			t.Errorf("lead=%v: %d probes, want one per tuple (%d)", leads, res.Probes, CrossSockets)
		}
	}
}

// TestCrossPunchFollowerWaitsForChoice: a follower that heard a tuple
// cross waits past its budget for the leader's choice, and takes the
// tuple the leader's plain probe comes on.
func TestCrossPunchFollowerWaitsForChoice(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var id [16]byte
	id[0] = 3
	pf := freePortRun(t, 0, id)
	pl := freePortRun(t, pf, id)
	const tuple = 5
	leader, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(CrossPorts(pl, id)[tuple])})
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	to := netip.AddrPortFrom(lo, CrossPorts(pf, id)[tuple])
	x := Crossing{At: time.Now().Add(10 * time.Millisecond), Ports: CrossPorts(pf, id), PeerPorts: CrossPorts(pl, id)}
	const budget = 60 * time.Millisecond
	go func() {
		time.Sleep(10 * time.Millisecond)
		leader.WriteToUDPAddrPort(crossProbe(newProbe(id)), to)
		time.Sleep(budget + 20*time.Millisecond) // past the follower's budget
		leader.WriteToUDPAddrPort(newProbe(id), to)
	}()
	res, err := CrossPunch(context.Background(), lo, id, x, budget, nil)
	if err != nil || res.Sock == nil {
		t.Fatalf("%+v, %v: want the tuple the leader chose", res, err)
	}
	defer res.Sock.Close()
	if got := res.Sock.LocalAddr().(*net.UDPAddr).Port; got != int(to.Port()) || res.Peer.Port() != CrossPorts(pl, id)[tuple] {
		t.Errorf("took port %d to %v, want %v to the leader's port %d", got, res.Peer, to, CrossPorts(pl, id)[tuple])
	}
}

// TestCrossPunchCancelled: cancelling the context stops the sends and the
// waits at once.
func TestCrossPunchCancelled(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var id [16]byte
	pa := freePortRun(t, 0, id)
	pb := freePortRun(t, pa, id)
	for _, leads := range []bool{true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		x := Crossing{At: time.Now().Add(20 * time.Millisecond), Ports: CrossPorts(pa, id), PeerPorts: CrossPorts(pb, id), Lead: leads}
		time.AfterFunc(5*time.Millisecond, cancel)
		res, err := CrossPunch(ctx, lo, id, x, 10*time.Second, nil)
		cancel()
		if err != nil || res.Sock != nil {
			t.Fatalf("lead=%v: %+v, %v; want no tuple", leads, res, err)
		}
		// The cancel comes 15 ms before the first send and 48 ms before
		// the last: slack for a loaded machine.
		if res.Probes >= CrossSockets || res.Took > 5*time.Second {
			t.Errorf("lead=%v: %d probes in %v after a cancel before the sends", leads, res.Probes, res.Took)
		}
	}
}
