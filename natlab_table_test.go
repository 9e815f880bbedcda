package main

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// natRow is one run of one case of the matrix, as the table prints it.
type natRow struct {
	name  string
	delay time.Duration
	// path is the path both sides ended on: "direct", "relay", or
	// "relay>direct" for a session that started on the relay and moved.
	path         string
	family       string // of alice's final peer address: IPv4 or IPv6
	peerA, peerB string // where each side sent last
	// connect is from the start of both processes to the later of their
	// "connected" lines; toDirect to the later move to the direct path of
	// a session that started on the relay (0 for none); ended to the
	// later exit.
	connect, toDirect, ended time.Duration
	// probes and sockets are the birthday-punching counts the -v logs
	// give (probes=N, sockets=N), "" when they give none.
	probes, sockets string
	outcome         string
}

// fill reads the row's path, times and counts from the two processes'
// -v logs; both were started at begin and have exited.
func (r *natRow) fill(begin time.Time, alice, bob *proc) {
	r.ended = time.Since(begin).Round(time.Millisecond)
	la, lb := readPathLog(alice.Stderr()), readPathLog(bob.Stderr())
	r.peerA, r.peerB = la.peer, lb.peer
	r.path = la.last
	if la.first != la.last {
		r.path = la.first + ">" + la.last
	}
	if la.last != lb.last {
		r.path = la.last + "/" + lb.last
	}
	if !la.movedAt.IsZero() && !lb.movedAt.IsZero() {
		r.toDirect = max(la.movedAt.Sub(begin), lb.movedAt.Sub(begin)).Round(time.Millisecond)
	}
	if ap, err := netip.ParseAddrPort(r.peerA); err == nil {
		r.family = map[bool]string{true: "IPv4", false: "IPv6"}[ap.Addr().Unmap().Is4()]
	}
	_, _, atA := alice.connected()
	_, _, atB := bob.connected()
	if !atA.IsZero() && !atB.IsZero() {
		r.connect = max(atA.Sub(begin), atB.Sub(begin)).Round(time.Millisecond)
	}
	r.probes = logCounts("probes", alice, bob)
	r.sockets = logCounts("sockets", alice, bob)
}

// finalPath is the path a row ended on, the same on both sides, or "".
func (r *natRow) finalPath() string {
	if strings.Contains(r.path, "/") {
		return ""
	}
	_, last, _ := strings.Cut(r.path, ">")
	if last == "" {
		return r.path
	}
	return last
}

// direct reports whether the row ended on the direct path want asks for.
func (r *natRow) direct(want pathWant) bool {
	return r.finalPath() == "direct" && (want != wantDirectIPv6 || r.family == "IPv6")
}

// checkPath checks the row's path against c's want and returns what is
// wrong, or "".
func (r *natRow) checkPath(c natCase) string {
	path := r.finalPath()
	switch {
	case path == "":
		return fmt.Sprintf("the two sides disagree: path=%s", r.path)
	case path == "direct" && c.want == wantDirectIPv6 && r.family != "IPv6":
		return fmt.Sprintf("direct over %s (alice→%s), want IPv6", r.family, r.peerA)
	case path == "direct" && c.want != wantRelay:
	case path == "relay" && (c.want == wantRelay || c.want == wantDirectOrRelay):
		if r.peerA != natLabServer || r.peerB != natLabServer {
			return fmt.Sprintf("relayed, but the peers are %s / %s, not the server %s", r.peerA, r.peerB, natLabServer)
		}
	default:
		return fmt.Sprintf("path=%s, want %v", r.path, c.want)
	}
	if c.a == "samelan" && (!strings.HasPrefix(r.peerA, "10.0.1.") || !strings.HasPrefix(r.peerB, "10.0.1.")) {
		// The router does not hairpin: only the LAN addresses can work.
		return fmt.Sprintf("behind one NAT the peers should meet on the LAN, not %s / %s", r.peerA, r.peerB)
	}
	return ""
}

// pathLog is what a process's -v log says of its path: the path= of its
// "connected" line (first), the path it was on last (last), the last
// peer= from then on, and when it moved from the relay to a direct path
// (the time= of that line; zero if it did not).
type pathLog struct {
	first, last, peer string
	movedAt           time.Time
}

