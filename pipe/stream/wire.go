// Wire format of the stream layer.
//
// A stream packet is the plaintext payload of one authenticated datagram
// of the secure layer (the Transport). Every integer written "varint" is an
// unsigned LEB128 varint exactly as encoding/binary.PutUvarint writes it:
// 7 bits per byte, least significant group first, high bit set on every
// byte but the last, at most 10 bytes, value < 2^64. A decoder rejects
// varints that are truncated or overflow 64 bits.
//
//	packet = pn frame*
//
//	pn      varint. The packet number. Each side numbers its packets
//	        0, 1, 2, ... and never reuses a number: retransmitted data
//	        travels in a packet with a new number, so every ack yields an
//	        unambiguous RTT sample.
//
// A packet holds zero or more frames, back to back, up to the end of the
// payload. Each frame starts with a one-byte type:
//
//	0x00 PADDING   no body. Ignored.
//	0x01 PING      no body. Asks for an ack (keepalive, probe).
//	0x02 ACK       largest:varint delay:varint stream:varint window:varint
//	               count:varint first:varint (gap:varint length:varint)*count
//	0x03 DATA      offset:varint length:varint bytes[length]
//	0x04 DATA_FIN  offset:varint length:varint bytes[length]; the stream
//	               of the sender ends after these bytes, at offset+length.
//	0x05 DONE      no body. "I am complete": all my data and FIN were
//	               acknowledged, your FIN arrived and every byte of yours
//	               was handed to my reader.
//	0x06 CLOSE     code:varint length:varint (at most 256) reason bytes[length]
//	               (UTF-8). The sender aborted the session; the receiver
//	               fails. code says why (AbortCode: 0 another failure, 1
//	               interrupted, 2 its input failed, 3 its output failed, 4 its
//	               output was closed by its reader); unknown codes read as 0.
//
// Any other type byte makes the whole packet malformed.
//
// ACK acknowledges packet numbers, QUIC style. largest is the largest packet
// number received; delay is the time in microseconds between receiving
// that packet and sending this ack. The acknowledged numbers are count+1
// ranges in descending order: the first covers [largest-first, largest];
// each following range lies below the previous one, whose smallest number
// is s: it covers [hi-length, hi] with hi = s-gap-2. A range that would go
// below zero makes the frame malformed; count is at most 64.
// stream is the cumulative stream acknowledgement: the number of bytes of
// the sender's stream the receiver holds without a hole, plus one when it
// also holds the FIN (the FIN takes one position, as in TCP). window is the
// flow-control limit: the sender may send stream bytes with offset < window.
//
// Frames DATA, DATA_FIN, PING, DONE and CLOSE make the packet ack-eliciting.
// A packet carries at most one DATA or DATA_FIN frame.
//
// Packet size. A packet is at most the Transport's MaxPayload (1175 bytes
// over pipe/secure) until a path MTU probe succeeds (pmtu.go): a probe is
// a packet holding PING then PADDING up to the size tried, and the receiver
// acknowledges it like any packet. Once a probe is acknowledged, the sender
// may send packets up to its size. A receiver accepts packets of any size
// the Transport delivers.

package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Frame types.
const (
	framePadding byte = 0x00
	framePing    byte = 0x01
	frameAck     byte = 0x02
	frameData    byte = 0x03
	frameDataFin byte = 0x04
	frameDone    byte = 0x05
	frameClose   byte = 0x06
)

const (
	maxAckRanges   = 64  // ranges in one ACK frame (first + count)
	maxReasonBytes = 256 // bytes of a CLOSE reason
)

// errMalformed is wrapped by every decoding error.
var errMalformed = errors.New("stream: malformed packet")

// pnRange is an inclusive range of packet numbers.
type pnRange struct{ lo, hi uint64 }

// frame is one decoded frame. It is a plain struct, not an interface, so that
// decoding allocates nothing; fields that do not apply to typ are zero.
type frame struct {
	typ byte

	// ACK
	largest  uint64
	ackDelay uint64 // microseconds
	stream   uint64
	window   uint64
	ranges   [maxAckRanges]pnRange // descending; ranges[0].hi == largest
	nRanges  int

	// DATA, DATA_FIN
	offset  uint64
	data    []byte // aliases the packet, or the body it claimed
	claimed bool   // data is the body that follows the packet (parseFrameWith)

	// CLOSE
	code   uint64
	reason []byte // aliases the packet
}

func readUvarint(b []byte) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("%w: bad varint", errMalformed)
	}
	return v, b[n:], nil
}

// parsePacketNumber splits a packet into its number and its frames.
func parsePacketNumber(p []byte) (pn uint64, frames []byte, err error) {
	return readUvarint(p)
}

