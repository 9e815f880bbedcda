package main

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
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
