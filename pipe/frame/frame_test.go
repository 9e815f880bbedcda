package frame

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// recorder keeps each Write separately to check that only whole lines are
// written.
type recorder struct{ writes [][]byte }

func (r *recorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func TestLinesForDisplay(t *testing.T) {
	var got []string
	l := &Lines{Emit: func(b []byte) { got = append(got, string(b)) }, Max: 5}
	l.Write([]byte("ab\ncdefghij"))
	l.Write([]byte("k\nlast"))
	l.Flush()
	want := "ab|cdefg|hijk|last"
	if strings.Join(got, "|") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, "|"), want)
	}
}

// TestSpanWriter feeds random text and binary data through a ring buffer
// model, as pipe's downlink does with the stream's receive buffer: the
// held bytes are presented as a then b, split where the ring wraps. Output
// must be byte-exact, and every write whole lines, a piece of at least
// MaxLine bytes of a long line, or the end of the stream.
func TestSpanWriter(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const maxLine = 1000
	for trial := range 100 {
		in := make([]byte, rng.IntN(200_000))
		nl := 1 + rng.IntN(3000) // mean line length
		for i := range in {
			in[i] = byte('a' + rng.IntN(26))
			if rng.IntN(nl) == 0 {
				in[i] = '\n'
			}
		}
		ringSize := 1000 + rng.IntN(20_000)
		var r recorder
		w := &SpanWriter{W: &r, MaxLine: maxLine}
		start, end := 0, 0 // the ring holds in[start:end]
		for start < len(in) {
			if end < len(in) && end-start < ringSize { // more arrives
				end = min(len(in), end+1+rng.IntN(ringSize-(end-start)))
			}
			atEOF := end == len(in)
			held := in[start:end]
			wrap := ringSize - start%ringSize // bytes before the ring's end
			a, b := held, []byte(nil)
			if wrap < len(held) {
				a, b = held[:wrap], held[wrap:]
			}
			n, err := w.WriteLines(a, b, atEOF)
			if err != nil {
				t.Fatal(err)
			}
			if atEOF && n != len(held) {
				t.Fatalf("trial %d: at EOF wrote %d of %d bytes", trial, n, len(held))
			}
			if !atEOF && end-start == ringSize && n == 0 {
				t.Fatalf("trial %d: a full ring and nothing written: stuck", trial)
			}
			start += n
		}
		var out []byte
		for i, wr := range r.writes {
			out = append(out, wr...)
			last := i == len(r.writes)-1
			if wr[len(wr)-1] != '\n' && len(wr) < maxLine && !last {
				t.Fatalf("trial %d: write %d ends mid-line and is short (%d bytes)", trial, i, len(wr))
			}
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("trial %d: output differs from input (%d vs %d bytes)", trial, len(out), len(in))
		}
	}
}

// TestSpanWriterError: a failed write is reported with what was written
// before it.
func TestSpanWriterError(t *testing.T) {
	fw := &failingWriter{after: 1}
	w := &SpanWriter{W: fw, MaxLine: 10}
	n, err := w.WriteLines([]byte("one\ntw"), []byte("o\nthree\n"), false)
	if err == nil || n != 4 {
		t.Fatalf("WriteLines = %d, %v; want 4 and an error", n, err)
	}
}

type failingWriter struct{ after int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after == 0 {
		return 0, io.ErrClosedPipe
	}
	f.after--
	return len(p), nil
}
