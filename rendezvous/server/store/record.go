package store

// On-disk layout of p2pcat.db (bbolt):
//
//	bucket "meta"
//	    key "server-id"  value: 16 random bytes, written once on first open
//	bucket "sessions"
//	    key: session name (1..64 bytes)
//	    value: a registration record, 49 bytes, version 2:
//	        [0]      version, 2
//	        [1:33]   verifier (the Ed25519 public key of the session key's signing key)
//	        [33:41]  created, unix nanoseconds, big-endian int64
//	        [41:49]  expires, unix nanoseconds, big-endian int64
//
// A record with another length or version is rejected by decodeRecord; it is
// never guessed at. Later versions must use a new version byte.
//
// Version 1 had the same layout with an argon2id credential of the
// password in [1:33]. Protocol version 2 has no use for it (it sends
// nothing password-derived to the server), so a version-1 record is
// skipped like a corrupt one, reported as ErrV1Record (its session must be
// registered again, with a session key), and deleted by Purge once its
// expiry has passed.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

const (
	recordVersion   = 2
	recordVersionV1 = 1
	recordLen       = 1 + 32 + 8 + 8

	// MaxSessionLen is the longest session name the store accepts, in bytes.
	MaxSessionLen = 64
)

var (
	metaBucket     = []byte("meta")
	sessionsBucket = []byte("sessions")
	serverIDKey    = []byte("server-id")
)

var (
	// ErrCorruptRecord is wrapped by the errors that SkippedRecords reports
	// for records that do not decode.
	ErrCorruptRecord = errors.New("corrupt registration record")
	// ErrV1Record is wrapped by the errors that SkippedRecords reports for
	// registrations made by p2pcat protocol version 1 (with a password):
	// they are meaningless now, and their sessions must be registered
	// again with a session key.
	ErrV1Record = errors.New("registration from p2pcat protocol version 1 (a password credential): register the session again, with a session key")
)

// The instants a record can hold: time.Time.UnixNano is only defined within
// these bounds (years 1677 to 2262).
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

func encodeRecord(r Registration) []byte {
	buf := make([]byte, recordLen)
	buf[0] = recordVersion
	copy(buf[1:33], r.Verifier[:])
	binary.BigEndian.PutUint64(buf[33:41], uint64(r.Created.UnixNano()))
	binary.BigEndian.PutUint64(buf[41:49], uint64(r.Expires.UnixNano()))
	return buf
}

// decodeRecord parses a record stored under the key session. It does not
// retain buf, which bbolt only lends for the duration of a transaction.
func decodeRecord(session string, buf []byte) (Registration, error) {
	if len(buf) == 0 {
		return Registration{}, fmt.Errorf("%w: empty", ErrCorruptRecord)
	}
	if buf[0] == recordVersionV1 && len(buf) == recordLen {
		return Registration{}, ErrV1Record
	}
	if buf[0] != recordVersion {
		return Registration{}, fmt.Errorf("%w: unknown version %d", ErrCorruptRecord, buf[0])
	}
	if len(buf) != recordLen {
		return Registration{}, fmt.Errorf("%w: %d bytes, want %d", ErrCorruptRecord, len(buf), recordLen)
	}
	r := Registration{
		Session: session,
		Created: fromUnixNanos(int64(binary.BigEndian.Uint64(buf[33:41]))),
		Expires: fromUnixNanos(int64(binary.BigEndian.Uint64(buf[41:49]))),
	}
	copy(r.Verifier[:], buf[1:33])
	return r, nil
}

// v1Expired reports whether buf is a version-1 record that expired at or
// before now: garbage that Purge may delete.
func v1Expired(buf []byte, now time.Time) bool {
	if len(buf) != recordLen || buf[0] != recordVersionV1 {
		return false
	}
	return !now.Before(fromUnixNanos(int64(binary.BigEndian.Uint64(buf[41:49]))))
}

// decodeEntry decodes one key/value pair of the sessions bucket; a key that
// is not a valid session name makes the entry as corrupt as a bad value. The
// error names the session with %q, so stored bytes cannot put control
// characters into a log line.
func decodeEntry(key, value []byte) (Registration, error) {
	session := string(key)
	if err := checkSession(session); err != nil {
		return Registration{}, fmt.Errorf("session %q: %w: %v", session, ErrCorruptRecord, err)
	}
	reg, err := decodeRecord(session, value)
	if err != nil {
		return Registration{}, fmt.Errorf("session %q: %w", session, err)
	}
	return reg, nil
}

// fromUnixNanos is the one way the store turns stored instants into times,
// so a registration compares equal (==) whether it came from Register, from
// the cache or from disk after a restart.
func fromUnixNanos(n int64) time.Time {
	return time.Unix(0, n).UTC()
}

// storable reports whether t survives a round trip through UnixNano.
func storable(t time.Time) bool {
	return !t.Before(minTime) && !t.After(maxTime)
}

func checkSession(session string) error {
	if session == "" {
		return errors.New("empty session name")
	}
	if len(session) > MaxSessionLen {
		return fmt.Errorf("session name is %d bytes, longer than %d", len(session), MaxSessionLen)
	}
	return nil
}
