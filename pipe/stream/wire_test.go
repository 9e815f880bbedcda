package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// parseFrame decodes the first frame of b, a whole packet's frames, into f
// and returns the rest.
func parseFrame(b []byte, f *frame) ([]byte, error) { return parseFrameWith(b, f, nil, -1) }

func TestAckRoundTrip(t *testing.T) {
	ranges := []pnRange{{90, 100}, {50, 80}, {3, 3}, {0, 1}}
	b := appendAck(nil, 100, 1234, 5678, 9_000_000, ranges)
	if len(b) > maxAckLen(len(ranges)) {
		t.Fatalf("encoded %d bytes, bound %d", len(b), maxAckLen(len(ranges)))
	}
	var f frame
	rest, err := parseFrame(b, &f)
	if err != nil || len(rest) != 0 {
		t.Fatalf("parse: %v, %d bytes left", err, len(rest))
	}
	if f.typ != frameAck || f.largest != 100 || f.ackDelay != 1234 || f.stream != 5678 || f.window != 9_000_000 {
		t.Fatalf("decoded %+v", f)
	}
	if f.nRanges != len(ranges) {
		t.Fatalf("decoded %d ranges, want %d", f.nRanges, len(ranges))
	}
	for i, r := range ranges {
		if f.ranges[i] != r {
			t.Fatalf("range %d: got %v, want %v", i, f.ranges[i], r)
		}
	}
	for _, pn := range []uint64{0, 1, 3, 50, 80, 95} {
		if !f.contains(pn) {
			t.Errorf("contains(%d) = false", pn)
		}
	}
	for _, pn := range []uint64{2, 4, 49, 81, 89, 101} {
		if f.contains(pn) {
			t.Errorf("contains(%d) = true", pn)
		}
	}
}

func TestDataAndCloseRoundTrip(t *testing.T) {
	b := binary.AppendUvarint(nil, 77)
	b = appendDataHeader(b, true, 1<<40, 5)
	b = append(b, "hello"...)
	b = append(b, framePing, framePadding, frameDone)
	b = appendClose(b, AbortOutputClosed, "bye")
	pn, rest, err := parsePacketNumber(b)
	if err != nil || pn != 77 {
		t.Fatalf("pn %d, %v", pn, err)
	}
	var f frame
	var types []byte
	for len(rest) > 0 {
		if rest, err = parseFrame(rest, &f); err != nil {
			t.Fatal(err)
		}
		types = append(types, f.typ)
		switch f.typ {
		case frameDataFin:
			if f.offset != 1<<40 || string(f.data) != "hello" {
				t.Fatalf("data frame %d %q", f.offset, f.data)
			}
		case frameClose:
			if string(f.reason) != "bye" || AbortCode(f.code) != AbortOutputClosed {
				t.Fatalf("code %d reason %q", f.code, f.reason)
			}
		}
	}
	if want := []byte{frameDataFin, framePing, framePadding, frameDone, frameClose}; !bytes.Equal(types, want) {
		t.Fatalf("types %x, want %x", types, want)
	}
	if got := dataHeaderLen(1<<40, 5); got != len(appendDataHeader(nil, false, 1<<40, 5)) {
		t.Fatalf("dataHeaderLen = %d", got)
	}
}

func TestMalformed(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty frame":        {},
		"unknown type":       {0x7f},
		"truncated varint":   {frameData, 0x80},
		"overlong varint":    {frameData, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"data past end":      {frameData, 0, 5, 'a'},
		"data offset wraps":  append([]byte{frameData}, append(binary.AppendUvarint(nil, 1<<64-1), 1, 'a')...),
		"ack range negative": {frameAck, 5, 0, 0, 0, 0, 6},
		"ack gap negative":   {frameAck, 5, 0, 0, 0, 1, 2, 4, 0},
		"too many ranges":    {frameAck, 5, 0, 0, 0, 64, 0},
		"long close reason":  append([]byte{frameClose, 0}, binary.AppendUvarint(nil, 300)...),
	} {
		var f frame
		if _, err := parseFrame(b, &f); !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", name, err)
		}
	}
}

// FuzzParsePacket feeds arbitrary payloads to the packet decoder: it must
// never panic, and every ACK it accepts must re-encode to itself.
func FuzzParsePacket(f *testing.F) {
	f.Add([]byte{0})
	f.Add(append(binary.AppendUvarint(nil, 3), framePing, frameDone))
	f.Add(appendAck([]byte{9}, 100, 5, 1000, 2000, []pnRange{{90, 100}, {10, 20}}))
	f.Add(append(appendDataHeader([]byte{1}, false, 42, 3), 'a', 'b', 'c'))
	f.Add(appendClose([]byte{2}, AbortInterrupted, "reason"))
	f.Fuzz(func(t *testing.T, p []byte) {
		_, rest, err := parsePacketNumber(p)
		if err != nil {
			return
		}
		var fr frame
		for len(rest) > 0 {
			if rest, err = parseFrame(rest, &fr); err != nil {
				return
			}
			if fr.typ == frameAck {
				checkAckRoundTrip(t, &fr)
			}
		}
	})
}

// FuzzParseFrame targets the frame decoder alone, from a typed start.
func FuzzParseFrame(f *testing.F) {
	f.Add(frameAck, []byte{5, 0, 0, 0, 1, 2, 0, 0})
	f.Add(frameData, []byte{0, 2, 'h', 'i'})
	f.Add(frameDataFin, []byte{10, 0})
	f.Add(frameClose, []byte{1, 2, 'o', 'k'})
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		var fr frame
		// As a head whose DATA frame's bytes follow elsewhere (placeBody):
		// a claim is only ever of the whole input, for the length given.
		for _, bodyLen := range []int{0, 16, 1000} {
			rest, err := parseFrameWith(append([]byte{typ}, body...), &fr, nil, bodyLen)
			if err == nil && fr.claimed && (len(rest) != 0 || fr.typ != frameData && fr.typ != frameDataFin) {
				t.Fatalf("claimed a body with %d bytes left, type %#x", len(rest), fr.typ)
			}
		}
		rest, err := parseFrame(append([]byte{typ}, body...), &fr)
		if err != nil {
			return
		}
		if len(rest) > len(body) {
			t.Fatalf("rest longer than input")
		}
		switch fr.typ {
		case frameAck:
			checkAckRoundTrip(t, &fr)
		case frameData, frameDataFin:
			b := appendDataHeader(nil, fr.typ == frameDataFin, fr.offset, len(fr.data))
			if len(b) != dataHeaderLen(fr.offset, len(fr.data)) {
				t.Fatalf("dataHeaderLen mismatch")
			}
		}
	})
}

func checkAckRoundTrip(t *testing.T, fr *frame) {
	t.Helper()
	b := appendAck(nil, fr.largest, fr.ackDelay, fr.stream, fr.window, fr.ranges[:fr.nRanges])
	var g frame
	if _, err := parseFrame(b, &g); err != nil {
		t.Fatalf("re-encoded ack does not parse: %v", err)
	}
	// Only the first nRanges entries are the frame's: a frame parsed into a
	// reused struct keeps a longer earlier ACK's ranges past them.
	if g.largest != fr.largest || !slices.Equal(g.ranges[:g.nRanges], fr.ranges[:fr.nRanges]) {
		t.Fatalf("ack round trip changed it: %+v vs %+v", g.ranges[:g.nRanges], fr.ranges[:fr.nRanges])
	}
}
