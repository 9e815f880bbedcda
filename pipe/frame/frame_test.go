package frame

import (
	"bytes"
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

func TestLineWriterWholeLines(t *testing.T) {
	var r recorder
	lw := &LineWriter{W: &r}
	for _, chunk := range []string{"hel", "lo\nwor", "ld\n", "no newline"} {
		lw.Write([]byte(chunk))
	}
	if got := len(r.writes); got != 2 || string(r.writes[0]) != "hello\n" || string(r.writes[1]) != "world\n" {
		t.Fatalf("writes before EOF: %q", r.writes)
	}
	lw.Flush()
	if string(r.writes[2]) != "no newline" {
		t.Fatalf("flush: %q", r.writes)
	}
}

func TestLineWriterByteExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		in := make([]byte, rng.IntN(300_000))
		for i := range in {
			in[i] = byte(rng.IntN(256))
			if rng.IntN(40) == 0 {
				in[i] = '\n'
			}
		}
		if trial%5 == 0 {
			for i := range in {
				if in[i] == '\n' {
					in[i] = 0 // a binary blob without newlines
				}
			}
		}
		var out bytes.Buffer
		var r recorder
		lw := &LineWriter{W: &out, MaxLine: 1000}
		lw2 := &LineWriter{W: &r, MaxLine: 1000}
		for rest := in; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(5000))
			lw.Write(rest[:n])
			lw2.Write(rest[:n])
			rest = rest[n:]
		}
		lw.Flush()
		if !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("trial %d: output differs from input", trial)
		}
		for _, w := range r.writes {
			if w[len(w)-1] != '\n' && len(w) < 1000 {
				t.Fatalf("trial %d: a write ends mid-line and is short (%d bytes)", trial, len(w))
			}
		}
	}
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
