package pipe

import (
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
	if keys := other.generateKey(); keys == started.result {
		t.Fatal("a Run of 3072 bits took the 2048-bit key")
	}
	cfg := Config{RSABits: DefaultRSABits, Key: started}
	first := cfg.generateKey()
	if first != started.result {
		t.Fatal("the first Run did not take StartKey's key")
	}
	second := cfg.generateKey()
	if second == started.result {
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
	if StartKey(1024) != nil { // too small: nothing starts
		t.Fatal("StartKey(1024) started a key")
	}
}
