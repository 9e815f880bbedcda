package store

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	want := Registration{
		Session:  "alpha",
		Verifier: verifierOf(7),
		Created:  fromUnixNanos(t0.UnixNano()),
		Expires:  fromUnixNanos(t0.Add(time.Hour).UnixNano()),
	}
	buf := encodeRecord(want)
	if len(buf) != recordLen || buf[0] != recordVersion {
		t.Fatalf("encoded record = %x, want %d bytes starting with version %d", buf, recordLen, recordVersion)
	}
	got, err := decodeRecord("alpha", buf)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("decode(encode(r)) = %+v, want %+v", got, want)
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	good := encodeRecord(Registration{Verifier: verifierOf(1), Created: t0, Expires: t0})
	badVersion := bytes.Clone(good)
	badVersion[0] = 3
	for name, buf := range map[string][]byte{
		"nil":         nil,
		"version 0":   make([]byte, recordLen),
		"version 3":   badVersion,
		"one short":   good[:recordLen-1],
		"one long":    append(bytes.Clone(good), 0),
		"only header": good[:1],
	} {
		if _, err := decodeRecord("s", buf); !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("%s: err = %v, want ErrCorruptRecord", name, err)
		}
	}
}

// A version-1 record (an argon2id credential) is not taken for a verifier.
func TestV1RecordIsNotAVerifier(t *testing.T) {
	v1 := encodeRecord(Registration{Verifier: verifierOf(1), Created: t0, Expires: t0.Add(time.Hour)})
	v1[0] = 1
	if _, err := decodeRecord("s", v1); !errors.Is(err, ErrV1Record) || errors.Is(err, ErrCorruptRecord) {
		t.Fatalf("version-1 record: err = %v, want ErrV1Record (and not ErrCorruptRecord)", err)
	}
	if _, err := decodeRecord("s", v1[:recordLen-1]); !errors.Is(err, ErrCorruptRecord) {
		t.Fatalf("short version-1 record: err = %v, want ErrCorruptRecord", err)
	}
	if v1Expired(v1, t0.Add(time.Hour-1)) || !v1Expired(v1, t0.Add(time.Hour)) {
		t.Fatal("v1Expired does not read the version-1 expiry")
	}
}

// Any bytes on disk either decode to a record that re-encodes to the same
// bytes, or are rejected; decoding never panics.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(Registration{Verifier: verifierOf(1), Created: t0, Expires: t0.Add(time.Hour)}))
	f.Add([]byte{})
	f.Add([]byte{recordVersion})
	f.Fuzz(func(t *testing.T, buf []byte) {
		reg, err := decodeRecord("s", buf)
		if err != nil {
			return
		}
		if again := encodeRecord(reg); !bytes.Equal(again, buf) {
			t.Fatalf("encode(decode(%x)) = %x", buf, again)
		}
	})
}
