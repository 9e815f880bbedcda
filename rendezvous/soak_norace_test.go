//go:build !race

package rendezvous_test

const soakRace = false
