package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// p2pcatOut runs the real binary (the test binary as "p2pcat" in $PATH)
// and returns its stdout, stderr and exit code.
func p2pcatOut(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command("p2pcat", args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// TestBashCompletion: the script parses, and bash's completion, with the
// script sourced and the real binary behind it, offers subcommands,
// flags, a flag's values and a subcommand's arguments.
func TestBashCompletion(t *testing.T) {
	script, stderr, code := p2pcatOut(t, "completion", "bash")
	if code != exitOK {
		t.Fatalf("completion bash: exit %d: %s", code, stderr)
	}
	file := filepath.Join(t.TempDir(), "p2pcat.bash")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		line string   // the words, the last one being completed
		want []string // all of these offered
		not  []string // none of these
	}{
		{"p2pcat ", []string{"serve", "register", "nat-check", "completion", "man"}, []string{"--find"}},
		{"p2pcat se", []string{"serve"}, []string{"register"}},
		{"p2pcat --fi", []string{"--find"}, []string{"--name", "serve"}},
		{"p2pcat --pro", []string{"--progress"}, []string{"--no-progress"}},
		{"p2pcat --relay ", []string{"auto", "never", "only"}, []string{"--find"}},
		{"p2pcat --find bob --relay o", []string{"only"}, []string{"auto"}},
		{"p2pcat serve --log", []string{"--log-format"}, []string{"--find"}},
		{"p2pcat serve --log-format ", []string{"text", "json"}, nil},
		{"p2pcat completion ", []string{"bash", "zsh", "fish"}, nil},
		{"p2pcat completion f", []string{"fish"}, []string{"bash"}},
		{"p2pcat register team --t", []string{"--ttl", "--timeout"}, []string{"--find"}},
	} {
		words := strings.Split(tc.line, " ")
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + w + "'"
		}
		prog := `source "$1"; complete -p p2pcat >/dev/null || exit 9
COMP_WORDS=(` + strings.Join(quoted, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
_p2pcat; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command("bash", "-c", prog, "bash", file, tc.line).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", tc.line, err, out)
		}
		got := strings.Fields(string(out))
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("%q: %q not offered; got %q", tc.line, w, got)
			}
		}
		for _, w := range tc.not {
			if slices.Contains(got, w) {
				t.Errorf("%q: %q offered; got %q", tc.line, w, got)
			}
		}
	}
}

// TestZshAndFishCompletion: the zsh script and the fish script parse
// where those shells are installed (scripts/test.sh installs them), the
// fish script names every flag and subcommand, and fish itself completes
// from it.
func TestZshAndFishCompletion(t *testing.T) {
	dir := t.TempDir()
	zsh, _, code := p2pcatOut(t, "completion", "zsh")
	if code != exitOK || !strings.HasPrefix(zsh, "#compdef p2pcat\n") || !strings.Contains(zsh, completionFlag) {
		t.Fatalf("completion zsh: exit %d:\n%s", code, zsh)
	}
	fish, _, code := p2pcatOut(t, "completion", "fish")
	if code != exitOK {
		t.Fatalf("completion fish: exit %d", code)
	}
	for _, want := range []string{"-l find -s f", "-l progress", "-l no-progress", "-l relay", "-a 'serve'", "-a 'completion'", "-l log-format"} {
		if !strings.Contains(fish, want) {
			t.Errorf("the fish script lacks %q:\n%s", want, fish)
		}
	}
	for shell, script := range map[string]string{"zsh": zsh, "fish": fish} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Logf("SKIPPING the %s syntax check: %s is not installed", shell, shell)
			continue
		}
		file := filepath.Join(dir, "p2pcat."+shell)
		os.WriteFile(file, []byte(script), 0o600)
		if out, err := exec.Command(shell, "-n", file).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", shell, err, out)
		}
	}
	if _, err := exec.LookPath("fish"); err == nil {
		file := filepath.Join(dir, "p2pcat.fish")
		out, err := exec.Command("fish", "--no-config", "-c", "source "+file+"; complete -C 'p2pcat --prog'").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "--progress\t") {
			t.Errorf("fish's completion of 'p2pcat --prog': %v\n%s", err, out)
		}
	}
}

// TestCompletionUsage: an unknown shell, or none, is a usage error.
func TestCompletionUsage(t *testing.T) {
	for args, want := range map[string]string{
		"completion tcsh": `p2pcat: error: completion "tcsh": p2pcat has completion scripts for bash, zsh and fish`,
		"completion":      "p2pcat: error: completion takes one argument, the shell: bash, zsh or fish",
		"man extra":       "p2pcat: error: man takes no arguments",
	} {
		stdout, stderr, code := p2pcatOut(t, strings.Fields(args)...)
		if code != exitUsage || !strings.Contains(stderr, want+"\n") || stdout != "" {
			t.Errorf("p2pcat %s: exit %d, stdout %q, stderr:\n%s", args, code, stdout, stderr)
		}
	}
}
