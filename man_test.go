package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

var updateMan = flag.Bool("update-man", false, "rewrite p2pcat.1 from the app")

// manPageForRepo is the page as p2pcat.1 holds it: generated with the
// environment that serve's --data default reads fixed, so that it reads
// "~/.local/state/p2pcat" on every machine.
func manPageForRepo(t *testing.T) string {
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "~")
	return manPage(newApp(nil, io.Discard, io.Discard))
}

// TestManPageCheckedIn: p2pcat.1 is the generated page, and `p2pcat man`
// prints it. After changing a flag or a command, regenerate it with
//
//	go test -run TestManPageCheckedIn -update-man .
func TestManPageCheckedIn(t *testing.T) {
	page := manPageForRepo(t)
	if *updateMan {
		if err := os.WriteFile("p2pcat.1", []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkedIn, err := os.ReadFile("p2pcat.1")
	if err != nil {
		t.Fatal(err)
	}
	if string(checkedIn) != page {
		t.Fatal("p2pcat.1 is not the page the app generates; regenerate it: go test -run TestManPageCheckedIn -update-man .")
	}
	stdout, stderr, code := p2pcatOut(t, "man") // with HOME and XDG_STATE_HOME as above
	if code != exitOK || stdout != page {
		t.Fatalf("p2pcat man: exit %d, %d bytes (the page has %d); stderr:\n%s", code, len(stdout), len(page), stderr)
	}
}

// TestManPageRenders: groff renders the page without a warning, mandoc's
// lint finds no error, and the text has every section, every flag and
// every exit code.
func TestManPageRenders(t *testing.T) {
	page := manPageForRepo(t)
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("SKIPPING: groff is not installed (groff-base)")
	}
	lint := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	lint.Stdin = strings.NewReader(page)
	if out, err := lint.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff warns: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("mandoc"); err == nil {
		cmd := exec.Command("mandoc", "-T", "lint", "-W", "warning")
		cmd.Stdin = strings.NewReader(page)
		out, _ := cmd.CombinedOutput()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.Contains(line, "missing date") { // no date, so that the page is reproducible
				t.Errorf("mandoc: %s", line)
			}
		}
	} else {
		t.Log("no mandoc lint: mandoc is not installed")
	}
	render := exec.Command("groff", "-man", "-Tutf8", "-P", "-cbou", "-rLL=200n")
	render.Stdin = strings.NewReader(page)
	var text bytes.Buffer
	render.Stdout = &text
	if err := render.Run(); err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(text.String(), "\u2010", "-") // groff's hyphen
	want := []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO",
		"P2PCAT_PASSWORD", "(environment: P2PCAT_FIND)", "(default: 2m0s)", "completion bash|zsh|fish"}
	app := newApp(nil, io.Discard, io.Discard)
	for _, f := range app.Flags {
		want = append(want, dashed(f.Names()[0]))
	}
	for _, cmd := range app.VisibleCommands() {
		want = append(want, "\n   "+cmd.Name) // a subsection
		for _, f := range cmd.Flags {
			want = append(want, dashed(f.Names()[0]))
		}
	}
	for _, line := range strings.Split(exitsHelpTxt, "\n")[1:] {
		code, meaning, _ := strings.Cut(strings.TrimSpace(line), "  ")
		if !regexp.MustCompile(`(?m)^ +` + code + ` +` + regexp.QuoteMeta(strings.Fields(meaning)[0]) + ` `).MatchString(s) {
			t.Errorf("the rendered page does not list exit code %s", code)
		}
	}
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("the rendered page lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("rendered:\n%s", s)
	}
}
