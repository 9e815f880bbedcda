package wire

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var writeCorpus = flag.Bool("write-corpus", false, "rewrite testdata/fuzz/FuzzDecode from sampleMessages")

func TestWriteSeedCorpus(t *testing.T) {
	if !*writeCorpus {
		t.Skip("run with -write-corpus to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, m := range sampleMessages() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", m.AppendTo(nil))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d-%s", i, m.Type())), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
