package secure

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/p2pcat/p2pcat/pipe/cpace"
)

func TestWrongPassword(t *testing.T) {
	_, li, lr := newMemPair(4)
	ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, "correct horse battery stapler"))
	if !errors.Is(ei.err, ErrAuth) || !errors.Is(er.err, ErrAuth) {
		t.Fatalf("initiator %v, responder %v; want ErrAuth on both", ei.err, er.err)
	}
	for _, err := range []error{ei.err, er.err} {
		if strings.Contains(err.Error(), testPassword) {
			t.Errorf("error %q contains the password", err)
		}
	}
}

// Both sides must agree on the names and session bound into CPace's CI.
func TestMismatchedNamesFail(t *testing.T) {
	for name, change := range map[string]func(p *Params){
		"session":   func(p *Params) { p.Session = "other-job" },
		"peer name": func(p *Params) { p.PeerName = "mallory" },
	} {
		t.Run(name, func(t *testing.T) {
			_, li, lr := newMemPair(5)
			pr := testParams(Responder, testPassword)
			change(&pr)
			ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), pr)
			if !errors.Is(ei.err, ErrAuth) || !errors.Is(er.err, ErrAuth) {
				t.Fatalf("initiator %v, responder %v; want ErrAuth on both", ei.err, er.err)
			}
		})
	}
}

// mitm relays between the two sides and tampers with one message. Like a
// real attacker it keeps the refs consistent: when a side names a message
// the way it received it, the relay renames it to the way it was sent, so
// the tampering is noticed by the cryptography, not by the plumbing.
type mitm struct {
	mu       sync.Mutex
	original map[ref]ref // ref(as forwarded) -> ref(as sent)
	tamper   func(m *mitm, b []byte) []byte
	typ      byte
	done     bool
	key      *rsa.PrivateKey // the attacker's own RSA key
	pkI, pkR *rsa.PublicKey  // learnt from the relayed Hello and Reply
}

func (m *mitm) tap(_ *memLink, b []byte) [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	sent := bytes.Clone(b)
	fwd := b
	var refFields [][2]int
	switch fwd[0] {
	case typeReply, typeFinish, typeFinished:
		refFields = [][2]int{{17, 33}}
	case typeAuthFailed:
		refFields = [][2]int{{17, 33}, {33, 49}}
	}
	for _, f := range refFields {
		if len(fwd) >= f[1] {
			if orig, ok := m.original[ref(fwd[f[0]:f[1]])]; ok {
				copy(fwd[f[0]:f[1]], orig[:])
			}
		}
	}
	if h, err := parseHello(fwd); err == nil && m.pkI == nil {
		m.pkI, _ = parsePublicKey(h.pk, 1024)
	}
	if r, err := parseReply(fwd); err == nil && m.pkR == nil {
		m.pkR, _ = parsePublicKey(r.pk, 1024)
	}
	if !m.done && fwd[0] == m.typ {
		m.done = true
		fwd = m.tamper(m, fwd)
	}
	m.original[refOf(fwd)] = refOf(sent)
	return [][]byte{fwd}
}

// parsed returns a function that takes a parser's results and reports its
// error. It may run on the handshake's goroutine, so it uses t.Error.
func parsed[T any](t *testing.T) func(T, error) T {
	return func(m T, err error) T {
		if err != nil {
			t.Error(err)
		}
		return m
	}
}

func otherElement(t *testing.T) [32]byte {
	_, y, err := cpace.Start([]byte("attacker"), nil, nil, nil, rand.Reader)
	if err != nil {
		t.Error(err)
		return [32]byte{}
	}
	return [32]byte(y)
}

