package secure

// replayWindow remembers which packet counters were accepted, the sliding
// bitmap of RFC 6479 as used by WireGuard: a ring of 64-bit blocks, where
// moving the window forward clears whole blocks instead of shifting bits.
// It accepts each counter at most once, and accepts counters up to
// replayWindowSize behind the highest one seen, so packets reordered by the
// network are not lost. Not safe for concurrent use.
type replayWindow struct {
	last uint64 // highest counter accepted so far
	ring [replayRingBlocks]uint64
}

const (
	replayRingBlocks = 64 // a power of two
	replayBlockBits  = 64
	// replayWindowSize is how far behind the highest counter a packet may
	// arrive: one block is always being cleared for reuse.
	replayWindowSize = (replayRingBlocks - 1) * replayBlockBits
)

// fresh reports whether counter could be accepted: it is neither too old
// nor already seen. It does not record it: callers check before spending
// work on decryption, and record only after the packet authenticated, so
// forged packets cannot move the window.
func (w *replayWindow) fresh(counter uint64) bool {
	if counter >= rejectAfterMessages {
		return false
	}
	if counter > w.last {
		return true
	}
	if w.last-counter >= replayWindowSize {
		return false
	}
	block, bit := w.position(counter)
	return w.ring[block]&bit == 0
}

// accept records counter and reports whether it was fresh.
func (w *replayWindow) accept(counter uint64) bool {
	if !w.fresh(counter) {
		return false
	}
	if counter > w.last {
		current, target := w.last/replayBlockBits, counter/replayBlockBits
		clearBlocks := min(target-current, replayRingBlocks)
		for i := uint64(1); i <= clearBlocks; i++ {
			w.ring[(current+i)%replayRingBlocks] = 0
		}
		w.last = counter
	}
	block, bit := w.position(counter)
	w.ring[block] |= bit
	return true
}

func (w *replayWindow) position(counter uint64) (block uint64, bit uint64) {
	return (counter / replayBlockBits) % replayRingBlocks, 1 << (counter % replayBlockBits)
}
