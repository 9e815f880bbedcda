//go:build !unix

package main

import "os/exec"

// ownProcessGroup: no process groups to make here.
func ownProcessGroup(*exec.Cmd) {}

// signalGroup stops the command itself: there is no polite request to
// send it here, so both steps kill it.
func signalGroup(cmd *exec.Cmd, _ bool) {
	_ = cmd.Process.Kill()
}
