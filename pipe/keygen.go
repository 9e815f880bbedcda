package pipe

import (
	"crypto/rand"
	"crypto/rsa"
)

// The session's ephemeral RSA key: its generation starts when Run starts
// and runs beside the rendezvous; the handshake takes the key when it
// needs it (newHandshaker, connect.go).

type keyResult struct {
	key *rsa.PrivateKey
	err error
}

// generateKey starts generating the session's RSA key, so that it is ready
// when the rendezvous answers and adds no latency, and returns where the
// key will be. Generating cannot be cancelled, and nobody waits for it: a
// Run that ends before the key is ready leaves the generation running, the
// one goroutine of Run's that outlives it (besides a pending read or
// write, Config.Stdin), and it ends when the key is done.
func (cfg *Config) generateKey() <-chan keyResult {
	gen, bits := cfg.testOnlyGenerateKey, cfg.RSABits
	if gen == nil {
		gen = func(bits int) (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, bits) }
	}
	keys := make(chan keyResult, 1) // the result is dropped when nobody reads it
	go func() {
		k, err := gen(bits)
		keys <- keyResult{k, err}
	}()
	return keys
}
