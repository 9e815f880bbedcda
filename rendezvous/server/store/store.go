// Package store keeps the rendezvous server's session registrations in an
// embedded bbolt database, so a restart of p2pcat serve keeps them.
//
// Every write is one bbolt Update transaction, so a crash never leaves a
// half-written registration. Lookup, on the server's hot path, reads only an
// in-memory copy of the registrations that is loaded at Open and updated after
// each committed write; it never touches disk.
//
// Imports: only bbolt and the standard library; it is imported only by
// rendezvous/server.
package store

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// Registration is one reserved session.
type Registration struct {
	Session  string
	Verifier [32]byte  // the session key's public verifier (rendezvous/sessionkey.go)
	Created  time.Time // in UTC
	Expires  time.Time // in UTC; the registration is live while now < Expires
}

var (
	// ErrTaken means the session is registered with another verifier and
	// has not expired.
	ErrTaken = errors.New("session taken")
	// ErrNotFound means there is no live registration for the session.
	ErrNotFound = errors.New("session not registered")
	// ErrInUse means another process holds the database's file lock.
	ErrInUse = errors.New("in use by another p2pcat serve")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store closed")
)

// FileName is the database file Open creates inside the data directory.
const FileName = "p2pcat.db"

// lockTimeout bounds how long Open waits for the file lock: a second server on
// the same directory should fail at once, not hang.
const lockTimeout = time.Second

// Store is the registration database. It is safe for concurrent use.
type Store struct {
	db       *bbolt.DB
	serverID [16]byte
	skipped  []error // set by Open, read-only afterwards

	// writeMu serializes writers (and Close) so that the cache is updated in
	// the same order as the transactions commit. It is held across the disk
	// write; cacheMu is held only for the map update, so Lookups do not wait
	// for fsync.
	writeMu sync.Mutex
	closed  bool // guarded by writeMu

	cacheMu sync.RWMutex
	cache   map[string]Registration // nil after Close
}

// Open opens DIR/p2pcat.db, creating the directory (mode 0700) and the file
// (mode 0600) if needed. If another process holds the database it fails
// within about a second with an error wrapping ErrInUse.
//
// Records that cannot be decoded are skipped, not fatal: they are left on
// disk untouched, are invisible to Lookup and Count, are overwritten by the
// next Register of that session, and are listed by SkippedRecords. So are
// the registrations of protocol version 1 (ErrV1Record), which Purge
// deletes once expired.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("data directory %s is %w", dir, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	s := &Store{db: db, cache: make(map[string]Registration)}
	if err := db.Update(s.loadLocked); err != nil {
		_ = db.Close() // the load error is the one worth reporting
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	return s, nil
}

// loadLocked creates the buckets and the server id on first open and fills
// the cache. It runs in Open's transaction, before s is shared.
func (s *Store) loadLocked(tx *bbolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(metaBucket)
	if err != nil {
		return err
	}
	switch id := meta.Get(serverIDKey); {
	case id == nil:
		if _, err := rand.Read(s.serverID[:]); err != nil {
			return fmt.Errorf("generating server id: %w", err)
		}
		if err := meta.Put(serverIDKey, s.serverID[:]); err != nil {
			return err
		}
	case len(id) == len(s.serverID):
		copy(s.serverID[:], id)
	default:
		// Fatal rather than regenerated: a new id would make this another
		// server to clients (their signatures cover the id), and the
		// operator should know that the database is damaged.
		return fmt.Errorf("stored server id is %d bytes, want %d", len(id), len(s.serverID))
	}

	sessions, err := tx.CreateBucketIfNotExists(sessionsBucket)
	if err != nil {
		return err
	}
	return sessions.ForEach(func(k, v []byte) error {
		reg, err := decodeEntry(k, v)
		if err != nil {
			s.skipped = append(s.skipped, err)
			return nil
		}
		s.cache[reg.Session] = reg
		return nil
	})
}

// SkippedRecords lists the records Open found but could not use, one error
// per record, naming the session with %q so stored bytes cannot inject
// control characters into a log: wrapping ErrV1Record for the registrations
// of protocol version 1, ErrCorruptRecord for the rest. Empty when all is
// well.
func (s *Store) SkippedRecords() []error {
	return append([]error(nil), s.skipped...)
}

