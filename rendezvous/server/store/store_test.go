package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// t0 is a fixed clock reading; tests pass times explicitly instead of sleeping.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)

func openTestStore(tb testing.TB, dir string) *Store {
	tb.Helper()
	s, err := Open(dir)
	if err != nil {
		tb.Fatalf("Open(%s): %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

func verifierOf(b byte) [32]byte {
	var c [32]byte
	for i := range c {
		c[i] = b
	}
	return c
}

func mustRegister(tb testing.TB, s *Store, session string, verifier [32]byte, ttl time.Duration, now time.Time) Registration {
	tb.Helper()
	reg, err := s.Register(session, verifier, ttl, now)
	if err != nil {
		tb.Fatalf("Register(%q): %v", session, err)
	}
	return reg
}

func mustCount(tb testing.TB, s *Store, want int) {
	tb.Helper()
	n, err := s.Count()
	if err != nil {
		tb.Fatalf("Count: %v", err)
	}
	if n != want {
		tb.Fatalf("Count = %d, want %d", n, want)
	}
}

func TestRegisterThenLookup(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	reg := mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	want := Registration{Session: "alpha", Verifier: verifierOf(1), Created: t0, Expires: t0.Add(time.Minute)}
	if reg != want {
		t.Fatalf("Register = %+v, want %+v", reg, want)
	}
	got, err := s.Lookup("alpha", t0.Add(time.Second))
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if got != want {
		t.Fatalf("Lookup = %+v, want %+v", got, want)
	}
	if _, err := s.Lookup("beta", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(unknown) err = %v, want ErrNotFound", err)
	}
	mustCount(t, s, 1)
}

func TestRefreshWithSameVerifierExtendsExpiry(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	reg := mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0.Add(30*time.Second))
	if !reg.Created.Equal(t0) {
		t.Errorf("Created = %v, want the first registration's %v", reg.Created, t0)
	}
	if want := t0.Add(90 * time.Second); !reg.Expires.Equal(want) {
		t.Errorf("Expires = %v, want %v", reg.Expires, want)
	}
	// Past the first expiry, the refreshed registration is still live.
	got, err := s.Lookup("alpha", t0.Add(70*time.Second))
	if err != nil {
		t.Fatalf("Lookup after first expiry: %v", err)
	}
	if got != reg {
		t.Fatalf("Lookup = %+v, want %+v", got, reg)
	}
	mustCount(t, s, 1)
}

func TestOtherVerifierIsTaken(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	first := mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	// Differs only in the last byte, so a prefix comparison would not do.
	other := verifierOf(1)
	other[31] = 2
	if _, err := s.Register("alpha", other, time.Hour, t0.Add(59*time.Second)); !errors.Is(err, ErrTaken) {
		t.Fatalf("Register with other verifier err = %v, want ErrTaken", err)
	}
	got, err := s.Lookup("alpha", t0.Add(59*time.Second))
	if err != nil || got != first {
		t.Fatalf("Lookup = %+v, %v; want the first registration %+v unchanged", got, err, first)
	}
}

func TestExpiredRegistrationCanBeTakenByOther(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	// Exactly at Expires the registration is no longer live.
	later := t0.Add(time.Minute)
	reg := mustRegister(t, s, "alpha", verifierOf(2), time.Minute, later)
	want := Registration{Session: "alpha", Verifier: verifierOf(2), Created: later, Expires: later.Add(time.Minute)}
	if reg != want {
		t.Fatalf("Register = %+v, want %+v", reg, want)
	}
	if _, err := s.Register("alpha", verifierOf(1), time.Minute, later); !errors.Is(err, ErrTaken) {
		t.Fatalf("old owner re-registering err = %v, want ErrTaken", err)
	}
	mustCount(t, s, 1)
}

func TestLookupAfterExpiryIsNotFound(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	reg := mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	if _, err := s.Lookup("alpha", reg.Expires.Add(-time.Nanosecond)); err != nil {
		t.Fatalf("Lookup 1ns before expiry: %v", err)
	}
	for _, now := range []time.Time{reg.Expires, reg.Expires.Add(time.Hour)} {
		if got, err := s.Lookup("alpha", now); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Lookup at %v = %+v, %v; want ErrNotFound", now, got, err)
		}
	}
	// Still stored until purged.
	mustCount(t, s, 1)
}

func TestPurgeRemovesOnlyExpired(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	mustRegister(t, s, "short1", verifierOf(1), time.Minute, t0)
	mustRegister(t, s, "short2", verifierOf(2), 2*time.Minute, t0)
	long := mustRegister(t, s, "long", verifierOf(3), time.Hour, t0)

	now := t0.Add(2 * time.Minute)
	n, err := s.Purge(now)
	if err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if n != 2 {
		t.Fatalf("Purge = %d, want 2", n)
	}
	mustCount(t, s, 1)
	if got, err := s.Lookup("long", now); err != nil || got != long {
		t.Fatalf("Lookup(long) = %+v, %v; want %+v", got, err, long)
	}
	if n, err := s.Purge(now); err != nil || n != 0 {
		t.Fatalf("second Purge = %d, %v; want 0", n, err)
	}

	// The deletion reached the disk, not only the cache.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	mustCount(t, s2, 1)
}

func TestReopenKeepsRegistrationsAndServerID(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ServerID()
	if id == ([16]byte{}) {
		t.Fatal("ServerID is all zeros")
	}
	alpha := mustRegister(t, s, "alpha", verifierOf(1), time.Hour, t0)
	beta := mustRegister(t, s, "beta", verifierOf(2), time.Hour, t0)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := openTestStore(t, dir)
	if got := s2.ServerID(); got != id {
		t.Fatalf("ServerID after reopen = %x, want %x", got, id)
	}
	for _, want := range []Registration{alpha, beta} {
		got, err := s2.Lookup(want.Session, t0)
		if err != nil || got != want {
			t.Fatalf("Lookup(%q) after reopen = %+v, %v; want %+v", want.Session, got, err, want)
		}
	}
	if _, err := s2.Register("alpha", verifierOf(9), time.Hour, t0); !errors.Is(err, ErrTaken) {
		t.Fatalf("Register with other verifier after reopen err = %v, want ErrTaken", err)
	}
	if len(s2.SkippedRecords()) != 0 {
		t.Fatalf("SkippedRecords = %v, want none", s2.SkippedRecords())
	}

	other := openTestStore(t, t.TempDir())
	if other.ServerID() == id {
		t.Fatal("two data directories got the same ServerID")
	}
}

func TestSecondOpenFailsWhileInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a directory in use succeeded")
	}
	if !errors.Is(err, ErrInUse) {
		t.Errorf("err = %v, want ErrInUse", err)
	}
	if want := "data directory " + dir + " is in use by another p2pcat serve"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close released the lock.
	openTestStore(t, dir)
}

func TestOpenCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "data")
	openTestStore(t, dir)
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		// The umask can only remove bits, so more than want is a failure.
		if perm := fi.Mode().Perm(); perm&^want != 0 {
			t.Errorf("%s mode = %v, want at most %v", path, perm, want)
		}
	}
}

func TestRejectsBadInput(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	long := strings.Repeat("x", MaxSessionLen+1)
	cases := []struct {
		name    string
		session string
		ttl     time.Duration
		now     time.Time
	}{
		{"empty session", "", time.Minute, t0},
		{"session too long", long, time.Minute, t0},
		{"zero ttl", "alpha", 0, t0},
		{"negative ttl", "alpha", -time.Minute, t0},
		{"zero time", "alpha", time.Minute, time.Time{}},
		{"expiry past 2262", "alpha", 250 * 365 * 24 * time.Hour, t0},
	}
	for _, c := range cases {
		if _, err := s.Register(c.session, verifierOf(1), c.ttl, c.now); err == nil {
			t.Errorf("%s: Register succeeded", c.name)
		}
	}
	mustCount(t, s, 0)
	for _, session := range []string{"", long} {
		if _, err := s.Lookup(session, t0); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%d-byte name) err = %v, want a validation error", len(session), err)
		}
	}
	mustRegister(t, s, strings.Repeat("x", MaxSessionLen), verifierOf(1), time.Minute, t0)
}

func TestClosedStore(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "alpha", verifierOf(1), time.Minute, t0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Lookup("alpha", t0); !errors.Is(err, ErrClosed) {
		t.Errorf("Lookup err = %v, want ErrClosed", err)
	}
	if _, err := s.Register("alpha", verifierOf(1), time.Minute, t0); !errors.Is(err, ErrClosed) {
		t.Errorf("Register err = %v, want ErrClosed", err)
	}
	if _, err := s.Purge(t0); !errors.Is(err, ErrClosed) {
		t.Errorf("Purge err = %v, want ErrClosed", err)
	}
	if _, err := s.Count(); !errors.Is(err, ErrClosed) {
		t.Errorf("Count err = %v, want ErrClosed", err)
	}
}

