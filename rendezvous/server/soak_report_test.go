package server_test

// The report of TestSoakServer (soak_test.go): the series it prints, the
// slopes and verdicts, and the checks that fail the test.

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/rendezvous/server"
)

func soakDrained(s soakSample) bool {
	z := s.Sizes
	return z.Pending == 0 && z.Settled == 0 && z.PendingIPs == 0 && z.Relays == 0 && z.RelayOrder == 0 && z.Buckets == 0 && z.Queued == 0
}

type soakReport struct {
	t       *testing.T
	cfg     server.Config
	base    soakSample
	samples []soakSample
	load    time.Duration
	counts  [numKinds]int64
	metrics map[string]float64
	wrong   []string
	// udpDrops is the machine's UDP datagrams dropped on full receive
	// buffers during the run, the server's and the generator's.
	udpDrops int64
	// machineBusy is the fraction of the machine's CPU time in use during
	// the load, the server's and the generator's.
	machineBusy float64
	b           strings.Builder
}

func (r *soakReport) printf(format string, args ...any) { fmt.Fprintf(&r.b, format, args...) }

// phase returns the samples of one phase.
func (r *soakReport) phase(p string) []soakSample {
	var out []soakSample
	for _, s := range r.samples {
		if s.Phase == p {
			out = append(out, s)
		}
	}
	return out
}

// steady is the second half of the load phase.
func (r *soakReport) steady() []soakSample {
	load := r.phase("load")
	half := r.load.Seconds() / 2
	i := sort.Search(len(load), func(i int) bool { return load[i].T >= half })
	return load[i:]
}

// soakResource is one sampled figure.
type soakResource struct {
	name, unit string
	scale      float64
	get        func(s soakSample) float64
}

var soakResources = []soakResource{
	{"RSS", "MB", 1 << 20, func(s soakSample) float64 { return float64(s.RSS) }},
	{"heap live", "MB", 1 << 20, func(s soakSample) float64 { return float64(s.HeapLive) }},
	{"heap in use", "MB", 1 << 20, func(s soakSample) float64 { return float64(s.HeapInuse) }},
	{"goroutines", "", 1, func(s soakSample) float64 { return float64(s.Goroutines) }},
	{"fds", "", 1, func(s soakSample) float64 { return float64(s.FDs) }},
	{"pending", "", 1, func(s soakSample) float64 { return float64(s.Sizes.Pending) }},
	{"matched+withdrawn", "", 1, func(s soakSample) float64 { return float64(s.Sizes.Settled) }},
	{"pending IPs", "", 1, func(s soakSample) float64 { return float64(s.Sizes.PendingIPs) }},
	{"relay pairings", "", 1, func(s soakSample) float64 { return float64(s.Sizes.Relays) }},
	{"relay queue", "", 1, func(s soakSample) float64 { return float64(s.Sizes.RelayOrder) }},
	{"rate buckets", "", 1, func(s soakSample) float64 { return float64(s.Sizes.Buckets) }},
	{"registered", "", 1, func(s soakSample) float64 { return float64(s.Sizes.Registered) }},
}

// slopePerMinute is the least-squares slope of get over ss.
func slopePerMinute(ss []soakSample, get func(soakSample) float64) float64 {
	if len(ss) < 2 {
		return 0
	}
	var mt, mv float64
	for _, s := range ss {
		mt += s.T
		mv += get(s)
	}
	n := float64(len(ss))
	mt, mv = mt/n, mv/n
	var num, den float64
	for _, s := range ss {
		num += (s.T - mt) * (get(s) - mv)
		den += (s.T - mt) * (s.T - mt)
	}
	return num / den * 60
}

