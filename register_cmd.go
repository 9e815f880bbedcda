package main

// The register command, its session key files, and the session key from
// the environment.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/rendezvous"
)

func registerCommand() *cli.Command {
	return &cli.Command{
		Name:      "register",
		Usage:     "reserve a session name on the server with a new session key",
		ArgsUsage: "SESSION",
		Description: `Reserves SESSION so that only clients holding its session key can be paired
in it. The key is 256 random bits, made here; the server keeps only a
public verifier of it, and nothing derived from any password ever reaches
the server. Everyone who joins the session needs the key (P2PCAT_SESSION_KEY
or --session-key-file) as well as the password, which the peers check
with each other as before.

  p2pcat register team -K team.key    # makes team.key (mode 0600) and registers
  p2pcat register team -K team.key    # again later: extends the registration
  p2pcat register team > team.key     # without a key file: the new key on stdout

Registering again with the same key extends the registration; the name
registered with another key gets "session taken" (exit 6).`,
		Flags: []cli.Flag{
			serverFlag(),
			&cli.StringFlag{Name: "session-key-file", Aliases: []string{"key-file", "K", "k"}, EnvVars: []string{"P2PCAT_SESSION_KEY_FILE"}, Usage: "the session key's `FILE`: read when it exists (to refresh), else created with a new key"},
			&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, EnvVars: []string{"P2PCAT_TTL"}, Usage: "how long the registration lasts"},
			&cli.DurationFlag{Name: "timeout", Value: 15 * time.Second, EnvVars: []string{"P2PCAT_TIMEOUT"}, Usage: "give up when the server does not answer within this"},
		},
		Action: register,
	}
}

func register(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("register takes exactly one argument, the session name")
	}
	session := c.Args().First()
	if err := rendezvous.ValidSession(session); err != nil {
		return usagef("session name %q: %v", session, err)
	}
	ttl := c.Duration("ttl")
	if ttl < rendezvous.MinRegisterTTL {
		return usagef("--ttl %s is shorter than the minimum %s", ttl, rendezvous.MinRegisterTTL)
	}
	server, err := resolveServer(c)
	if err != nil {
		return err
	}
	key, source, err := registerKey(c.String("session-key-file"))
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	client := &rendezvous.Client{Conn: conn, Server: server}
	res, err := client.Register(ctx, session, key, ttl)
	if err != nil {
		if source.created != "" {
			os.Remove(source.created) // a key for nothing
		}
		switch {
		case errors.Is(err, rendezvous.ErrNoServer):
			return hinted{err, "is the server running at " + server.String() + "? check --server"}
		case errors.Is(err, rendezvous.ErrTaken):
			return hinted{err, "pick another session name, or register with the key it was registered with (--session-key-file or P2PCAT_SESSION_KEY)"}
		}
		return err
	}
	if source.print {
		fmt.Fprintln(c.App.Writer, key.String())
	}
	verb := "registered"
	if res.Refreshed {
		verb = "refreshed"
	}
	fmt.Fprintf(c.App.ErrWriter, "p2pcat: %s session %q on %s until %s\n", verb, session, server, res.Expires.Local().Format(time.RFC3339))
	switch {
	case source.created != "":
		fmt.Fprintf(c.App.ErrWriter, "p2pcat: its new session key is in %s; everyone who joins the session needs it (--session-key-file or P2PCAT_SESSION_KEY)\n", source.created)
	case source.print:
		fmt.Fprintln(c.App.ErrWriter, "p2pcat: its new session key is the line on stdout, shown only this once; keep it: everyone who joins the session needs it (--session-key-file or P2PCAT_SESSION_KEY)")
	}
	return nil
}

// keySource says where register's session key came from.
type keySource struct {
	created string // a key file made for this registration (removed if it fails)
	print   bool   // a new key to print on stdout
}

// registerKey finds the session key to register with: the key file when
// it exists, else P2PCAT_SESSION_KEY, else a new key (written to the key
// file when one was named, printed otherwise).
func registerKey(file string) (rendezvous.SessionKey, keySource, error) {
	if file != "" {
		if b, err := os.ReadFile(file); err == nil {
			k, err := rendezvous.ParseSessionKey(string(b))
			if err != nil {
				return k, keySource{}, usagef("--session-key-file %s: %v", file, err)
			}
			return k, keySource{}, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return rendezvous.SessionKey{}, keySource{}, usagef("--session-key-file: %v", err)
		}
	} else if k, ok, err := sessionKeyFromEnv(); ok || err != nil {
		return k, keySource{}, err
	}
	k, err := rendezvous.GenerateSessionKey()
	if err != nil {
		return k, keySource{}, err
	}
	if file == "" {
		return k, keySource{print: true}, nil
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return k, keySource{}, usagef("--session-key-file: %v", err)
	}
	_, werr := fmt.Fprintln(f, k.String())
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(file)
		return k, keySource{}, fmt.Errorf("writing the session key to %s: %w", file, werr)
	}
	return k, keySource{created: file}, nil
}

// SessionKeyEnv supplies a registered session's key; there is no flag for
// the key itself, because argv is visible to every user.
const SessionKeyEnv = "P2PCAT_SESSION_KEY"

// sessionKeyFromEnv reads P2PCAT_SESSION_KEY: ok when it is set.
func sessionKeyFromEnv() (rendezvous.SessionKey, bool, error) {
	v, set := os.LookupEnv(SessionKeyEnv)
	if !set {
		return rendezvous.SessionKey{}, false, nil
	}
	k, err := rendezvous.ParseSessionKey(v)
	if err != nil {
		return k, true, usagef("%s: %v", SessionKeyEnv, err)
	}
	return k, true, nil
}
