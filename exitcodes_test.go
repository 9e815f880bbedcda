package main

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestExitCodesDocumented: the exit codes in README's table, in --help and
// in main.go's constants are the same set, so a script reading either
// document can trust what the tests check.
func TestExitCodesDocumented(t *testing.T) {
	constants := []int{exitOK, exitFailure, exitUsage, exitNoPeer, exitAuth, exitNoPath, exitTaken, exitSignal, exitPipe}

	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "## Exit codes")
	if !ok {
		t.Fatal("README has no '## Exit codes' section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	var inReadme []int
	for _, m := range regexp.MustCompile(`(?m)^\| (\d+) \|`).FindAllStringSubmatch(table, -1) {
		n, _ := strconv.Atoi(m[1])
		inReadme = append(inReadme, n)
	}

	var out bytes.Buffer
	if code := run([]string{"p2pcat", "--help"}, nil, &out, &out); code != exitOK {
		t.Fatalf("--help exited %d", code)
	}
	_, help, ok := strings.Cut(out.String(), "EXIT CODES:")
	if !ok {
		t.Fatalf("--help lists no exit codes:\n%s", out.String())
	}
	var inHelp []int
	for _, m := range regexp.MustCompile(`(?m)^\s+(\d+)  \S`).FindAllStringSubmatch(help, -1) {
		n, _ := strconv.Atoi(m[1])
		inHelp = append(inHelp, n)
	}
	for name, got := range map[string][]int{"README": inReadme, "--help": inHelp} {
		if !equalInts(got, constants) {
			t.Errorf("%s lists exit codes %v, main.go has %v", name, got, constants)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFlagErrorsExitUsage: urfave/cli's own flag errors, on the pipe's
// flags and on every subcommand's, exit 2 by their type (the OnUsageError
// hooks), not by their text.
func TestFlagErrorsExitUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"--timeout", "soon"},
		{"serve", "--bogus"},
		{"serve", "--rate", "fast"},
		{"register", "--bogus"},
		{"register", "--ttl", "long"},
		{"nat-check", "--bogus"},
	} {
		var out, errOut bytes.Buffer
		code := run(append([]string{"p2pcat"}, args...), strings.NewReader(""), &out, &errOut)
		if code != exitUsage {
			t.Errorf("p2pcat %s exited %d, want %d; stderr:\n%s", strings.Join(args, " "), code, exitUsage, errOut.String())
		}
		if !strings.Contains(errOut.String(), "p2pcat: hint: see 'p2pcat --help'") {
			t.Errorf("p2pcat %s: no hint on stderr:\n%s", strings.Join(args, " "), errOut.String())
		}
	}
}

// TestNoRequiredFlags: no flag is marked Required. urfave/cli's error for
// a missing required flag has no exported type, so exitCode could not
// tell it from a runtime failure; a flag that must be given is checked in
// its command's action, with usagef.
func TestNoRequiredFlags(t *testing.T) {
	app := newApp(nil, io.Discard, io.Discard)
	check := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			if r, ok := f.(cli.RequiredFlag); ok && r.IsRequired() {
				t.Errorf("%s: flag --%s is Required", where, f.Names()[0])
			}
		}
	}
	check("p2pcat", app.Flags)
	for _, cmd := range app.Commands {
		check("p2pcat "+cmd.Name, cmd.Flags)
	}
}
