package secure

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
)

var (
	labelSecretI = []byte("p2pcat v2 secret initiator")
	labelSecretR = []byte("p2pcat v2 secret responder")
)

const (
	infoEarly  = "p2pcat v2 early confirm"
	infoCancel = "p2pcat v2 cancel"
	infoKeys   = "p2pcat v2 keys"
)

func appendLV(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// adOf is CPace's associated data for a side: the hash of its RSA public
// key, so the ISK binds both keys.
func adOf(pk []byte) []byte {
	sum := sha256.Sum256(pk)
	return sum[:]
}

// parsePublicKey checks a peer's modulus against the key-size policy.
func parsePublicKey(pk []byte, minBits int) (*rsa.PublicKey, error) {
	if len(pk) == 0 || pk[0] == 0 {
		return nil, errors.New("RSA modulus is not minimally encoded")
	}
	n := new(big.Int).SetBytes(pk)
	if err := checkRSABits(n.BitLen(), minBits); err != nil {
		return nil, err
	}
	if n.Bit(0) == 0 {
		return nil, errors.New("RSA modulus is even")
	}
	return &rsa.PublicKey{N: n, E: rsaExponent}, nil
}

func transcriptHash(parts ...[]byte) [sha256.Size]byte {
	d := sha256.New()
	for _, p := range parts {
		d.Write(p)
	}
	var sum [sha256.Size]byte
	d.Sum(sum[:0])
	return sum
}

func mac(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func earlyTag(isk []byte, id handshakeID, hello, replyUntagged []byte) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, isk, id[:], infoEarly, 32)
	if err != nil {
		return nil, fmt.Errorf("secure: hkdf: %w", err)
	}
	defer clear(k)
	t := transcriptHash(hello, replyUntagged)
	return mac(k, t[:]), nil
}

type sessionKeys struct {
	all                                        []byte
	confirmI, confirmR                         []byte
	initiatorToResponder, responderToInitiator []byte
	headIR, headRI                             []byte // DataHead head protection (conn.go)
}

func deriveKeys(isk, secretI, secretR, transcript []byte) (*sessionKeys, error) {
	ikm := make([]byte, 0, len(isk)+len(secretI)+len(secretR))
	ikm = append(append(append(ikm, isk...), secretI...), secretR...)
	defer clear(ikm)
	// HKDF-Expand's output is prefix-stable: the head protection keys
	// follow the first four keys without changing them.
	all, err := hkdf.Key(sha256.New, ikm, transcript, infoKeys, 6*32)
	if err != nil {
		return nil, fmt.Errorf("secure: hkdf: %w", err)
	}
	return &sessionKeys{
		all:                  all,
		confirmI:             all[0:32],
		confirmR:             all[32:64],
		initiatorToResponder: all[64:96],
		responderToInitiator: all[96:128],
		headIR:               all[128:160],
		headRI:               all[160:192],
	}, nil
}

func (k *sessionKeys) wipe() { clear(k.all) }
