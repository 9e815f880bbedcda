package main

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeBinary runs the real `p2pcat serve`: register against it, read its
// metrics, stop it with SIGTERM, refuse a second server on the same data,
// and check that a restart keeps the registration.
func TestServeBinary(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	data := t.TempDir()
	startServe := func() (*proc, string, string) {
		p := startP2pcat(t, nil, nil, "serve", "--listen", "127.0.0.1:0", "--data", data, "--log-format", "json", "--metrics", "127.0.0.1:0")
		metrics := p.waitJSONLog(ctx, "metrics listening")["addr"].(string)
		addr := p.waitJSONLog(ctx, "rendezvous server listening")["addr"].(string)
		return p, addr, metrics
	}
	srv, addr, metrics := startServe()

	keyFile := filepath.Join(t.TempDir(), "team.key")
	reg := startP2pcat(t, nil, []string{"P2PCAT_SERVER=" + addr}, "register", "team", "--ttl", "1h", "--session-key-file", keyFile)
	if code := reg.wait(ctx); code != exitOK {
		t.Fatalf("register: exit %d\n%s", code, reg.Stderr())
	}

	// The same data directory cannot be served twice.
	second := startP2pcat(t, nil, nil, "serve", "--listen", "127.0.0.1:0", "--data", data)
	if code := second.wait(ctx); code != exitFailure || !strings.Contains(second.Stderr(), "in use by another p2pcat serve") {
		t.Fatalf("second serve on the same data: exit %d\n%s", code, second.Stderr())
	}

	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`p2pcat_rendezvous_registrations_total{result="created"} 1`,
		`p2pcat_rendezvous_packets_total{type="register"} 1`,
		`p2pcat_rendezvous_registered_sessions 1`,
		`p2pcat_rendezvous_pending 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	srv.signal(syscall.SIGTERM)
	if code := srv.wait(ctx); code != exitOK {
		t.Fatalf("serve after SIGTERM: exit %d\n%s", code, srv.Stderr())
	}
	if !strings.Contains(srv.Stderr(), "rendezvous server stopped") {
		t.Fatalf("no clean stop logged:\n%s", srv.Stderr())
	}

	srv, addr, _ = startServe()
	taken := startP2pcat(t, nil, []string{"P2PCAT_SERVER=" + addr}, "register", "team")
	if code := taken.wait(ctx); code != exitTaken {
		t.Fatalf("register with another key after restart: exit %d, want %d\n%s", code, exitTaken, taken.Stderr())
	}
	refresh := startP2pcat(t, nil, []string{"P2PCAT_SERVER=" + addr}, "register", "team", "--session-key-file", keyFile)
	if code := refresh.wait(ctx); code != exitOK || !strings.Contains(refresh.Stderr(), "refreshed") {
		t.Fatalf("refresh with the key after restart: exit %d\n%s", code, refresh.Stderr())
	}
	srv.signal(syscall.SIGINT)
	if code := srv.wait(ctx); code != exitOK {
		t.Fatalf("serve after SIGINT: exit %d", code)
	}
}
