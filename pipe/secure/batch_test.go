package secure

import (
	"bytes"
	"crypto/rand"
	"net/netip"
	"sync"
	"testing"
	"unsafe"
)

// batchLink is a BatchLink that records each SendBatch call: copies of
// the datagrams, and whether they lay back to back in memory (what lets
// pipe/path send them with one GSO system call without copying).
type batchLink struct {
	discardLink
	mu         sync.Mutex
	batches    [][][]byte
	contiguous []bool
}

func (l *batchLink) SendBatch(bufs [][]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var batch [][]byte
	adjacent := true
	for i, b := range bufs {
		if i > 0 && unsafe.SliceData(b) != (*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(bufs[i-1])), len(bufs[i-1]))) {
			adjacent = false
		}
		batch = append(batch, bytes.Clone(b))
	}
	l.batches = append(l.batches, batch)
	l.contiguous = append(l.contiguous, adjacent)
	return nil
}

// TestSendBatchChunks: SendBatch seals into batches of at most batchBytes
// (one larger datagram goes alone), back to back in memory, with
// consecutive counters, and each datagram opens to its payload.
func TestSendBatchChunks(t *testing.T) {
	link := &batchLink{discardLink: discardLink{done: make(chan struct{})}}
	k1, k2 := make([]byte, 32), make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	a, err := newConn(link, testID, dirKeys{k1, k2}, dirKeys{k2, k1}, netip.AddrPort{}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r, err := newConn(newDiscardLink(), testID, dirKeys{k2, k1}, dirKeys{k1, k2}, netip.AddrPort{}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	var payloads [][]byte
	for _, size := range []int{1175, 1175, 1175, 30000, 30000, 30000, 65000, 100, 1175} {
		p := make([]byte, size)
		rand.Read(p)
		payloads = append(payloads, p)
	}
	for i := 0; i < 200; i++ { // a long run of small ones: several full batches
		payloads = append(payloads, payloads[i%3])
	}
	if err := a.SendBatch(payloads); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for i, batch := range link.batches {
		size := 0
		for _, d := range batch {
			size += len(d)
		}
		if len(batch) > 1 && size > batchBytes {
			t.Errorf("batch %d: %d datagrams, %d bytes > %d", i, len(batch), size, batchBytes)
		}
		if !link.contiguous[i] {
			t.Errorf("batch %d: datagrams not back to back in memory", i)
		}
		for _, d := range batch {
			if want := uint64(len(got)); counterOf(d) != want {
				t.Fatalf("datagram %d has counter %d", want, counterOf(d))
			}
			r.recvMu.Lock()
			p, ok := r.openLocked(d, netip.AddrPort{}, nil)
			r.recvMu.Unlock()
			if !ok {
				t.Fatalf("datagram %d does not open", len(got))
			}
			got = append(got, bytes.Clone(p))
		}
	}
	if len(got) != len(payloads) {
		t.Fatalf("%d datagrams for %d payloads", len(got), len(payloads))
	}
	for i := range got {
		if !bytes.Equal(got[i], payloads[i]) {
			t.Fatalf("payload %d differs", i)
		}
	}
	if n := len(link.batches); n < 5 {
		t.Fatalf("only %d batches for %d payloads: not chunked", n, len(payloads))
	}
}
