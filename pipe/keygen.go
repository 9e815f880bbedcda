package pipe

import (
	"context"
	"crypto/rsa"

	"github.com/p2pcat/p2pcat/pipe/secure"
)

// The session's ephemeral RSA key: its generation starts when Run starts
// (or earlier, with StartKey) and runs beside the rendezvous; the
// handshake takes the key when it needs it (newHandshaker, connect.go).
// Run stops a generation it no longer needs when it returns, and waits
// for it: the search checks for that before each of its exponentiations.

type keyResult struct {
	key *rsa.PrivateKey
	err error
}

// Key is an RSA key being generated, for Config.Key: StartKey began it.
type Key struct {
	bits   int
	result <-chan keyResult
	cancel context.CancelFunc
	done   <-chan struct{} // closed when the generation's goroutine returned
}

// generateKey starts generating the session's RSA key, so that it is ready
// when the rendezvous answers and adds no latency. A generation that
// StartKey began for this key size (Config.Key) is taken instead of a new
// one. The caller owns the generation: it stops it (Key.Stop) when done.
func (cfg *Config) generateKey() *Key {
	if gen := cfg.testOnlyGenerateKey; gen != nil {
		return startGenerating(gen, cfg.RSABits)
	}
	if k := cfg.Key; k != nil && k.bits == cfg.RSABits {
		cfg.Key = nil // one session, one key
		return k
	}
	return startGenerating(secure.GenerateKey, cfg.RSABits)
}

// startGenerating runs gen on its own goroutine until it returns or the
// Key is stopped.
func startGenerating(gen func(ctx context.Context, bits int) (*rsa.PrivateKey, error), bits int) *Key {
	ctx, cancel := context.WithCancel(context.Background())
	result, done := make(chan keyResult, 1), make(chan struct{})
	go func() {
		defer close(done)
		k, err := gen(ctx, bits)
		result <- keyResult{k, err}
	}()
	return &Key{bits: bits, result: result, cancel: cancel, done: done}
}

// StartKey starts generating an RSA key of bits (0 is DefaultRSABits), so
// that it grows while the command asks for the password and reads its
// files; Run takes it from Config.Key when Config.RSABits is the same
// size, and stops it when it returns. An invalid size starts nothing and
// returns nil.
func StartKey(bits int) *Key {
	if bits == 0 {
		bits = DefaultRSABits
	}
	if secure.CheckRSABits(bits) != nil {
		return nil
	}
	return startGenerating(secure.GenerateKey, bits)
}

// Stop ends the generation if it still runs and returns once its
// goroutine has: within one exponentiation of the prime search (a few
// milliseconds). A key it made and nobody took is dropped; one a session
// took is the session's. Stop may be called more than once, and on nil.
func (k *Key) Stop() {
	if k == nil {
		return
	}
	k.cancel()
	<-k.done
}
