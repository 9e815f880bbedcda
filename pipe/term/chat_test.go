package term

import (
	"bufio"
	"os"
	"strings"
	"sync"
	"testing"
)

// SetPeer renames the peer's lines, sanitized, and is safe beside
// Received (go test -race).
func TestChatSetPeer(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	chat, err := NewChat(r, w, "peer")
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			chat.Received([]byte("hi"))
		}
	}()
	chat.SetPeer("bob\x1b[2J")
	wg.Wait()
	chat.Received([]byte("last"))
	w.Close()
	var last string
	for l := range lines {
		if !strings.HasPrefix(l, "\x1b[36mpeer:") && !strings.HasPrefix(l, "\x1b[36mbob:") {
			t.Errorf("line %q: want the peer's name, peer or bob, sanitized", l)
		}
		last = l
	}
	if want := "\x1b[36mbob:\x1b[0m last"; last != want {
		t.Fatalf("last line %q, want %q", last, want)
	}
}
