package pipe

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestStartKey: a key StartKey began is taken by the Run of its size, and
// only once; another size, or a later Run, generates its own.
func TestStartKey(t *testing.T) {
	started := StartKey(0) // DefaultRSABits
	if started == nil {
		t.Fatal("StartKey(0) started nothing")
	}
	other := Config{RSABits: 3072, Key: started}
	otherKey := other.generateKey()
	otherKey.Stop()
	if otherKey == started {
		t.Fatal("a Run of 3072 bits took the 2048-bit key")
	}
	cfg := Config{RSABits: DefaultRSABits, Key: started}
	first := cfg.generateKey()
	if first != started {
		t.Fatal("the first Run did not take StartKey's key")
	}
	second := cfg.generateKey()
	if second == started {
		t.Fatal("a second Run took the same key")
	}
	for i, k := range []*Key{first, second} {
		select {
		case kr := <-k.result:
			if kr.err != nil || kr.key.N.BitLen() != DefaultRSABits {
				t.Fatalf("key %d: %v", i, kr.err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("key %d never came", i)
		}
		k.Stop() // done already: returns at once
	}
	if StartKey(1024) != nil { // too small: nothing starts
		t.Fatal("StartKey(1024) started a key")
	}
}

// TestStartKeyStop: Stop ends a generation that still runs, at once, and
// leaves no goroutine; what it leaves for a Run is context.Canceled.
func TestStartKeyStop(t *testing.T) {
	k := StartKey(4096) // seconds under -race: still running when stopped
	stopped := make(chan struct{})
	go func() {
		k.Stop()
		k.Stop() // a second Stop is harmless
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return within 10 s")
	}
	// Its goroutine signalled its end: it is returning (exitGrace).
	for deadline := time.Now().Add(exitGrace); blockedIn("pipe.startGenerating.func") && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if blockedIn("pipe.startGenerating.func") {
		t.Fatalf("the generation outlived Stop:\n%s", goroutineStacks())
	}
	if kr := <-k.result; kr.key != nil && kr.err == nil {
		t.Log("the key was done before Stop") // a fast machine: nothing to check
	} else if !errors.Is(kr.err, context.Canceled) {
		t.Fatalf("a stopped generation returned %v", kr.err)
	}
	var none *Key
	none.Stop() // StartKey's nil: nothing to stop
}
