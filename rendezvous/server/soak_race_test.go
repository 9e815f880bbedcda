//go:build race

package server_test

// soakRace: the race detector's runtime keeps memory of its own (shadow
// memory, the history of every goroutine and lock), which the server's RSS
// includes; TestSoakServer reports RSS under -race but does not judge it.
const soakRace = true
