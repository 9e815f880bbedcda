package pipe

import (
	"testing"
	"time"
)

// TestStartKey: a key StartKey began is taken by the first Run of its
// size, and only by that one; another size, or a later Run, generates its
// own.
func TestStartKey(t *testing.T) {
	StartKey(0) // DefaultRSABits
	early.Lock()
	started := early.keys
	early.Unlock()
	if started == nil {
		t.Fatal("StartKey(0) started nothing")
	}
	if keys := takeEarlyKey(3072); keys != nil {
		t.Fatal("a Run of 3072 bits took the 2048-bit key")
	}
	cfg := Config{RSABits: DefaultRSABits}
	first := cfg.generateKey()
	if first != started {
		t.Fatal("the first Run did not take StartKey's key")
	}
	second := cfg.generateKey()
	if second == started {
		t.Fatal("a second Run took the same key")
	}
	for i, keys := range []<-chan keyResult{first, second} {
		select {
		case kr := <-keys:
			if kr.err != nil || kr.key.N.BitLen() != DefaultRSABits {
				t.Fatalf("key %d: %v", i, kr.err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("key %d never came", i)
		}
	}
	StartKey(1024) // too small: nothing starts
	if takeEarlyKey(1024) != nil {
		t.Fatal("StartKey(1024) started a key")
	}
}