// readPathLog reads the pathLog of a -v log; all zero when it never
// says connected. After
// the "connected" line, a line with a path= field, or one whose message
// says the session moved (lineMove), changes the path.
func readPathLog(log string) pathLog {
	var l pathLog
	seen := false
	for _, line := range strings.Split(log, "\n") {
		if !seen && !strings.Contains(line, "msg=connected") {
			continue
		}
		seen = true
		path := lineMove(line)
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "path="); ok {
				path = v
			}
			if v, ok := strings.CutPrefix(f, "peer="); ok {
				l.peer = v
			}
		}
		if path == "" {
			continue
		}
		if l.first == "" {
			l.first = path
		}
		if path == "direct" && l.last == "relay" && l.movedAt.IsZero() {
			l.movedAt = logTime(line)
		}
		l.last = path
	}
	return l
}

// lineMove returns the path a log line's message says the session moved
// to, "direct" or "relay", or "": "moved to the relay" (the direct path
// was lost), or a move or switch to a direct path.
func lineMove(line string) string {
	_, msg, ok := strings.Cut(line, "msg=")
	if !ok {
		return ""
	}
	msg = strings.ToLower(msg)
	switch {
	case strings.Contains(msg, "moved to the relay"):
		return "relay"
	case (strings.Contains(msg, "move") || strings.Contains(msg, "switch")) && strings.Contains(msg, "direct") && !strings.Contains(msg, "lost"):
		return "direct"
	}
	return ""
}

// logTime returns the time= of a -v log line, or the zero time.
func logTime(line string) time.Time {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "time="); ok {
			t, _ := time.Parse(time.RFC3339Nano, v)
			return t
		}
	}
	return time.Time{}
}

// logCounts returns the last value of the field key= in each process's
// log, joined by "/" (alice's first), or "" when none logs it.
func logCounts(key string, procs ...*proc) string {
	var vals []string
	for _, p := range procs {
		v := ""
		for _, f := range strings.Fields(p.Stderr()) {
			if s, ok := strings.CutPrefix(f, key+"="); ok {
				v = s
			}
		}
		if v != "" {
			vals = append(vals, v)
		}
	}
	return strings.Join(vals, "/")
}

// natTable collects the rows of every run of the matrix, for the tables
// TestNATLab logs.
type natTable struct {
	mu   sync.Mutex
	rows []natRow
}

func (tb *natTable) add(r *natRow) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, *r)
}

// natTableHeader names the columns of a table of runs.
const natTableHeader = "pair                           delay  path          family  connected  to direct  probes     sockets  outcome"

// logRuns logs every run with the given delay, one line each.
func (tb *natTable) logRuns(t *testing.T, delay time.Duration, took time.Duration) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	lines := []string{natTableHeader}
	for _, r := range tb.sorted() {
		if r.delay == delay {
			lines = append(lines, fmt.Sprintf("%-30s %6v %-13s %-7s %9s  %9s  %-10s %-8s %s",
				r.name, r.delay, orDash(r.path), orDash(r.family), orDash(r.connect), orDash(r.toDirect), orDash(r.probes), orDash(r.sockets), r.outcome))
		}
	}
	t.Logf("NAT lab matrix, delay %v (%v in all):\n%s", delay, took.Round(time.Millisecond), strings.Join(lines, "\n"))
}

// sorted returns the rows by pair, then delay. The caller holds mu.
func (tb *natTable) sorted() []natRow {
	rows := slices.Clone(tb.rows)
	slices.SortStableFunc(rows, func(x, y natRow) int {
		return cmp.Or(strings.Compare(x.name, y.name), cmp.Compare(x.delay, y.delay))
	})
	return rows
}

