package secure

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz seed corpora from sampleMessages")

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	b[0] |= 0x80 // a minimal modulus encoding has no leading zero
	return b
}

// sampleMessages returns one message of each type with 4096-bit sized
// keys and ciphertexts, the largest the handshake sends.
func sampleMessages() (*hello, *reply, *finish, *finished, *authFailed) {
	h := &hello{id: testID, pk: randomBytes(512)}
	rand.Read(h.ya[:])
	r := &reply{id: testID, ref: refOf([]byte("hello")), pk: randomBytes(512), ct: randomBytes(512)}
	rand.Read(r.yb[:])
	rand.Read(r.tag[:])
	f := &finish{id: testID, ref: refOf([]byte("reply")), ct: randomBytes(512)}
	rand.Read(f.tag[:])
	fd := &finished{id: testID, ref: refOf([]byte("finish"))}
	rand.Read(fd.tag[:])
	af := &authFailed{id: testID, hello: refOf([]byte("hello")), failed: refOf([]byte("finish"))}
	return h, r, f, fd, af
}

func TestMessageRoundTrip(t *testing.T) {
	h, r, f, fd, af := sampleMessages()
	check := func(name string, in any, wire []byte, parse func([]byte) (any, error), remarshal func(any) []byte) {
		t.Helper()
		if len(wire) > maxDatagram {
			t.Errorf("%s: %d bytes, over %d", name, len(wire), maxDatagram)
		}
		out, err := parse(wire)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(in, out) {
			t.Errorf("%s: round trip changed it:\n in %+v\nout %+v", name, in, out)
		}
		if !bytes.Equal(remarshal(out), wire) {
			t.Errorf("%s: re-encoding differs", name)
		}
		// Every truncation, an extra byte, and another type byte are malformed.
		for i := range len(wire) {
			if _, err := parse(wire[:i]); err == nil {
				t.Errorf("%s: accepted a truncation to %d bytes", name, i)
			}
		}
		if _, err := parse(append(bytes.Clone(wire), 0)); err == nil {
			t.Errorf("%s: accepted a trailing byte", name)
		}
		other := bytes.Clone(wire)
		other[0] ^= 0x0f
		if _, err := parse(other); err == nil {
			t.Errorf("%s: accepted type byte %#x", name, other[0])
		}
	}
	check("Hello", h, h.marshal(), func(b []byte) (any, error) { return parseHello(b) }, func(m any) []byte { return m.(*hello).marshal() })
	check("Reply", r, r.marshal(), func(b []byte) (any, error) { return parseReply(b) }, func(m any) []byte { return m.(*reply).marshal() })
	check("Finish", f, f.marshal(), func(b []byte) (any, error) { return parseFinish(b) }, func(m any) []byte { return m.(*finish).marshal() })
	check("Finished", fd, fd.marshal(), func(b []byte) (any, error) { return parseFinished(b) }, func(m any) []byte { return m.(*finished).marshal() })
	check("AuthFailed", af, af.marshal(), func(b []byte) (any, error) { return parseAuthFailed(b) }, func(m any) []byte { return m.(*authFailed).marshal() })

	if got, want := len(r.marshal()), 1+16+16+2+512+32+2+512+32; got != want {
		t.Errorf("Reply with 4096-bit key is %d bytes, want %d", got, want)
	}
	if !bytes.Equal(r.marshal()[:len(r.marshal())-tagSize], r.marshalUntagged()) {
		t.Error("Reply's untagged encoding is not its prefix")
	}
	if !bytes.Equal(f.marshal()[:len(f.marshal())-tagSize], f.marshalUntagged()) {
		t.Error("Finish's untagged encoding is not its prefix")
	}
}

func TestMessageFieldLimits(t *testing.T) {
	h, _, f, _, _ := sampleMessages()
	for name, pk := range map[string][]byte{"empty key": nil, "513-byte key": randomBytes(513)} {
		bad := *h
		bad.pk = pk
		if _, err := parseHello(bad.marshal()); err == nil {
			t.Errorf("Hello with %s accepted", name)
		}
	}
	bad := *f
	bad.ct = nil
	if _, err := parseFinish(bad.marshal()); err == nil {
		t.Error("Finish with empty ciphertext accepted")
	}
}

