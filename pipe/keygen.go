package pipe

import (
	"crypto/rand"
	"crypto/rsa"

	"github.com/p2pcat/p2pcat/pipe/secure"
)

// The session's ephemeral RSA key: its generation starts when Run starts
// (or earlier, with StartKey) and runs beside the rendezvous; the
// handshake takes the key when it needs it (newHandshaker, connect.go).

type keyResult struct {
	key *rsa.PrivateKey
	err error
}

// generateKey starts generating the session's RSA key, so that it is ready
// when the rendezvous answers and adds no latency, and returns where the
// key will be. Generating cannot be cancelled, and nobody waits for it: a
// Run that ends before the key is ready leaves the generation running, the
// one goroutine of Run's that outlives it (besides a pending read or
// write, Config.Stdin), and it ends when the key is done. A generation
// that StartKey began for this key size (Config.Key) is taken instead of a
// new one.
func (cfg *Config) generateKey() <-chan keyResult {
	if gen := cfg.testOnlyGenerateKey; gen != nil {
		return startGenerating(gen, cfg.RSABits)
	}
	if k := cfg.Key; k != nil && k.bits == cfg.RSABits {
		cfg.Key = nil // one session, one key
		return k.result
	}
	return startGenerating(generateRSA, cfg.RSABits)
}

func generateRSA(bits int) (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, bits) }

// startGenerating runs gen on its own goroutine; the result is dropped
// when nobody reads it.
func startGenerating(gen func(bits int) (*rsa.PrivateKey, error), bits int) <-chan keyResult {
	keys := make(chan keyResult, 1)
	go func() {
		k, err := gen(bits)
		keys <- keyResult{k, err}
	}()
	return keys
}

// Key is an RSA key whose generation StartKey began, for Config.Key.
type Key struct {
	bits   int
	result <-chan keyResult
}

// StartKey starts generating an RSA key of bits (0 is DefaultRSABits), so
// that it grows while the command asks for the password and reads its
// files; Run takes it from Config.Key when Config.RSABits is the same
// size. An invalid size starts nothing and returns nil. Like
// generateKey's, the generation cannot be cancelled.
func StartKey(bits int) *Key {
	if bits == 0 {
		bits = DefaultRSABits
	}
	if secure.CheckRSABits(bits) != nil {
		return nil
	}
	return &Key{bits: bits, result: startGenerating(generateRSA, bits)}
}
