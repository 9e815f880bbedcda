package main

import (
	"testing"

	"github.com/urfave/cli/v2"
)

// TestVerbosity: -v counts, and P2PCAT_VERBOSE=1 alone is one -v (urfave/cli
// reports a count of 0 for a flag set from the environment).
func TestVerbosity(t *testing.T) {
	for _, tc := range []struct {
		env  string
		args []string
		want int
	}{
		{"", nil, 0},
		{"", []string{"-v"}, 1},
		{"", []string{"-vv"}, 2},
		{"", []string{"-v", "-v"}, 2},
		{"1", nil, 1},
		{"true", nil, 1},
		{"0", nil, 0},
		{"1", []string{"-vv"}, 2},
	} {
		t.Setenv("P2PCAT_VERBOSE", tc.env)
		got := -1
		app := &cli.App{
			Flags:                  pipeFlags(),
			UseShortOptionHandling: true,
			Action:                 func(c *cli.Context) error { got = verbosity(c); return nil },
		}
		if err := app.Run(append([]string{"p2pcat"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("P2PCAT_VERBOSE=%q %v: verbosity %d, want %d", tc.env, tc.args, got, tc.want)
		}
	}
}