func TestParsePublicKey(t *testing.T) {
	key := mustKey(t)
	if _, err := parsePublicKey(key.N.Bytes(), 1024); err != nil {
		t.Fatalf("valid key: %v", err)
	}
	even := key.N.Bytes()
	even[len(even)-1] &^= 1
	for name, pk := range map[string][]byte{
		"too small":    key.N.Bytes(),
		"leading zero": append([]byte{0}, key.N.Bytes()...),
		"even":         even,
		"too large":    randomBytes(513),
	} {
		minBits := 1024
		if name == "too small" {
			minBits = 2048
		}
		if _, err := parsePublicKey(pk, minBits); err == nil {
			t.Errorf("%s modulus accepted", name)
		}
	}
}

// fuzzParser checks a decoder: it must not panic, and whatever it accepts
// must re-encode to the same bytes (one encoding per message).
func fuzzParser[M any](f *testing.F, parse func([]byte) (M, error), marshal func(M) []byte) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parse(b)
		if err != nil {
			return
		}
		if out := marshal(m); !bytes.Equal(out, b) {
			t.Fatalf("accepted %x but re-encodes as %x", b, out)
		}
	})
}

func FuzzParseHello(f *testing.F) {
	h, _, _, _, _ := sampleMessages()
	f.Add(h.marshal())
	fuzzParser(f, parseHello, (*hello).marshal)
}

func FuzzParseReply(f *testing.F) {
	_, r, _, _, _ := sampleMessages()
	f.Add(r.marshal())
	fuzzParser(f, parseReply, (*reply).marshal)
}

func FuzzParseFinish(f *testing.F) {
	_, _, fin, _, _ := sampleMessages()
	f.Add(fin.marshal())
	fuzzParser(f, parseFinish, (*finish).marshal)
}

func FuzzParseFinished(f *testing.F) {
	_, _, _, fd, _ := sampleMessages()
	f.Add(fd.marshal())
	fuzzParser(f, parseFinished, (*finished).marshal)
}

func FuzzParseAuthFailed(f *testing.F) {
	_, _, _, _, af := sampleMessages()
	f.Add(af.marshal())
	fuzzParser(f, parseAuthFailed, (*authFailed).marshal)
}

func FuzzParsePublicKey(f *testing.F) {
	f.Add(randomBytes(256))
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, pk []byte) {
		k, err := parsePublicKey(pk, 1024)
		if err != nil {
			return
		}
		if !bytes.Equal(k.N.Bytes(), pk) || k.N.Bit(0) != 1 || k.N.BitLen() < 1024 || k.N.BitLen() > MaxRSABits {
			t.Fatalf("accepted bad modulus %x", pk)
		}
	})
}

// TestWriteFuzzSeeds regenerates the seed corpora in testdata/fuzz when run
// with -update-fuzz-seeds; they hold one valid message per decoder (small
// and 4096-bit sized) plus a truncated one.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateFuzzSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz")
	}
	h, r, f, fd, af := sampleMessages()
	small := func(n int) []byte { return randomBytes(n) }
	hs := &hello{id: testID, pk: small(128), ya: h.ya}
	rs := &reply{id: testID, ref: r.ref, pk: small(128), yb: r.yb, ct: small(128), tag: r.tag}
	fs := &finish{id: testID, ref: f.ref, ct: small(128), tag: f.tag}
	data := append([]byte{typeData}, make([]byte, 8+gcmTagSize+4)...)
	corpora := map[string][][]byte{
		"FuzzParseHello":      {h.marshal(), hs.marshal(), hs.marshal()[:40]},
		"FuzzParseReply":      {r.marshal(), rs.marshal(), rs.marshal()[:60]},
		"FuzzParseFinish":     {f.marshal(), fs.marshal(), fs.marshal()[:40]},
		"FuzzParseFinished":   {fd.marshal(), fd.marshal()[:20]},
		"FuzzParseAuthFailed": {af.marshal(), af.marshal()[:30]},
		"FuzzParsePublicKey":  {small(128), append([]byte{0}, small(128)...)},
		"FuzzConnRecv":        {data, h.marshal(), fd.marshal(), af.marshal(), {typeKeepalive}},
	}
	for name, seeds := range corpora {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
