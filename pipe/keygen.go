package pipe

import (
	"crypto/rand"
	"crypto/rsa"
	"sync"

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
// that StartKey began for this key size is taken instead of a new one.
func (cfg *Config) generateKey() <-chan keyResult {
	gen, bits := cfg.testOnlyGenerateKey, cfg.RSABits
	if gen == nil {
		if keys := takeEarlyKey(bits); keys != nil {
			return keys
		}
		gen = generateRSA
	}
	keys := make(chan keyResult, 1) // the result is dropped when nobody reads it
	go func() {
		k, err := gen(bits)
		keys <- keyResult{k, err}
	}()
	return keys
}

func generateRSA(bits int) (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, bits) }

// early is the generation StartKey began, until a Run takes it.
var early struct {
	sync.Mutex
	bits int
	keys <-chan keyResult
}

// StartKey starts generating the RSA key of the next Run in this process
// whose Config.RSABits is bits (0 is DefaultRSABits), so that the key
// grows while the command asks for the password and reads its files; an
// invalid size does nothing. A Run with another size generates its own
// key; a second StartKey replaces the first, whose key is dropped when it
// is done. Like generateKey's, the generation cannot be cancelled. It is
// for a process that runs one session, the command line, as
// Config.TransferProcs is.
func StartKey(bits int) {
	if bits == 0 {
		bits = DefaultRSABits
	}
	if secure.CheckRSABits(bits) != nil {
		return
	}
	keys := make(chan keyResult, 1)
	go func() {
		k, err := generateRSA(bits)
		keys <- keyResult{k, err}
	}()
	early.Lock()
	defer early.Unlock()
	early.bits, early.keys = bits, keys
}

// takeEarlyKey returns StartKey's generation if it is for bits, once; nil
// otherwise.
func takeEarlyKey(bits int) <-chan keyResult {
	early.Lock()
	defer early.Unlock()
	keys := early.keys
	if keys == nil || early.bits != bits {
		return nil
	}
	early.bits, early.keys = 0, nil
	return keys
}
