//go:build !race

package server_test

const soakRace = false