// logSummary logs one line per pair and delay: how many runs ended direct
// (and over which family), relayed or failed, and the median and slowest
// time to connected.
func (tb *natTable) logSummary(t *testing.T) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	rows := tb.sorted()
	if len(rows) == 0 {
		return // no matrix ran
	}
	lines := []string{"pair                           delay  runs  direct  relay  failed  connected median / max  probes/sockets"}
	for len(rows) > 0 {
		n := 1
		for n < len(rows) && rows[n].name == rows[0].name && rows[n].delay == rows[0].delay {
			n++
		}
		lines = append(lines, summaryLine(rows[:n]))
		rows = rows[n:]
	}
	t.Logf("NAT lab summary:\n%s", strings.Join(lines, "\n"))
}

// summaryLine sums up the runs of one pair at one delay.
func summaryLine(runs []natRow) string {
	var direct, relay, failed int
	var times []time.Duration
	families := map[string]bool{}
	counts := ""
	for _, r := range runs {
		switch {
		case strings.HasPrefix(r.outcome, "FAILED"):
			failed++
		case r.path == "":
			// no path, as the case wants
		case r.finalPath() == "direct":
			direct++
			families[r.family] = true
		default:
			relay++
		}
		if r.connect > 0 {
			times = append(times, r.connect)
		}
		if r.probes != "" || r.sockets != "" {
			counts = r.probes + "/" + r.sockets
		}
	}
	slices.Sort(times)
	median, slowest := time.Duration(0), time.Duration(0)
	if len(times) > 0 {
		median, slowest = times[len(times)/2], times[len(times)-1]
	}
	directs := fmt.Sprintf("%d %s", direct, strings.Join(slices.Sorted(maps.Keys(families)), "+"))
	return fmt.Sprintf("%-30s %6v %5d  %-7s %5d  %6d  %9s / %-9s     %s",
		runs[0].name, runs[0].delay, len(runs), directs, relay, failed, orDash(median), orDash(slowest), orDash(counts))
}

// orDash formats v, or "-" for its zero value (nothing measured).
func orDash[T comparable](v T) string {
	var zero T
	if v == zero {
		return "-"
	}
	return fmt.Sprint(v)
}

// TestNATLabPathLog checks how the table reads a -v log: the connected
// line's path, a move to direct after it (by path= or by its message) and
// its time, a loss of the direct path, and the lines that are none.
func TestNATLabPathLog(t *testing.T) {
	const (
		start     = `time=2026-12-03T09:00:00.000Z level=INFO msg="no direct path yet; punching again from a new port"`
		relay     = `time=2026-12-03T09:00:00.300Z level=INFO msg=connected path=relay peer=198.51.100.1:3478 handshake=12ms role=initiator`
		direct    = `time=2026-12-03T09:00:00.100Z level=INFO msg=connected path=direct peer=198.51.100.21:4000 handshake=12ms role=initiator`
		movedPath = `time=2026-12-03T09:00:01.250Z level=INFO msg="moved to the direct path" path=direct peer=198.51.100.21:4000`
		movedMsg  = `time=2026-12-03T09:00:01.250Z level=INFO msg="switched to direct" peer=[2001:db8:2::2]:4000`
		peerMoved = `time=2026-12-03T09:00:02.000Z level=INFO msg="peer moved" from=198.51.100.21:4000 to=198.51.100.21:4001`
		lost      = `time=2026-12-03T09:00:03.000Z level=INFO msg="the direct path was lost; moved to the relay" was=198.51.100.21:4000`
	)
	moved := time.Date(2026, 12, 3, 9, 0, 1, 250e6, time.UTC)
	for _, c := range []struct {
		name  string
		lines []string
		want  pathLog
	}{
		{"never connected", []string{start}, pathLog{}},
		{"direct", []string{start, direct, peerMoved}, pathLog{first: "direct", last: "direct", peer: "198.51.100.21:4000"}},
		{"relay", []string{relay}, pathLog{first: "relay", last: "relay", peer: "198.51.100.1:3478"}},
		{"relay then path=direct", []string{relay, movedPath}, pathLog{"relay", "direct", "198.51.100.21:4000", moved}},
		{"relay then a message", []string{relay, movedMsg}, pathLog{"relay", "direct", "[2001:db8:2::2]:4000", moved}},
		{"direct then lost", []string{direct, lost}, pathLog{first: "direct", last: "relay", peer: "198.51.100.21:4000"}},
	} {
		if got := readPathLog(strings.Join(c.lines, "\n")); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}