// Many goroutines race to register a few sessions with their own verifier
// while others look them up. Exactly one verifier must win each session, and
// no Lookup may ever see a verifier other than the winner's.
func TestConcurrentRegisterAndLookup(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	const (
		registrars = 8
		readers    = 4
		sessions   = 4
		rounds     = 12 // each Register is a synced write; keep the test quick
		lookups    = 2000
	)
	name := func(i int) string { return fmt.Sprintf("session-%d", i%sessions) }

	var (
		mu       sync.Mutex
		winners  = map[string]map[[32]byte]bool{} // verifiers that Register accepted
		observed = map[string]map[[32]byte]bool{} // verifiers that Lookup returned
		errs     []error
	)
	note := func(m map[string]map[[32]byte]bool, session string, verifier [32]byte) {
		mu.Lock()
		defer mu.Unlock()
		if m[session] == nil {
			m[session] = map[[32]byte]bool{}
		}
		m[session][verifier] = true
	}
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}

	var wg sync.WaitGroup
	for g := range registrars {
		verifier := verifierOf(byte(g + 1))
		wg.Go(func() {
			for i := range rounds {
				session := name(g + i)
				reg, err := s.Register(session, verifier, time.Hour, t0)
				switch {
				case errors.Is(err, ErrTaken):
				case err != nil:
					fail(err)
				case reg.Verifier != verifier:
					fail(fmt.Errorf("Register(%s) returned verifier %x, want %x", session, reg.Verifier[0], verifier[0]))
				default:
					note(winners, session, verifier)
				}
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			for i := range lookups {
				session := name(r + i)
				reg, err := s.Lookup(session, t0)
				switch {
				case errors.Is(err, ErrNotFound):
				case err != nil:
					fail(err)
				default:
					note(observed, session, reg.Verifier)
				}
			}
		})
	}
	wg.Wait()

	for _, err := range errs {
		t.Error(err)
	}
	for i := range sessions {
		session := name(i)
		if len(winners[session]) != 1 {
			t.Errorf("%s: %d verifiers won, want exactly 1", session, len(winners[session]))
		}
		for verifier := range observed[session] {
			if !winners[session][verifier] {
				t.Errorf("%s: Lookup saw verifier %x that never won", session, verifier[0])
			}
		}
	}
	mustCount(t, s, sessions)
}

// A record this version cannot decode must not stop the server from starting.
func TestCorruptRecordsAreSkippedAtOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	good := mustRegister(t, s, "good", verifierOf(1), time.Hour, t0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	badVersion := encodeRecord(Registration{Verifier: verifierOf(2), Created: t0, Expires: t0.Add(time.Hour)})
	badVersion[0] = 9
	longKey := strings.Repeat("k", MaxSessionLen+1)
	corrupt := map[string][]byte{
		"short":      {recordVersion, 2, 3},
		"long":       append(encodeRecord(good), 0),
		"badversion": badVersion,
		"empty":      {},
		longKey:      encodeRecord(good),
	}
	writeRaw(t, dir, corrupt)

	s2 := openTestStore(t, dir)
	skipped := s2.SkippedRecords()
	if len(skipped) != len(corrupt) {
		t.Fatalf("SkippedRecords = %v, want %d entries", skipped, len(corrupt))
	}
	for _, err := range skipped {
		if !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("skipped record error %v does not wrap ErrCorruptRecord", err)
		}
	}
	if got, err := s2.Lookup("good", t0); err != nil || got != good {
		t.Fatalf("Lookup(good) = %+v, %v; want %+v", got, err, good)
	}
	if _, err := s2.Lookup("short", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(short) err = %v, want ErrNotFound", err)
	}
	mustCount(t, s2, 1)
	// Purge leaves undecodable records alone.
	if n, err := s2.Purge(t0.Add(2 * time.Hour)); err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v; want 1 (only the good, expired record)", n, err)
	}

	// Registering over a corrupt record repairs it.
	repaired := mustRegister(t, s2, "short", verifierOf(3), time.Hour, t0)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s3 := openTestStore(t, dir)
	if n := len(s3.SkippedRecords()); n != len(corrupt)-1 {
		t.Fatalf("after repair, %d records skipped, want %d", n, len(corrupt)-1)
	}
	if got, err := s3.Lookup("short", t0); err != nil || got != repaired {
		t.Fatalf("Lookup(short) = %+v, %v; want %+v", got, err, repaired)
	}
}