// Close waits for in-flight writes, then closes the database and releases its
// file lock. Calls after the first return nil.
func (s *Store) Close() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cacheMu.Lock()
	s.cache = nil
	s.cacheMu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing registration database: %w", err)
	}
	return nil
}

// ServerID returns the random id created on the database's first open. It
// survives restarts: clients' signatures cover it, so that a signature made
// for one server is worthless at another.
func (s *Store) ServerID() [16]byte {
	return s.serverID
}

// Register reserves session for the holders of verifier's key until
// now+ttl and returns the stored registration. A live registration with the
// same verifier is refreshed: its Expires becomes now+ttl and its Created
// is kept. A live registration with another verifier makes Register fail
// with ErrTaken. Expired (and undecodable, and version-1) records count as
// absent and are overwritten. Checking that the registrant holds the key
// is the caller's business.
func (s *Store) Register(session string, verifier [32]byte, ttl time.Duration, now time.Time) (Registration, error) {
	if err := checkSession(session); err != nil {
		return Registration{}, err
	}
	if ttl <= 0 {
		return Registration{}, fmt.Errorf("registration ttl %v is not positive", ttl)
	}
	expires := now.Add(ttl)
	if !storable(now) || !storable(expires) {
		return Registration{}, fmt.Errorf("registration time %v + %v is out of range", now, ttl)
	}
	reg := Registration{
		Session:  session,
		Verifier: verifier,
		Created:  fromUnixNanos(now.UnixNano()),
		Expires:  fromUnixNanos(expires.UnixNano()),
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return Registration{}, ErrClosed
	}
	// The check reads the database, not the cache, inside the write
	// transaction: the database is the authority (it also holds records the
	// cache skipped as undecodable).
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(sessionsBucket)
		key := []byte(session)
		if v := b.Get(key); v != nil {
			old, err := decodeRecord(session, v)
			if err == nil && now.Before(old.Expires) {
				if !sameVerifier(old.Verifier, verifier) {
					return ErrTaken
				}
				reg.Created = old.Created
			}
		}
		return b.Put(key, encodeRecord(reg))
	})
	if errors.Is(err, ErrTaken) {
		return Registration{}, ErrTaken
	}
	if err != nil {
		return Registration{}, fmt.Errorf("registering session %q: %w", session, err)
	}
	s.cacheMu.Lock()
	s.cache[session] = reg
	s.cacheMu.Unlock()
	return reg, nil
}

// sameVerifier compares in constant time. A verifier is a public key, not a
// secret, but nothing is lost by not telling a caller through timing how
// much of a stored one it guessed.
func sameVerifier(a, b [32]byte) bool {
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// Lookup returns the live registration of session, or ErrNotFound if there is
// none or it expired at or before now. It reads only memory.
func (s *Store) Lookup(session string, now time.Time) (Registration, error) {
	if err := checkSession(session); err != nil {
		return Registration{}, err
	}
	s.cacheMu.RLock()
	reg, ok := s.cache[session]
	closed := s.cache == nil
	s.cacheMu.RUnlock()
	switch {
	case closed:
		return Registration{}, ErrClosed
	case !ok || !now.Before(reg.Expires):
		return Registration{}, ErrNotFound
	}
	return reg, nil
}

// Purge deletes the registrations that expired at or before now and returns
// how many it deleted, version-1 registrations included. Undecodable
// records are left alone (see Open).
func (s *Store) Purge(now time.Time) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	var expired []string
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(sessionsBucket)
		// Collect first: deleting while a bbolt cursor walks the bucket can
		// skip keys.
		err := b.ForEach(func(k, v []byte) error {
			reg, err := decodeEntry(k, v)
			switch {
			case err == nil && !now.Before(reg.Expires):
				expired = append(expired, reg.Session)
			case errors.Is(err, ErrV1Record) && v1Expired(v, now):
				expired = append(expired, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, session := range expired {
			if err := b.Delete([]byte(session)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("purging expired sessions: %w", err)
	}
	s.cacheMu.Lock()
	for _, session := range expired {
		delete(s.cache, session)
	}
	s.cacheMu.Unlock()
	return len(expired), nil
}

// Count returns the number of stored registrations, expired ones included
// until Purge removes them (undecodable records are not counted).
func (s *Store) Count() (int, error) {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	if s.cache == nil {
		return 0, ErrClosed
	}
	return len(s.cache), nil
}
