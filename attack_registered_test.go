package main

// TestAttack, the registered flag on an unregistered session, and captures
// of a registered session (attacks 1 and 2 of TestAttack).

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/p2pcat/p2pcat/internal/attacker"
	"github.com/p2pcat/p2pcat/rendezvous"
	"github.com/p2pcat/p2pcat/rendezvous/rendezvoustest"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/wire"
)

// --- 1. the registered flag on an unregistered session ---

// attackRegisteredFlag: a malicious server answers the victim's Hello with
// a Challenge that says "registered" (server id and cookie of its choice).
// Version 1 answered with an Argon2id-keyed proof: an offline dictionary
// test for the attacker. Version 2 must send nothing more and exit 2.
func attackRegisteredFlag(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	const password = "tr0ub4dor&3"

	check := func(t *testing.T, srv *attacker.Server, known attacker.Known) {
		t.Helper()
		values := attacker.Derived([]byte(password), known)
		got := srv.Received()
		for _, d := range got {
			if v := attacker.Find(values, d.Data); v != nil {
				t.Errorf("BREAK: the victim sent %s (%x) in a %d-byte datagram", v.Label, v.Bytes, len(d.Data))
			}
		}
		cred := attacker.V1Credential([]byte(password), srv.ID, "default")
		t.Logf("the server received %d datagrams %v; none contains any of %d password-derived values (v1 credential %x…, v1 proofs under the attacker's server id and cookie, v2-style derivations)",
			len(got), wireTypes(got), len(values), cred[:6])
	}

	t.Run("registered, no session key", func(t *testing.T) {
		srv := startAttackServer(t, attacker.ClaimRegistered())
		victim := startP2pcat(t, strings.NewReader("secret\n"), peerEnv(srv.Addr.String(), password), "--name", "alice", "--find", "bob", "-vv")
		code := victim.wait(ctx)
		t.Logf("victim: exit %d: %s", code, victim.errorLine())
		if code != exitUsage || !strings.Contains(victim.Stderr(), "give its session key") {
			t.Errorf("exit %d, want %d with \"give its session key\":\n%s", code, exitUsage, victim.Stderr())
		}
		for _, d := range srv.Received() {
			if m, err := wire.Decode(d.Data); err != nil || m.Type() != wire.TypeHello {
				t.Errorf("BREAK: after the Challenge the victim sent a %d-byte datagram that is not a Hello: %x", len(d.Data), d.Data)
			}
		}
		check(t, srv, attacker.Known{ServerIDs: [][16]byte{srv.ID}, Cookies: [][]byte{srv.Cookie}, Sessions: []string{"default"}, Names: [][2]string{{"alice", "bob"}}})
		noPassword(t, password, "the victim's -vv log", []byte(victim.Stderr()))
	})

	t.Run("registered only in the Challenge to the Find", func(t *testing.T) {
		srv := startAttackServer(t, attacker.ClaimRegisteredLater())
		victim := startP2pcat(t, strings.NewReader("secret\n"), peerEnv(srv.Addr.String(), password), "--name", "alice", "--find", "bob", "-vv")
		code := victim.wait(ctx)
		t.Logf("victim: exit %d: %s", code, victim.errorLine())
		if code != exitUsage || !strings.Contains(victim.Stderr(), "give its session key") {
			t.Errorf("exit %d, want %d with \"give its session key\":\n%s", code, exitUsage, victim.Stderr())
		}
		for _, d := range srv.Received() {
			if f, ok := decodeAs[*wire.Find](d.Data); ok && f.Signature != ([64]byte{}) {
				t.Errorf("BREAK: a Find carries a signature without a session key: %x", f.Signature)
			}
		}
		check(t, srv, attacker.Known{ServerIDs: [][16]byte{srv.ID}, Cookies: [][]byte{srv.Cookie}, Sessions: []string{"default"}, Names: [][2]string{{"alice", "bob"}}})
	})

	t.Run("registered, the victim has a session key", func(t *testing.T) {
		key, keyFile := writeSessionKey(t)
		srv := startAttackServer(t, func(s *attacker.Server, d attacker.Datagram, m wire.Message) {
			switch m := m.(type) {
			case *wire.Hello:
				s.Send(d.From, s.Challenge(m.ReqID, true))
			case *wire.Find:
				s.Send(d.From, &wire.FindResp{ReqID: m.ReqID, Status: wire.FindWaiting, Observed: d.From})
			}
		})
		victim := startP2pcat(t, strings.NewReader("secret\n"), peerEnv(srv.Addr.String(), password), "--name", "alice", "--find", "bob", "-K", keyFile, "--timeout", "2s")
		code := victim.wait(ctx)
		t.Logf("victim: exit %d: %s", code, victim.errorLine())
		if code != exitNoPeer {
			t.Errorf("exit %d, want %d (nobody came)", code, exitNoPeer)
		}
		finds := 0
		for _, d := range srv.Received() {
			f, ok := decodeAs[*wire.Find](d.Data)
			if !ok {
				continue
			}
			finds++
			// The signature is the session key's, over what the attacker
			// chose: a function of the key alone, not of the password.
			if want := rendezvous.FindSignature(key, srv.ID, f.Cookie, f.Session, f.Name, f.Peer); f.Signature != want {
				t.Errorf("a Find's signature is not the session key's FindSignature: %x", f.Signature)
			}
		}
		if finds == 0 {
			t.Error("the victim sent no Find")
		}
		check(t, srv, attacker.Known{ServerIDs: [][16]byte{srv.ID}, Cookies: [][]byte{srv.Cookie}, Sessions: []string{"default"}, Names: [][2]string{{"alice", "bob"}},
			SessionKeyInputs: [][]byte{key.CPaceInput()}})
	})
}

