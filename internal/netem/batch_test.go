package netem

import (
	"net"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/net/ipv4"
)

// fakeBatchConn fails the writes of the datagrams listed in refuse, once
// each, and reports a closed socket from closedAt on.
type fakeBatchConn struct {
	refuse   map[string]bool
	closedAt string
	sent     []string
}

func (f *fakeBatchConn) ReadBatch([]ipv4.Message, int) (int, error) { return 0, net.ErrClosed }

func (f *fakeBatchConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	for i, m := range ms {
		name := string(m.Buffers[0])
		if name == f.closedAt {
			return i, &net.OpError{Op: "write", Err: net.ErrClosed}
		}
		if f.refuse[name] {
			delete(f.refuse, name)
			return i, &net.OpError{Op: "write", Err: syscall.ENOBUFS}
		}
		f.sent = append(f.sent, name)
	}
	return len(ms), nil
}

func messages(names ...string) []ipv4.Message {
	ms := make([]ipv4.Message, len(names))
	for i, n := range names {
		ms[i].Buffers = [][]byte{[]byte(n)}
	}
	return ms
}

func TestWriteAllSkipsRefusedDatagramsAndStopsWhenClosed(t *testing.T) {
	f := &fakeBatchConn{refuse: map[string]bool{"b": true, "d": true}}
	if sent := writeAll(f, messages("a", "b", "c", "d", "e")); sent != 3 || strings.Join(f.sent, "") != "ace" {
		t.Errorf("sent %d (%v), want 3 (a c e)", sent, f.sent)
	}
	f = &fakeBatchConn{closedAt: "c"}
	if sent := writeAll(f, messages("a", "b", "c", "d")); sent != 2 || strings.Join(f.sent, "") != "ab" {
		t.Errorf("sent %d (%v) before the close, want 2 (a b)", sent, f.sent)
	}
}
