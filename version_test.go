package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
)

// TestDescribeBuild: what --version prints for each kind of build.
func TestDescribeBuild(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-12-03T12:47:35Z"}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "66c9406419635243016c09b0e51ca469fced162a"
	for _, tc := range []struct {
		name, x string
		bi      *debug.BuildInfo
		want    string
	}{
		{"-X wins", "v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-x"}, Settings: vcs(rev, "true")}, "v1.2.3"},
		{"no build info", "", nil, "devel"},
		{"no vcs (go test, -buildvcs=false)", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{"go install module@v1.4.0", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"clean checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261203124735-66c940641963"}, Settings: vcs(rev, "false")},
			"v0.0.0-20261203124735-66c940641963 (revision 66c940641963, 2026-12-03T12:47:35Z)"},
		{"modified checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261203124735-66c940641963+dirty"}, Settings: vcs(rev, "true")},
			"v0.0.0-20261203124735-66c940641963+dirty (revision 66c940641963-dirty, 2026-12-03T12:47:35Z)"},
		{"vcs without a module version", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "true")},
			"devel (revision 66c940641963-dirty, 2026-12-03T12:47:35Z)"},
	} {
		if got := describeBuild(tc.x, tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestVersionOfRealBuilds builds p2pcat with `go build` twice: with
// -X main.version, which it prints as it is, and with -buildvcs=true, whose
// --version must carry the revision and "-dirty" exactly as the build info
// (`go version -m`) records them. Go stamps the revision only in a
// checkout whose .git is a directory (a clone, as CI's), not in a `git
// worktree`; there the binary must say devel.
func TestVersionOfRealBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds p2pcat twice")
	}
	dir := t.TempDir()
	build := func(name string, args ...string) string {
		t.Helper()
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", append(append([]string{"build", "-o", bin}, args...), ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", args, err, out)
		}
		return bin
	}
	versionOf := func(bin string) string {
		t.Helper()
		out, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", bin, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	if got, want := versionOf(build("x", "-ldflags", "-X main.version=v9.8.7-test")), "p2pcat version v9.8.7-test"; got != want {
		t.Errorf("built with -X: %q, want %q", got, want)
	}

	bin := build("vcs", "-buildvcs=true")
	got := versionOf(bin)
	info, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, info)
	}
	rev := regexp.MustCompile(`(?m)^\s*build\s+vcs\.revision=([0-9a-f]+)$`).FindSubmatch(info)
	if st, err := os.Stat(".git"); err == nil && st.IsDir() && rev == nil {
		t.Fatalf("a build in this git clone has no vcs.revision:\n%s", info)
	}
	if rev == nil {
		t.Logf("no VCS stamp (a git worktree?): %q", got)
		if !regexp.MustCompile(`^p2pcat version devel$`).MatchString(got) {
			t.Errorf("built without a VCS stamp: %q, want devel", got)
		}
		return
	}
	want := "revision " + string(rev[1][:12])
	if regexp.MustCompile(`(?m)^\s*build\s+vcs\.modified=true$`).Match(info) {
		want += "-dirty"
	}
	if !strings.Contains(got, "("+want+", ") {
		t.Errorf("--version %q does not say %q; build info:\n%s", got, want, info)
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err == nil && !strings.HasPrefix(strings.TrimSpace(string(head)), string(rev[1])) {
		t.Errorf("the build's revision %s is not HEAD %s", rev[1], head)
	}
	t.Logf("%s", got)
}
