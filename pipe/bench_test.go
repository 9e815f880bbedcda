package pipe

// Cross-layer benchmarks of the data path: path (UDP on loopback, with or
// without GSO/GRO) → secure (AES-GCM) → stream (reliability, congestion and
// flow control) and back. Run them with -benchmem: steady state allocates
// nothing (0 allocs/op), so the garbage collector never runs during a
// transfer.
//
//	go test -run XXX -bench . -benchmem ./pipe/

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/pipe/frame"
	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/pipe/secure"
	"github.com/p2pcat/p2pcat/pipe/stream"
)

// securePair handshakes two secure Conns over two path Conns on loopback.
// It returns the Conns and the path Conns under them.
func securePair(tb testing.TB, offload bool) (a, b *secure.Conn, pa, pb *path.Conn) {
	tb.Helper()
	listen := func() (*net.UDPConn, netip.AddrPort) {
		c, err := path.Listen(0, nil)
		if err != nil {
			tb.Fatal(err)
		}
		port := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		return c, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	}
	ua, aAddr := listen()
	ub, bAddr := listen()
	id := [16]byte{6}
	opt := path.Options{NoOffload: !offload}
	pa = path.New(ua, netip.AddrPort{}, id, []netip.AddrPort{bAddr}, nil, opt)
	pb = path.New(ub, netip.AddrPort{}, id, []netip.AddrPort{aAddr}, nil, opt)
	params := func(role secure.Role, local, peer string) secure.Params {
		return secure.Params{Role: role, Session: "bench", LocalName: local, PeerName: peer,
			Password: []byte("bench"), Timeout: 20 * time.Second, Retransmit: 50 * time.Millisecond}
	}
	type result struct {
		c   *secure.Conn
		err error
	}
	rc := make(chan result, 1)
	go func() {
		c, err := secure.Handshake(context.Background(), pb, params(secure.Responder, "bob", "alice"))
		rc <- result{c, err}
	}()
	ca, err := secure.Handshake(context.Background(), pa, params(secure.Initiator, "alice", "bob"))
	r := <-rc
	if err != nil || r.err != nil {
		tb.Fatalf("handshake: %v / %v", err, r.err)
	}
	tb.Cleanup(func() {
		ca.Close()
		r.c.Close()
	})
	return ca, r.c, pa, pb
}

