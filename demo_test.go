package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemoScript runs the README's first command, scripts/demo.sh, as a
// new user would: it must finish with every step shown working. (It had
// gone on calling a register flag that protocol v2 removed.)
func TestDemoScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds p2pcat and runs the demo")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "scripts/demo.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/demo.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		`registered session "demo"`,
		"bob received:   hello bob, this is alice",
		"alice received: hi alice, bob here",
		"   identical",
		"alice: exit 4:",
		"bob:   exit 4:",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
}
