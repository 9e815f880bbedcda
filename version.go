package main

import (
	"runtime/debug"
	"strings"
)

// versionString is what --version prints. A version set with -ldflags
// "-X main.version=…" wins (release builds, the Dockerfile); else the
// build info tells: the module version (a tag or pseudo-version under
// `go install module@version` or `go build` in a git checkout, "devel"
// when the build stamped none) and the VCS revision the binary was built
// from, "-dirty" when the tree had uncommitted changes.
func versionString() string {
	bi, _ := debug.ReadBuildInfo()
	return describeBuild(version, bi)
}

// describeBuild is versionString for a given -X version and build info
// (nil when the binary has none).
func describeBuild(x string, bi *debug.BuildInfo) string {
	if x != "" {
		return x
	}
	v := "devel"
	if bi == nil {
		return v
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	var rev, when string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return v
	}
	rev = rev[:min(len(rev), 12)]
	if modified {
		rev += "-dirty"
	}
	details := []string{"revision " + rev}
	if when != "" {
		details = append(details, when)
	}
	return v + " (" + strings.Join(details, ", ") + ")"
}