// A database written by a version-1 server: its registrations (argon2id
// credentials of passwords) are skipped at open with a message that says
// to register again, do not make their sessions taken, and are purged once
// expired; the server id is kept.
func TestV1RecordsAreSkippedAtOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ServerID()
	current := mustRegister(t, s, "current", verifierOf(1), time.Hour, t0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	v1 := func(expires time.Time) []byte {
		b := encodeRecord(Registration{Verifier: verifierOf(7), Created: t0, Expires: expires})
		b[0] = 1
		return b
	}
	writeRaw(t, dir, map[string][]byte{
		"old-live":    v1(t0.Add(24 * time.Hour)),
		"old-expired": v1(t0.Add(time.Minute)),
	})

	s2 := openTestStore(t, dir)
	if s2.ServerID() != id {
		t.Fatal("the server id changed")
	}
	skipped := s2.SkippedRecords()
	if len(skipped) != 2 {
		t.Fatalf("SkippedRecords = %v, want the 2 version-1 records", skipped)
	}
	for _, err := range skipped {
		if !errors.Is(err, ErrV1Record) || errors.Is(err, ErrCorruptRecord) {
			t.Errorf("skipped %v: want ErrV1Record, not ErrCorruptRecord", err)
		}
		if !strings.Contains(err.Error(), "register the session again") {
			t.Errorf("skipped %q: does not say what to do", err)
		}
	}
	mustCount(t, s2, 1)
	if got, err := s2.Lookup("current", t0); err != nil || got != current {
		t.Fatalf("Lookup(current) = %+v, %v", got, err)
	}
	if _, err := s2.Lookup("old-live", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(old-live) err = %v, want ErrNotFound", err)
	}
	// A live version-1 record does not make its session taken.
	later := t0.Add(time.Second)
	reg := mustRegister(t, s2, "old-live", verifierOf(2), time.Hour, later)
	if !reg.Created.Equal(later) {
		t.Fatalf("re-registered: %+v, want a new registration (created %v), not a refresh of the version-1 one", reg, later)
	}
	// The expired one is purged (counted), the current one is not.
	if n, err := s2.Purge(t0.Add(2 * time.Minute)); err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v; want 1 (the expired version-1 record)", n, err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s3 := openTestStore(t, dir)
	if n := len(s3.SkippedRecords()); n != 0 {
		t.Fatalf("after re-registering and purging, %d records skipped: %v", n, s3.SkippedRecords())
	}
	mustCount(t, s3, 2)
}

func TestCorruptServerIDFailsOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(metaBucket).Put(serverIDKey, []byte("short"))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("Open with a 5-byte server id succeeded")
	} else if !strings.Contains(err.Error(), "server id") {
		t.Fatalf("err = %v, want it to mention the server id", err)
	}
}

func TestOpenRejectsNonDatabaseFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), bytes.Repeat([]byte("not bolt"), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("Open of a garbage file succeeded")
	}
}

// writeRaw puts values into the sessions bucket behind the store's back.
func writeRaw(tb testing.TB, dir string, records map[string][]byte) {
	tb.Helper()
	db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(sessionsBucket)
		for k, v := range records {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
}

func BenchmarkLookup(b *testing.B) {
	s := openTestStore(b, b.TempDir())
	for i := range 1000 {
		mustRegister(b, s, fmt.Sprintf("session-%d", i), verifierOf(byte(i)), time.Hour, t0)
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Lookup("session-500", t0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Lookup("nobody", t0); !errors.Is(err, ErrNotFound) {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Lookup("session-500", t0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// Each Register is one committed, fsynced bbolt transaction, so this measures
// the disk more than the code.
func BenchmarkRegister(b *testing.B) {
	b.Run("refresh", func(b *testing.B) {
		s := openTestStore(b, b.TempDir())
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Register("alpha", verifierOf(1), time.Hour, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		s := openTestStore(b, b.TempDir())
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if _, err := s.Register(fmt.Sprintf("session-%d", i), verifierOf(1), time.Hour, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
