package pipe

import "github.com/p2pcat/p2pcat/pipe/path"

// Session is what the command may watch of a session while it runs
// (Config.OnConnected): the progress line shows its path.
type Session struct{ link *path.Conn }

// Relayed reports whether the session goes through the server's relay
// now. It may change while the session runs: a relayed session moves to a
// direct path when one opens, and back when that path is lost.
func (s Session) Relayed() bool { return s.link.Relayed() }

// observeConnected hands the connected session to Config.OnConnected.
func (cfg *Config) observeConnected(link *path.Conn) {
	if cfg.OnConnected != nil {
		cfg.OnConnected(Session{link})
	}
}
