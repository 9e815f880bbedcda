package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2pcat/p2pcat/pipe"
	"github.com/p2pcat/p2pcat/rendezvous"
)

func natCheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "nat-check",
		Usage: "report this host's NAT mapping and filtering behaviour",
		Description: `Asks the rendezvous server over STUN (RFC 5389, RFC 5780) which address it
sees, and, when the server has an alternate STUN port, how the NAT maps
and filters: endpoint-independent mapping lets direct connections work
with most peers; endpoint-dependent mapping (a symmetric NAT) reaches
only peers without NAT, and other sessions use the server's relay.
The report goes to stdout; --json prints it as a JSON object.`,
		Flags: []cli.Flag{
			serverFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, EnvVars: []string{"P2PCAT_TIMEOUT"}, Usage: "give up when the check has not finished within this"},
		},
		Action: natCheck,
	}
}

func natCheck(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("nat-check takes no arguments (got %q)", c.Args().First())
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	server, err := resolveServer(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	report, err := rendezvous.CheckNAT(ctx, server, rendezvous.NATCheckOptions{})
	if err != nil {
		switch {
		case c.Context.Err() != nil:
			return pipe.ErrInterrupted
		case errors.Is(err, rendezvous.ErrNoServer):
			return hinted{err, "is a p2pcat server (one that answers STUN) running at " + server.String() + "? check --server"}
		case errors.Is(err, context.DeadlineExceeded):
			return hinted{err, "the server answered, but the check did not finish: give it more --timeout"}
		}
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	_, err = fmt.Fprint(c.App.Writer, report.String())
	return err
}
