package main

// The serve command: the rendezvous server, its STUN alternate socket and
// its metrics endpoint.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe/path"
	"github.com/p2pcat/p2pcat/rendezvous/server"
	"github.com/p2pcat/p2pcat/rendezvous/server/store"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the rendezvous server",
		Description: `Pairs clients that ask for each other and keeps registered sessions in an
embedded database under --data. One UDP port serves everything.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Aliases: []string{"l"}, Value: ":3478", EnvVars: []string{"P2PCAT_LISTEN"}, Usage: "UDP `ADDR` to listen on"},
			&cli.StringFlag{Name: "data", Value: defaultDataDir(), EnvVars: []string{"P2PCAT_DATA"}, Usage: "`DIR` for the registration database"},
			&cli.StringFlag{Name: "metrics", EnvVars: []string{"P2PCAT_METRICS"}, Usage: "serve Prometheus metrics over HTTP on `ADDR` (e.g. 127.0.0.1:9478); off when empty"},
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"P2PCAT_LOG_FORMAT"}, Usage: "text or json"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, EnvVars: []string{"P2PCAT_VERBOSE"}, Usage: "debug logging"},
			&cli.Float64Flag{Name: "rate", Value: 20, EnvVars: []string{"P2PCAT_RATE"}, Usage: "find/register requests per second allowed per client IP (negative: unlimited)"},
			&cli.IntFlag{Name: "burst", Value: 40, EnvVars: []string{"P2PCAT_BURST"}, Usage: "burst size of --rate"},
			&cli.IntFlag{Name: "max-pending", Value: 100_000, EnvVars: []string{"P2PCAT_MAX_PENDING"}, Usage: "pending finds kept in all"},
			&cli.IntFlag{Name: "max-pending-per-ip", Value: 64, EnvVars: []string{"P2PCAT_MAX_PENDING_PER_IP"}, Usage: "pending finds kept per client IP"},
			&cli.DurationFlag{Name: "pending-ttl", Value: server.DefaultPendingTTL, EnvVars: []string{"P2PCAT_PENDING_TTL"}, Usage: "how long a find waits after its last re-send (clients re-send every 2 s)"},
			&cli.StringFlag{Name: "stun-alternate", Value: "auto", EnvVars: []string{"P2PCAT_STUN_ALTERNATE"}, Usage: "second UDP `ADDR` for STUN, so 'p2pcat nat-check' can tell NAT behaviours apart: auto (the --listen port + 1), an address, or off"},
			&cli.BoolFlag{Name: "no-relay", EnvVars: []string{"P2PCAT_NO_RELAY"}, Usage: "do not relay sessions that find no direct path"},
			&cli.StringFlag{Name: "relay-rate", Value: "10MB", EnvVars: []string{"P2PCAT_RELAY_RATE"}, Usage: "relay bandwidth per session, bytes per second (`SIZE`: 500KB, 10MB, 1GiB ...)"},
			&cli.StringFlag{Name: "relay-bytes", Value: "4GiB", EnvVars: []string{"P2PCAT_RELAY_BYTES"}, Usage: "relay bytes per session in all (`SIZE`); the session ends there"},
			&cli.IntFlag{Name: "relay-sessions", Value: 100_000, EnvVars: []string{"P2PCAT_RELAY_SESSIONS"}, Usage: "pairings remembered for the relay (about 180 bytes each)"},
			&cli.DurationFlag{Name: "max-register-ttl", Value: 30 * 24 * time.Hour, EnvVars: []string{"P2PCAT_MAX_REGISTER_TTL"}, Usage: "longest registration clients may ask for"},
		},
		Action: serve,
	}
}

func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("serve takes no arguments (got %q)", c.Args().First())
	}
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), level)
	if err != nil {
		return err
	}
	laddr, err := net.ResolveUDPAddr("udp", c.String("listen"))
	if err != nil {
		return usagef("--listen %q: %v", c.String("listen"), err)
	}
	cfg, err := serverConfig(c)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Logger, cfg.Registry = log, reg
	srv, err := server.NewServer(cfg)
	if err != nil {
		if errors.Is(err, store.ErrInUse) {
			return hinted{err, "another p2pcat serve uses this --data directory; stop it or give another --data"}
		}
		return err
	}
	defer srv.Close()
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return hinted{fmt.Errorf("listening on %s: %w", c.String("listen"), err), "is another server on that port? choose another with --listen"}
	}
	defer conn.Close()
	path.RaiseBuffers(conn, 4<<20, log)
	alt, err := listenSTUNAlternate(c.String("stun-alternate"), laddr)
	if err != nil {
		return err
	}
	if addr := c.String("metrics"); addr != "" {
		stop, err := serveMetrics(addr, reg, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	return runServer(c.Context, srv, conn, alt)
}

// serverConfig is the server's configuration from serve's flags, without
// its logger and registry.
func serverConfig(c *cli.Context) (server.Config, error) {
	relayRate, err := parseSize(c.String("relay-rate"))
	if err != nil {
		return server.Config{}, usagef("--relay-rate: %v", err)
	}
	relayBytes, err := parseSize(c.String("relay-bytes"))
	if err != nil {
		return server.Config{}, usagef("--relay-bytes: %v", err)
	}
	if c.Int("relay-sessions") <= 0 {
		return server.Config{}, usagef("--relay-sessions must be positive (use --no-relay to turn the relay off)")
	}
	return server.Config{
		DataDir:         c.String("data"),
		PendingTTL:      c.Duration("pending-ttl"),
		MaxPending:      c.Int("max-pending"),
		MaxPendingPerIP: c.Int("max-pending-per-ip"),
		RatePerIP:       c.Float64("rate"),
		BurstPerIP:      c.Int("burst"),
		MaxRegisterTTL:  c.Duration("max-register-ttl"),
		NoRelay:         c.Bool("no-relay"),
		RelayRate:       relayRate,
		RelayBytes:      relayBytes,
		MaxRelays:       c.Int("relay-sessions"),
	}, nil
}

// serveMetrics serves reg's metrics (and /healthz) over HTTP on addr until
// stop is called.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usagef("--metrics %q: %v", addr, err)
	}
	hs := &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() { hs.Close() }, nil
}

// runServer serves on conn, and STUN on alt when it is not nil, until ctx
// is done. It closes alt, not conn.
func runServer(ctx context.Context, srv *server.Server, conn, alt *net.UDPConn) error {
	if alt == nil {
		return srv.Serve(ctx, conn)
	}
	defer alt.Close()
	altDone := make(chan error, 1)
	go func() { altDone <- srv.ServeSTUNAlternate(ctx, alt) }()
	err := srv.Serve(ctx, conn)
	if aerr := <-altDone; err == nil && aerr != nil {
		err = fmt.Errorf("STUN alternate: %w", aerr)
	}
	return err
}

// listenSTUNAlternate opens the --stun-alternate socket: "auto" is the
// listen address with the next port (any port when listening on port 0).
func listenSTUNAlternate(flag string, listen *net.UDPAddr) (*net.UDPConn, error) {
	var addr *net.UDPAddr
	switch flag {
	case "off":
		return nil, nil
	case "auto", "":
		addr = &net.UDPAddr{IP: listen.IP, Zone: listen.Zone}
		if listen.Port != 0 {
			if listen.Port == 65535 {
				return nil, usagef("--stun-alternate auto: no port after %d; give an address or off", listen.Port)
			}
			addr.Port = listen.Port + 1
		}
	default:
		a, err := net.ResolveUDPAddr("udp", flag)
		if err != nil {
			return nil, usagef("--stun-alternate %q: want auto, off or an address (%v)", flag, err)
		}
		addr = a
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, hinted{fmt.Errorf("listening for STUN on %s: %w", addr, err), "is that port taken? give --stun-alternate another address, or off"}
	}
	return conn, nil
}

// parseSize reads a byte count: a number with an optional unit, decimal
// (KB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB), B or none for bytes.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || v*mult > math.MaxInt64/2 || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a positive size (examples: 500KB, 10MB, 4GiB)", s)
	}
	return int64(v * mult), nil
}

func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}