func median(ss []soakSample, get func(soakSample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = get(s)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func (r *soakReport) print() {
	secs := r.load.Seconds()
	load := r.phase("load")
	last := load[len(load)-1]
	r.printf("soak: %s of load, then %d s of drain; during the load the server process used %.0f%% of a core, and the machine's %d cores were %.0f%% busy\n",
		r.load.Round(time.Second), len(r.phase("drain")), 100*(last.CPU-r.base.CPU)/(last.T-r.base.T), runtime.NumCPU(), 100*r.machineBusy)
	r.printf("UDP datagrams dropped on full receive buffers, the whole machine, during the run: %d\n", r.udpDrops)
	r.printf("\nachieved (load generator, per second of load):\n")
	for k, name := range soakKindNames {
		r.printf("  %-22s %10d  %9.1f/s\n", name, r.counts[k], float64(r.counts[k])/secs)
	}
	r.printf("\nserver metrics (per second of load):\n")
	keys := make([]string, 0, len(r.metrics))
	for k, v := range r.metrics {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		r.printf("  %-64s %12.0f  %10.1f/s\n", k, r.metrics[k], r.metrics[k]/secs)
	}

	r.printf("\nseries (one line per second; MB; tables are entries):\n")
	r.printf("%6s %5s %6s %6s %6s %4s %4s %7s %7s %6s %7s %6s %6s %4s %8s %8s %5s\n",
		"t", "phase", "rss", "heap", "inuse", "gor", "fds", "pending", "settled", "pIPs", "relays", "rqueue", "bucket", "reg", "sent/s", "recv/s", "cpu%")
	prev := r.base
	for _, s := range append([]soakSample{r.base}, r.samples...) {
		dt := max(s.T-prev.T, 1e-9)
		r.printf("%6.1f %5s %6.1f %6.1f %6.1f %4d %4d %7d %7d %6d %7d %6d %6d %4d %8.0f %8.0f %5.0f\n",
			s.T, s.Phase, float64(s.RSS)/(1<<20), float64(s.HeapLive)/(1<<20), float64(s.HeapInuse)/(1<<20),
			s.Goroutines, s.FDs, s.Sizes.Pending, s.Sizes.Settled, s.Sizes.PendingIPs, s.Sizes.Relays, s.Sizes.RelayOrder,
			s.Sizes.Buckets, s.Sizes.Registered, float64(s.Sent-prev.Sent)/dt, float64(s.Received-prev.Received)/dt, 100*(s.CPU-prev.CPU)/dt)
		prev = s
	}

	steady := r.steady()
	drained := r.samples[len(r.samples)-1]
	r.printf("\nresources (before: before the load; start/end: of the load; plateau: median of its second half;\n")
	r.printf("slope: least squares over the second half, per minute; after: at the end of the drain):\n")
	for _, res := range soakResources {
		v := func(s soakSample) float64 { return res.get(s) / res.scale }
		sl := slopePerMinute(steady, v)
		verdict, _ := r.verdict(res, steady)
		r.printf("  %-18s before %8.1f  start %8.1f  plateau %8.1f  end %8.1f  after %8.1f  slope %+9.2f%s/min  %s\n",
			res.name, v(r.base), v(load[0]), median(steady, v), v(load[len(load)-1]), v(drained), sl, res.unit, verdict)
	}
	if len(r.wrong) > 0 {
		r.printf("\nwrong answers (first %d):\n  %s\n", len(r.wrong), strings.Join(r.wrong, "\n  "))
	}
	r.t.Log("\n" + r.b.String())
}

// verdict judges one resource over the steady phase: "plateau" (memory:
// the growth the slope gives over the second half is within a bound of
// the resource's own scale; counts: equal at the start and the end within
// 2) or "GROWING"; tables are judged by check, against their TTLs.
//
// Memory is judged on its growth at constant table sizes (growth).
func (r *soakReport) verdict(res soakResource, steady []soakSample) (string, bool) {
	v := func(s soakSample) float64 { return res.get(s) / res.scale }
	level := median(steady, v)
	switch res.name {
	case "RSS", "heap live":
		growth := r.growth(steady, v)
		// Per datagram sent to the server meanwhile: what a leak per
		// request would come to.
		per := growth * (1 << 20) / float64(steady[len(steady)-1].Sent-steady[0].Sent)
		// The bounds allow for the table's map, which keeps the capacity
		// of its peak, and under churn (the sweeps) grows once more, about
		// twofold, over its first ten or so sweeps (tombstones), then
		// stays: a short run's second half still sees that. RSS follows
		// the heap's GC target (twice the live heap) and the runtime's
		// scavenger: steps of several MB either way are noise.
		limit := max(32, 0.3*level)
		if res.name == "heap live" {
			limit = max(16, 0.3*level)
		}
		ok := growth <= limit
		verdict := okWord(ok)
		if res.name == "RSS" && soakRace {
			ok, verdict = true, "not judged under -race"
		}
		return fmt.Sprintf("growth over the second half at constant table sizes %+.1f MB (%+.2f bytes per datagram), bound %.0f MB: %s", growth, per, limit, verdict), ok
	case "goroutines", "fds":
		d := v(steady[len(steady)-1]) - v(steady[0])
		return fmt.Sprintf("end - start of the second half %+.0f: %s", d, okWord(math.Abs(d) <= 2)), math.Abs(d) <= 2
	}
	return "within its TTL and cap (checked against the requests sent)", true
}

// growth is how much get grows over the steady phase with time alone, at
// constant table sizes: the coefficient of t in the least-squares fit
//
//	get = a + b·t + c·entries
//
// (entries: of all the server's tables), times the phase's length. Between
// sweeps the tables fill, at each sweep they empty, and the load (so their
// size) varies with what else the machine runs; memory that follows them
// is not growth, memory that rises while they do not is.
func (r *soakReport) growth(steady []soakSample, get func(soakSample) float64) float64 {
	entries := func(s soakSample) float64 {
		z := s.Sizes
		return float64(z.Pending + z.Settled + z.Relays + z.Buckets)
	}
	var mt, me, my float64
	for _, s := range steady {
		mt += s.T
		me += entries(s)
		my += get(s)
	}
	n := float64(len(steady))
	mt, me, my = mt/n, me/n, my/n
	var stt, ste, see, sty, sey float64
	for _, s := range steady {
		t, e, y := s.T-mt, entries(s)-me, get(s)-my
		stt += t * t
		ste += t * e
		see += e * e
		sty += t * y
		sey += e * y
	}
	b := sty / stt
	if det := stt*see - ste*ste; det > 1e-9*stt*see {
		b = (sty*see - sey*ste) / det
	}
	return b * (steady[len(steady)-1].T - steady[0].T)
}

func okWord(ok bool) string {
	if ok {
		return "plateau"
	}
	return "GROWING"
}

// window returns the increase of get over the samples of the last w
// seconds before s (since the load began when w reaches back further).
func (r *soakReport) window(s soakSample, w time.Duration, get func(soakSample) int64) int64 {
	from := r.base
	for _, p := range r.samples {
		if p.T > s.T-w.Seconds() {
			break
		}
		from = p
	}
	return get(s) - get(from)
}

func (r *soakReport) check() {
	t := r.t
	steady := r.steady()
	if len(steady) < 4 {
		t.Fatalf("only %d samples in the second half of the load", len(steady))
	}
	for _, res := range soakResources {
		if msg, ok := r.verdict(res, steady); !ok {
			t.Errorf("%s does not plateau: %s", res.name, msg)
		}
	}
	drained := r.samples[len(r.samples)-1]
	for _, res := range []string{"goroutines", "fds"} {
		get := soakResources[slices.IndexFunc(soakResources, func(x soakResource) bool { return x.name == res })].get
		if d := get(drained) - get(r.base); math.Abs(d) > 2 {
			t.Errorf("%s: %v before the load, %v after it: %+v", res, get(r.base), get(drained), d)
		}
	}

	// Tables: an entry lives its TTL after the request that made or
	// refreshed it, and until the next sweep; a pairing makes two.
	cfg := r.cfg
	slack := 2 * time.Second // the sampling's granularity, and the sweep ticker's lateness
	entryLife := max(cfg.PendingTTL, cfg.MatchTTL) + soakSweep + slack
	relayLife := cfg.RelayIdle + soakSweep + slack
	bucketLife := 2*time.Second + soakSweep + slack // a bucket is full again 2 s after its last token (burst 40 at 20/s)
	tableOps := func(s soakSample) int64 { return s.TableOps }
	addrs := func(s soakSample) int64 { return s.Addrs }
	pairings := func(s soakSample) int64 { return int64(s.Pairings) }
	for _, s := range r.phase("load") {
		z := s.Sizes
		if lim := 2 * r.window(s, entryLife, tableOps); int64(z.Pending+z.Settled) > lim {
			t.Errorf("t=%.0fs: %d table entries, more than the %d finds and leaves of the last %s allow", s.T, z.Pending+z.Settled, lim/2, entryLife)
		}
		live := int64(0)
		for _, p := range r.samples {
			if p.T >= s.T-relayLife.Seconds()-1 && p.T <= s.T {
				live = max(live, p.RelayLive)
			}
		}
		if z.Relays > cfg.MaxRelays {
			t.Errorf("t=%.0fs: the relay remembers %d pairings, more than MaxRelays (%d)", s.T, z.Relays, cfg.MaxRelays)
		}
		if lim := r.window(s, relayLife, pairings) + live; int64(z.Relays) > lim {
			t.Errorf("t=%.0fs: the relay remembers %d pairings, more than the %d made in the last %s and %d in use", s.T, z.Relays, lim-live, relayLife, live)
		}
		if lim := int64(z.Relays) + r.window(s, soakSweep+slack, pairings); int64(z.RelayOrder) > lim {
			t.Errorf("t=%.0fs: the relay's queue holds %d, more than its %d pairings and the %d made since the last sweep", s.T, z.RelayOrder, z.Relays, lim-int64(z.Relays))
		}
		if lim := r.window(s, bucketLife, addrs) + 2; int64(z.Buckets) > lim || int64(z.PendingIPs) > lim {
			t.Errorf("t=%.0fs: %d rate buckets and %d IPs with pending finds, more than the %d addresses of the last %s", s.T, z.Buckets, z.PendingIPs, lim, bucketLife)
		}
		// The registrar's pool (16) and ring (64), the client's sessions.
		if lim := 16 + 64 + len(soakClientKeys); z.Registered > lim {
			t.Errorf("t=%.0fs: %d registrations, more than the %d sessions registered", s.T, z.Registered, lim)
		}
	}
	if !soakDrained(drained) {
		t.Errorf("after the load and %d s of drain, left behind: %+v", len(r.phase("drain")), drained.Sizes)
	}

	// Every kind of traffic was served.
	for _, k := range []soakKind{kPairing, kPairResend, kAbandoned, kWithdrawn, kLeaveHonoured, kRegCreated, kRegRefreshed, kRegTaken,
		kSignedFind, kAuthFailed, kKeyNeeded, kSTUN, kSTUNChanged, kSTUNAlt, kRelayCap, kRelayAbandoned, kRelayIdle, kRelayBound,
		kRelayed, kKeepalive, kBindRefused, kGarbage, kRateLimited, kClientPair, kClientLeave, kClientSTUN, kClientRegister} {
		if r.counts[k] == 0 {
			t.Errorf("no %s in %s", soakKindNames[k], r.load)
		}
	}
	if n := r.counts[kWrong]; n > 0 {
		t.Errorf("%d answers broke the protocol, among them:\n  %s", n, strings.Join(r.wrong, "\n  "))
	}
	// Only both copies of a Leave lost explain a withdrawn find paired.
	if n, of := r.counts[kLeaveBroken], r.counts[kLeaveHonoured]+r.counts[kLeaveBroken]; n > max(2, of/1000) {
		t.Errorf("%d of %d peers of withdrawn finds were paired with them", n, of)
	}
	// UDP on a loaded machine loses some; a real client re-sends.
	if lost, got := r.counts[kLost], r.counts[kReceived]; lost > got/20 {
		t.Errorf("%d expected answers lost, against %d datagrams received", lost, got)
	}
}