// BenchmarkSendPath measures one side's send path, secure then path:
// SendBatch seals a batch of 64 KiB of payload (54 datagrams of 1200 bytes,
// or one of 64 KiB) and sends it (one GSO system call, or one per
// datagram); the peer's path layer drains the socket without opening
// anything, so the figure is the sender's cost. Datagrams the receiver
// cannot keep up with are dropped by the kernel, as UDP does.
func BenchmarkSendPath(b *testing.B) {
	for _, tc := range []struct {
		name    string
		offload bool
		payload int
		batch   int // bytes of payload per SendBatch
	}{{"gso/1200", true, 0, 64 << 10}, {"plain/1200", false, 0, 64 << 10}, {"gso/64K", true, 65000, 64 << 10}, {"gso/16x64K", true, 65000, 16 * 65000}} {
		b.Run(tc.name, func(b *testing.B) {
			a, _, _, pb := securePair(b, tc.offload)
			size := tc.payload
			if size == 0 {
				size = a.MaxPayload()
			}
			arena := make([]byte, tc.batch)
			var batch [][]byte
			for off := 0; off+size <= len(arena); off += size {
				batch = append(batch, arena[off:off+size])
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // drain until the Conns close
				defer wg.Done()
				buf := make([]byte, 65536)
				for {
					if _, _, err := pb.Recv(buf); err != nil {
						return
					}
				}
			}()
			b.SetBytes(int64(len(batch) * size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := a.SendBatch(batch); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			pb.Close()
			wg.Wait()
		})
	}
}

// BenchmarkRecvPath measures one side's receive path, path then secure:
// Recv reads a datagram (GRO: many per system call) and authenticates and
// decrypts it into the caller's buffer. A feeder goroutine seals and sends
// batches of 64 KiB, at most recvWindow of them ahead of the receiver, so
// the socket never overflows.
func BenchmarkRecvPath(b *testing.B) {
	for _, tc := range []struct {
		name    string
		offload bool
		payload int
	}{{"gro/1200", true, 0}, {"plain/1200", false, 0}, {"gro/64K", true, 65000}} {
		b.Run(tc.name, func(b *testing.B) {
			a, r, _, _ := securePair(b, tc.offload)
			size := tc.payload
			if size == 0 {
				size = a.MaxPayload()
			}
			per := (64 << 10) / size // datagrams per batch
			arena := make([]byte, per*size)
			batch := make([][]byte, per)
			for i := range batch {
				batch[i] = arena[i*size : (i+1)*size]
			}
			const recvWindow = 8 // batches in flight
			credits := make(chan struct{}, recvWindow)
			for range recvWindow {
				credits <- struct{}{}
			}
			stop := make(chan struct{})
			fed := make(chan error, 1)
			go func() {
				t := time.NewTimer(time.Hour)
				defer t.Stop()
				for {
					t.Reset(100 * time.Millisecond)
					select {
					case <-stop:
						fed <- nil
						return
					case <-credits:
					case <-t.C: // a datagram was lost: go on without its credit
					}
					if err := a.SendBatch(batch); err != nil {
						fed <- err
						return
					}
				}
			}()
			buf := make([]byte, a.PayloadLimit())
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 1; i <= b.N; i++ {
				if _, err := r.Recv(buf); err != nil {
					b.Fatal(err)
				}
				if i%per == 0 {
					select {
					case credits <- struct{}{}:
					default:
					}
				}
			}
			b.StopTimer()
			close(stop)
			if err := <-fed; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// pipeModes are the ways a session moves data: UDP offload with path MTU
// probing (64 KiB datagrams on loopback), offload with 1200-byte datagrams,
// and the plain path (one 1200-byte datagram per system call).
var pipeModes = []struct {
	name              string
	offload, probeMTU bool
}{{"gso-64K", true, true}, {"gso-1200", true, false}, {"plain-1200", false, false}}

// streamPair runs the stream layer over securePair, as pipe.Run does.
func streamPair(tb testing.TB, offload, probeMTU bool, cfg stream.Config) (a, b *stream.Conn) {
	sa, sb, _, _ := securePair(tb, offload)
	var ta, tbr stream.Transport = sa, sb
	if !probeMTU {
		ta, tbr = safeSizeOnly{sa}, safeSizeOnly{sb}
	}
	a, b = stream.New(ta, cfg), stream.New(tbr, cfg)
	tb.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// source yields n bytes of a random block, over and over, then EOF; it
// stands in for stdin (its copy stands in for the kernel's).
type source struct {
	block []byte
	n     int64
}

func (s *source) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(int64(len(p)), s.n)], s.block)
	s.n -= int64(k)
	return k, nil
}

// sink counts what the downlink writes and signals once it passed mark.
type sink struct {
	n      int64
	mark   int64
	passed chan struct{}
}

func (s *sink) Write(p []byte) (int, error) {
	before := s.n
	s.n += int64(len(p))
	if before < s.mark && s.n >= s.mark {
		close(s.passed)
	}
	return len(p), nil
}

// BenchmarkPipe moves 1 MiB per op from one side's stdin to the other's
// stdout through the whole data path: uplink (stdin read straight into
// the send buffer), stream, secure, path over loopback, and back up to
// the downlink (whole lines written straight from the receive buffer).
// Both sides run in this process, so allocs/op counts both the send and
// the receive path; the timer starts after 64 MiB, in steady state.
func BenchmarkPipe(b *testing.B) {
	const op, warmup = 1 << 20, 64 << 20
	for _, m := range pipeModes {
		b.Run(m.name, func(b *testing.B) {
			a, c := streamPair(b, m.offload, m.probeMTU, stream.Config{})
			block := make([]byte, op)
			for i := range block {
				block[i] = byte(i*7 + i>>8) // some newlines, like random data
			}
			total := warmup + int64(b.N)*op
			out := &sink{mark: warmup, passed: make(chan struct{})}
			up, down := make(chan error, 1), make(chan error, 1)
			go func() { up <- uplink(a, Config{Stdin: &source{block: block, n: total}}, nil) }()
			go func() { down <- downlink(c, Config{Stdout: out}, nil) }()
			select {
			case <-out.passed:
			case err := <-down:
				b.Fatalf("downlink ended during the warm-up: %v", err)
			}
			b.SetBytes(op)
			b.ReportAllocs()
			b.ResetTimer()
			if err := <-down; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := <-up; err != nil {
				b.Fatal(err)
			}
			if out.n != total {
				b.Fatalf("received %d bytes, sent %d", out.n, total)
			}
			st := a.Stats()
			b.ReportMetric(float64(st.Retransmits), "retx")
		})
	}
}

// BenchmarkStart measures the start of a transfer, which BenchmarkPipe
// leaves out: each op is a fresh pair of streams over loopback (as Run
// gets them after the handshake) that moves 64 MiB from one side's stdin
// to the other's stdout, timed from the streams' start to the last byte
// out, so that the start (path MTU probing, startup) weighs as it does in
// a short transfer. It reports the time to the first 8 MiB out as well.
//
//	go test -run XXX -bench Start -benchtime 5x ./pipe/
func BenchmarkStart(b *testing.B) {
	const size, mark = 64 << 20, 8 << 20
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i*7 + i>>8)
	}
	var total, toMark time.Duration
	var retx uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sa, sb, _, _ := securePair(b, true)
		b.StartTimer()
		start := time.Now()
		a, c := stream.New(sa, stream.Config{}), stream.New(sb, stream.Config{})
		out := &sink{mark: mark, passed: make(chan struct{})}
		up, down := make(chan error, 1), make(chan error, 1)
		go func() { up <- uplink(a, Config{Stdin: &source{block: block, n: size}}, nil) }()
		go func() { down <- downlink(c, Config{Stdout: out}, nil) }()
		<-out.passed
		toMark += time.Since(start)
		if err := <-down; err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		if err := <-up; err != nil {
			b.Fatal(err)
		}
		if out.n != size {
			b.Fatalf("received %d bytes, sent %d", out.n, size)
		}
		b.StopTimer()
		retx += a.Stats().Retransmits
		a.Close()
		c.Close()
	}
	b.ReportMetric(float64(retx)/float64(b.N), "retx/op")
	b.ReportMetric(float64(size)*float64(b.N)/total.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(toMark.Microseconds())/float64(b.N)/1e3, "ms-to-8MiB")
}

// lineChecker records what the downlink writes and counts writes that
// break the line rule (frame's package documentation): each write is whole
// lines, or a piece of at least frame.DefaultMaxLine bytes of a long line,
// or the last one.
type lineChecker struct {
	mu      sync.Mutex
	got     []byte
	writes  int
	badPrev bool // the previous write ended mid-line and was short
	bad     int
}

func (l *lineChecker) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.badPrev {
		l.bad++ // a short mid-line write that was not the last one
	}
	l.badPrev = p[len(p)-1] != '\n' && len(p) < frame.DefaultMaxLine
	l.got = append(l.got, p...)
	l.writes++
	return len(p), nil
}