func decodeAs[M wire.Message](b []byte) (M, bool) {
	var zero M
	m, err := wire.Decode(b)
	if err != nil {
		return zero, false
	}
	v, ok := m.(M)
	return v, ok
}

// --- 2. captures of a registered session ---

// attackRegisteredCapture: a passive observer of the client-server path
// (a tap in front of an honest server) captures `p2pcat register` and a
// registered session's finds, twice, with two passwords from a small
// dictionary, and then runs the dictionary attack: every value version 1
// would have sent (credential, proofs) and version 2-style derivations, for
// every word, against every captured byte. And the structural check: the
// two captures are the same once the fields that depend on cookies, request
// ids, time and the server's random draws are blanked; so the wire image
// does not depend on the password at all.
func attackRegisteredCapture(t *testing.T) {
	ctx := testCtx(t, 100*time.Second)
	dictionary := []string{"123456", "password", "letmein", "dragon", "sunshine", "hunter2", "correct-horse", "tr0ub4dor&3"}
	passwords := [2]string{"hunter2", "correct-horse"}

	// One server id for both runs, and no registration at the start of
	// either: each run's server opens a copy of the same fresh database.
	base := t.TempDir()
	srv0 := rendezvoustest.Start(t, server.Config{DataDir: base})
	serverID := srv0.ServerID()
	srv0.Stop()
	tap := startTap(t, srv0.Addr, nil)
	keyFile := filepath.Join(t.TempDir(), "club.key")
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	clientA, clientB := netip.MustParseAddrPort("127.0.0.1:"+portA), netip.MustParseAddrPort("127.0.0.1:"+portB)

	var runs [2][]attacker.Captured
	var logs [][]byte
	for i, password := range passwords {
		dir := t.TempDir()
		copyDir(t, base, dir)
		srv := rendezvoustest.Start(t, server.Config{DataDir: dir})
		if srv.ServerID() != serverID {
			t.Fatal("the copied database has another server id")
		}
		tap.SetServer(srv.Addr)
		env := peerEnv(tap.Addr.String(), password)
		reg := startP2pcat(t, nil, env, "register", "club", "-k", keyFile)
		if code := reg.wait(ctx); code != exitOK {
			t.Fatalf("register: exit %d\n%s", code, reg.Stderr())
		}
		alice := startP2pcat(t, strings.NewReader("from alice\n"), env, "--name", "alice", "--find", "bob", "--session", "club", "-K", keyFile, "--port", portA, "-vv")
		// bob comes second, so that the roles (and so the captures) are
		// the same in both runs.
		if !waitUntil(ctx, func() bool {
			for _, c := range tap.Captured() {
				if r, ok := decodeAs[*wire.FindResp](c.Data); ok && !c.ToServer && c.Client == clientA && r.Status == wire.FindWaiting {
					return true
				}
			}
			return false
		}) {
			t.Fatalf("alice never waited:\n%s", alice.Stderr())
		}
		bob := startP2pcat(t, strings.NewReader("from bob\n"), env, "--name", "bob", "--find", "alice", "--session", "club", "-K", keyFile, "--port", portB, "-vv")
		ca, cb := alice.wait(ctx), bob.wait(ctx)
		if ca != exitOK || cb != exitOK || alice.stdout.String() != "from bob\n" || bob.stdout.String() != "from alice\n" {
			t.Fatalf("run %d: exit %d %d, got %q %q\nalice:\n%s\nbob:\n%s", i+1, ca, cb, alice.stdout.String(), bob.stdout.String(), alice.Stderr(), bob.Stderr())
		}
		srv.Stop()
		runs[i] = tap.Take()
		logs = append(logs, stderrBytes(alice, bob, reg)...)
	}
	keyText, _ := os.ReadFile(keyFile)
	key, err := rendezvous.ParseSessionKey(string(keyText))
	if err != nil {
		t.Fatal(err)
	}

	// What the attacker reads in its captures.
	known := attacker.Known{Sessions: []string{"club"}, SessionKeyInputs: [][]byte{key.CPaceInput()}}
	seen := map[string]bool{}
	var all [][]byte
	types := map[string]int{}
	for _, run := range runs {
		for _, c := range run {
			all = append(all, c.Data)
			m, err := wire.Decode(c.Data)
			if err != nil {
				types[fmt.Sprintf("0x%02x", c.Data[0])]++
				continue
			}
			types[m.Type().String()]++
			switch m := m.(type) {
			case *wire.Challenge:
				if !seen["sid"+string(m.ServerID[:])] {
					seen["sid"+string(m.ServerID[:])] = true
					known.ServerIDs = append(known.ServerIDs, m.ServerID)
				}
				if !seen["c"+string(m.Cookie)] {
					seen["c"+string(m.Cookie)] = true
					known.Cookies = append(known.Cookies, m.Cookie)
				}
			case *wire.Find:
				if k := "n" + m.Name + "/" + m.Peer; !seen[k] {
					seen[k] = true
					known.Names = append(known.Names, [2]string{m.Name, m.Peer})
				}
			case *wire.FindResp:
				if m.Status == wire.FindMatched && !seen["p"+string(m.PairingID[:])] {
					seen["p"+string(m.PairingID[:])] = true
					known.PairingIDs = append(known.PairingIDs, m.PairingID)
				}
			}
		}
	}
	if types["register"] == 0 || types["find"] == 0 {
		t.Fatalf("the tap captured no register or find: %v", types)
	}
	start := time.Now()
	checked := 0
	for _, word := range dictionary {
		values := attacker.Derived([]byte(word), known)
		checked += len(values)
		for _, d := range all {
			if v := attacker.Find(values, d); v != nil {
				t.Errorf("BREAK: dictionary word %q: %s occurs in a captured %d-byte datagram", word, v.Label, len(d))
			}
		}
	}
	// The attack works: a version 1 client's credential is found, for the
	// right word only.
	v1 := attacker.V1Credential([]byte(passwords[0]), serverID, "club")
	for _, word := range dictionary[:6] {
		if v := attacker.Find(attacker.Derived([]byte(word), attacker.Known{ServerIDs: [][16]byte{serverID}, Sessions: []string{"club"}}), append([]byte("v1 register"), v1[:]...)); (v != nil) != (word == passwords[0]) {
			t.Errorf("the dictionary attack does not work: word %q, found %v", word, v)
		}
	}
	t.Logf("dictionary attack: %d words × their derivations = %d values (%d server id, %d cookies, %d name pairs, %d pairing ids), against %d captured datagrams %v: no match (%v)",
		len(dictionary), checked, len(known.ServerIDs), len(known.Cookies), len(known.Names), len(known.PairingIDs), len(all), types, time.Since(start).Round(time.Millisecond))
	noPassword(t, passwords[0], "the logs", logs...)
	noPassword(t, passwords[1], "the logs", logs...)

	// The structural check.
	names := map[netip.AddrPort]string{clientA: "alice", clientB: "bob"}
	var images [2]map[string]bool
	for i, run := range runs {
		images[i] = map[string]bool{}
		for _, c := range run {
			s, err := normalizeRendezvous(c, key, serverID, names)
			if err != nil {
				t.Errorf("run %d: %v", i+1, err)
				continue
			}
			if s != "" {
				images[i][s] = true
			}
		}
	}
	var only [2][]string
	for i := range images {
		for s := range images[i] {
			if !images[1-i][s] {
				only[i] = append(only[i], s)
			}
		}
		sort.Strings(only[i])
	}
	if len(only[0])+len(only[1]) > 0 {
		t.Errorf("BREAK: the wire image depends on the password: only with %q:\n  %s\nonly with %q:\n  %s",
			passwords[0], strings.Join(only[0], "\n  "), passwords[1], strings.Join(only[1], "\n  "))
	} else {
		t.Logf("structural check: %d and %d datagrams, %d distinct messages once cookies, reqIDs, expiry times, pairing ids and relay tokens are blanked (signatures verified as the session key's first): identical with password %q and %q",
			len(runs[0]), len(runs[1]), len(images[0]), passwords[0], passwords[1])
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// normalizeRendezvous returns a captured datagram with the fields blanked
// that depend on a cookie, a request id, the time or the server's random
// draws, re-encoded: what two runs with different passwords must agree on.
// Signatures are checked to be the session key's over their inputs before
// they are blanked. "" leaves a datagram out of the comparison: relayed
// peer datagrams (the peer path) and relay keepalives (see below); the
// dictionary check sees them all.
func normalizeRendezvous(c attacker.Captured, key rendezvous.SessionKey, serverID [16]byte, names map[netip.AddrPort]string) (string, error) {
	who := names[c.Client]
	if who == "" {
		who = "register"
	}
	dir := "server->" + who
	if c.ToServer {
		dir = who + "->server"
	}
	if c.Data[0] == wire.RelayType {
		// Relayed peer datagrams, and relay keepalives, which hold nothing
		// but the pairing id and go out or not by timing (the first one
		// after the path is confirmed, if the session is still on).
		return "", nil
	}
	m, err := wire.Decode(c.Data)
	if err != nil {
		return "", fmt.Errorf("%s: undecodable %x", dir, c.Data)
	}
	switch m := m.(type) {
	case *wire.Hello:
		m.ReqID = 0
	case *wire.Challenge:
		m.ReqID, m.Cookie = 0, nil
	case *wire.Register:
		if want := rendezvous.RegisterSignature(key, serverID, m.Cookie, m.Session, m.TTLSeconds); m.Signature != want {
			return "", fmt.Errorf("%s: a Register signature that is not the session key's", dir)
		}
		m.ReqID, m.Cookie, m.Signature = 0, nil, [64]byte{}
	case *wire.RegisterResp:
		// The status too: a Register re-sent after a lost answer (a loaded
		// machine) is answered "refreshed" in one run and not the other.
		m.ReqID, m.Expires, m.Status = 0, 0, 0
	case *wire.Find:
		if m.Signature != ([64]byte{}) {
			if want := rendezvous.FindSignature(key, serverID, m.Cookie, m.Session, m.Name, m.Peer); m.Signature != want {
				return "", fmt.Errorf("%s: a Find signature that is not the session key's", dir)
			}
			m.Signature = [64]byte{0xff} // signed
		}
		m.ReqID, m.Cookie = 0, nil
	case *wire.FindResp:
		m.ReqID, m.PairingID, m.RelayToken = 0, [16]byte{}, [16]byte{}
	case *wire.RelayBind:
		m.ReqID, m.Cookie, m.PairingID, m.MAC = 0, nil, [16]byte{}, [32]byte{}
	case *wire.Leave:
		m.ReqID, m.Cookie = 0, nil
	case *wire.Error:
		m.ReqID = 0
	case *wire.RelayEnded:
		m.PairingID, m.MAC = [16]byte{}, [32]byte{}
	}
	return fmt.Sprintf("%s %s %d bytes %x", dir, m.Type(), len(c.Data), m.AppendTo(nil)), nil
}