// parseFrameWith decodes the first frame of b into f and returns the
// rest. With bodyLen >= 0 the packet's last frame's bytes follow it
// elsewhere: a DATA frame that ends b and whose length is bodyLen claims
// body (of that length, or nil while only the head is known) as its data.
// With bodyLen < 0 every frame is whole in b.
func parseFrameWith(b []byte, f *frame, body []byte, bodyLen int) ([]byte, error) {
	f.claimed = false
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty frame", errMalformed)
	}
	f.typ = b[0]
	b = b[1:]
	var err error
	switch f.typ {
	case framePadding:
		// A run of padding decodes as one frame: a path MTU probe
		// holds tens of kilobytes of it.
		for len(b) > 0 && b[0] == framePadding {
			b = b[1:]
		}
		return b, nil
	case framePing, frameDone:
		return b, nil
	case frameAck:
		return parseAck(b, f)
	case frameData, frameDataFin:
		var n uint64
		if f.offset, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		if n, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		if f.offset+n < f.offset {
			return nil, fmt.Errorf("%w: data offset overflows", errMalformed)
		}
		if bodyLen >= 0 && len(b) == 0 && n == uint64(bodyLen) {
			f.data, f.claimed = body, true
			return b, nil
		}
		if n > uint64(len(b)) {
			return nil, fmt.Errorf("%w: data length %d exceeds packet", errMalformed, n)
		}
		f.data = b[:n]
		return b[n:], nil
	case frameClose:
		if f.code, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		var n uint64
		if n, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		if n > maxReasonBytes || n > uint64(len(b)) {
			return nil, fmt.Errorf("%w: bad close reason length %d", errMalformed, n)
		}
		f.reason = b[:n]
		return b[n:], nil
	default:
		return nil, fmt.Errorf("%w: unknown frame type %#x", errMalformed, f.typ)
	}
}

func parseAck(b []byte, f *frame) ([]byte, error) {
	var err error
	var count, first uint64
	if f.largest, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if f.ackDelay, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if f.stream, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if f.window, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if count, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if count >= maxAckRanges {
		return nil, fmt.Errorf("%w: %d ack ranges", errMalformed, count)
	}
	if first, b, err = readUvarint(b); err != nil {
		return nil, err
	}
	if first > f.largest {
		return nil, fmt.Errorf("%w: ack range below zero", errMalformed)
	}
	f.ranges[0] = pnRange{f.largest - first, f.largest}
	f.nRanges = 1
	for i := uint64(0); i < count; i++ {
		var gap, length uint64
		if gap, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		if length, b, err = readUvarint(b); err != nil {
			return nil, err
		}
		s := f.ranges[f.nRanges-1].lo
		if gap > s || s-gap < 2 {
			return nil, fmt.Errorf("%w: ack gap below zero", errMalformed)
		}
		hi := s - gap - 2
		if length > hi {
			return nil, fmt.Errorf("%w: ack range below zero", errMalformed)
		}
		f.ranges[f.nRanges] = pnRange{hi - length, hi}
		f.nRanges++
	}
	return b, nil
}

// Encoders append to b and return the extended slice. Callers size their
// buffers with the max*Len helpers so appends never reallocate.

func appendAck(b []byte, largest, delayMicros, stream, window uint64, ranges []pnRange) []byte {
	// ranges: descending, non-empty, ranges[0].hi == largest, separated by
	// at least one missing number.
	b = append(b, frameAck)
	b = binary.AppendUvarint(b, largest)
	b = binary.AppendUvarint(b, delayMicros)
	b = binary.AppendUvarint(b, stream)
	b = binary.AppendUvarint(b, window)
	b = binary.AppendUvarint(b, uint64(len(ranges)-1))
	b = binary.AppendUvarint(b, ranges[0].hi-ranges[0].lo)
	for i := 1; i < len(ranges); i++ {
		gap := ranges[i-1].lo - ranges[i].hi - 2
		b = binary.AppendUvarint(b, gap)
		b = binary.AppendUvarint(b, ranges[i].hi-ranges[i].lo)
	}
	return b
}

// maxAckLen bounds the encoded size of an ACK frame with n ranges.
func maxAckLen(n int) int { return 1 + 6*binary.MaxVarintLen64 + 2*binary.MaxVarintLen64*(n-1) }

func appendDataHeader(b []byte, fin bool, offset uint64, n int) []byte {
	if fin {
		b = append(b, frameDataFin)
	} else {
		b = append(b, frameData)
	}
	b = binary.AppendUvarint(b, offset)
	return binary.AppendUvarint(b, uint64(n))
}

// dataHeaderLen is the exact encoded size of a DATA header.
func dataHeaderLen(offset uint64, n int) int {
	return 1 + uvarintLen(offset) + uvarintLen(uint64(n))
}

func appendClose(b []byte, code AbortCode, reason string) []byte {
	if len(reason) > maxReasonBytes {
		reason = reason[:maxReasonBytes]
	}
	b = append(b, frameClose)
	b = binary.AppendUvarint(b, uint64(code))
	b = binary.AppendUvarint(b, uint64(len(reason)))
	return append(b, reason...)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
