// Package term is p2pcat's terminal side: reading the password from the
// environment or the controlling terminal (password.go) and drawing the
// interactive chat (chat.go). Peer text reaches the terminal only through
// internal/textsafe. It imports golang.org/x/term and internal/textsafe,
// and nothing else of p2pcat: its callers (main, pipe) hand it lines.
package term