// TestDataPath runs the benchmarks' data path for real: 8 MiB of text
// with lines of random length (some longer than frame.DefaultMaxLine)
// through uplink, the whole stack over loopback and downlink, with the
// smallest receive buffer so lines straddle its end. Every byte arrives in
// order and every write to stdout keeps the line rule.
func TestDataPath(t *testing.T) {
	for _, m := range pipeModes {
		t.Run(m.name, func(t *testing.T) {
			a, c := streamPair(t, m.offload, m.probeMTU, stream.Config{RecvBuffer: 64 << 10})
			data := make([]byte, 8<<20)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range data {
				data[i] = byte('a' + rng.IntN(26))
				if rng.IntN(1+i%100_000) == 0 {
					data[i] = '\n'
				}
			}
			out := &lineChecker{}
			up, down := make(chan error, 1), make(chan error, 1)
			go func() { up <- uplink(a, Config{Stdin: &chunks{data: data, rng: rng}}, nil) }()
			go func() { down <- downlink(c, Config{Stdout: out}, nil) }()
			timeout := time.After(time.Minute)
			for range 2 {
				select {
				case err := <-up:
					if err != nil {
						t.Fatalf("uplink: %v", err)
					}
				case err := <-down:
					if err != nil {
						t.Fatalf("downlink: %v", err)
					}
				case <-timeout:
					t.Fatalf("no end after a minute: %+v", a.Stats())
				}
			}
			out.mu.Lock()
			defer out.mu.Unlock()
			if !bytes.Equal(out.got, data) {
				t.Fatalf("received %d bytes that differ from the %d sent", len(out.got), len(data))
			}
			if out.bad > 0 {
				t.Fatalf("%d of %d writes ended mid-line and were short", out.bad, out.writes)
			}
			t.Logf("%d writes", out.writes)
		})
	}
}

// chunks reads data in pieces of random size, as a pipe delivers it.
type chunks struct {
	data []byte
	rng  *rand.Rand
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1+c.rng.IntN(200_000))], c.data)
	c.data = c.data[n:]
	return n, nil
}
