package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/p2pcat/p2pcat/pipe/term"
	"github.com/p2pcat/p2pcat/rendezvous/server"
)

func TestMain(m *testing.M) {
	// Every p2pcat run inside the tests, including the copies testscript
	// executes, never prompts on the developer's terminal.
	tty := filepath.Join(os.TempDir(), "p2pcat-test-no-tty")
	if v := os.Getenv("P2PCAT_TEST_TTY"); v != "" {
		tty = v // a test that drives a real terminal (tmux) asks for its prompt
	}
	term.SetTestOnlyTTY(tty)
	testscript.Main(m, map[string]func(){
		"p2pcat": func() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the CLI scripts in testdata/script. Each script gets a
// fresh rendezvous server on 127.0.0.1 in $P2PCAT_SERVER.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "script"),
		Setup: func(env *testscript.Env) error {
			srv, err := server.NewServer(server.Config{DataDir: filepath.Join(env.WorkDir, ".server")})
			if err != nil {
				return err
			}
			conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, conn) }()
			env.Defer(func() {
				cancel()
				<-done
				conn.Close()
				srv.Close()
			})
			env.Setenv("P2PCAT_SERVER", conn.LocalAddr().String())
			// A server address where nothing listens, for "unreachable" cases.
			dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			env.Setenv("DEAD_SERVER", dead.LocalAddr().String())
			dead.Close()
			return nil
		},
	})
}