func TestManInTheMiddle(t *testing.T) {
	attackerKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	encryptTo := func(t *testing.T, pk *rsa.PublicKey, label []byte) []byte {
		secret := make([]byte, 32)
		rand.Read(secret)
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk, secret, label)
		if err != nil {
			t.Error(err)
		}
		return ct
	}
	cases := []struct {
		name string
		typ  byte
		// tamper returns the forwarded message.
		tamper func(t *testing.T, m *mitm, b []byte) []byte
		// responderEstablished: the responder completes before the
		// tampering shows, and must then fail in Recv.
		responderEstablished bool
	}{
		{"swap initiator key", typeHello, func(t *testing.T, m *mitm, b []byte) []byte {
			h := parsed[*hello](t)(parseHello(b))
			h.pk = m.key.N.Bytes()
			return h.marshal()
		}, false},
		{"swap Ya", typeHello, func(t *testing.T, m *mitm, b []byte) []byte {
			h := parsed[*hello](t)(parseHello(b))
			h.ya = otherElement(t)
			return h.marshal()
		}, false},
		{"swap responder key", typeReply, func(t *testing.T, m *mitm, b []byte) []byte {
			r := parsed[*reply](t)(parseReply(b))
			r.pk = m.key.N.Bytes()
			return r.marshal()
		}, false},
		{"swap Yb", typeReply, func(t *testing.T, m *mitm, b []byte) []byte {
			r := parsed[*reply](t)(parseReply(b))
			r.yb = otherElement(t)
			return r.marshal()
		}, false},
		{"swap responder ciphertext", typeReply, func(t *testing.T, m *mitm, b []byte) []byte {
			r := parsed[*reply](t)(parseReply(b))
			r.ct = encryptTo(t, m.pkI, labelSecretR)
			return r.marshal()
		}, false},
		{"swap initiator ciphertext", typeFinish, func(t *testing.T, m *mitm, b []byte) []byte {
			f := parsed[*finish](t)(parseFinish(b))
			f.ct = encryptTo(t, m.pkR, labelSecretI)
			return f.marshal()
		}, false},
		{"corrupt initiator ciphertext", typeFinish, func(t *testing.T, m *mitm, b []byte) []byte {
			f := parsed[*finish](t)(parseFinish(b))
			f.ct[10] ^= 1
			return f.marshal()
		}, false},
		{"flip initiator confirmation", typeFinish, func(t *testing.T, m *mitm, b []byte) []byte {
			b[len(b)-1] ^= 1
			return b
		}, false},
		{"flip responder confirmation", typeFinished, func(t *testing.T, m *mitm, b []byte) []byte {
			b[len(b)-1] ^= 1
			return b
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, li, lr := newMemPair(6)
			m := &mitm{original: map[ref]ref{}, typ: tc.typ, key: attackerKey,
				tamper: func(m *mitm, b []byte) []byte { return tc.tamper(t, m, b) }}
			n.setTap(m.tap)
			ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
			if !errors.Is(ei.err, ErrAuth) {
				t.Errorf("initiator: %v, want ErrAuth", ei.err)
			}
			if tc.responderEstablished {
				if er.err != nil {
					t.Fatalf("responder: %v", er.err)
				}
				if err := er.waitRecvErr(t); !errors.Is(err, ErrAuth) {
					t.Errorf("responder Recv: %v, want ErrAuth", err)
				}
			} else if !errors.Is(er.err, ErrAuth) {
				t.Errorf("responder: %v, want ErrAuth", er.err)
			}
			if !m.done {
				t.Error("the tampered message was never sent")
			}
		})
	}
}

// TestCaptureHasNoSecrets records every datagram of a session and checks
// that neither the password nor the payload appears in them.
func TestCaptureHasNoSecrets(t *testing.T) {
	n, li, lr := newMemPair(12)
	n.startCapture()
	ei, er := handshakePair(t, li, lr, testParams(Initiator, testPassword), testParams(Responder, testPassword))
	if ei.err != nil || er.err != nil {
		t.Fatalf("handshake: initiator %v, responder %v", ei.err, er.err)
	}
	payload := []byte("attack at dawn, bring snacks")
	if err := ei.conn.Send(payload); err != nil {
		t.Fatal(err)
	}
	if got := er.next(t); !bytes.Equal(got, payload) {
		t.Fatalf("got %q", got)
	}
	captured := n.capturedPackets()
	if len(captured) < 5 {
		t.Fatalf("captured only %d datagrams", len(captured))
	}
	for _, secret := range [][]byte{[]byte(testPassword), payload, payload[:8]} {
		for i, p := range captured {
			if bytes.Contains(p, secret) {
				t.Errorf("datagram %d contains %q", i, secret)
			}
		}
	}
}
