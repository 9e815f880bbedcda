package textsafe

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	for in, want := range map[string]string{
		"hello":                              "hello",
		"tab\tkept":                          "tab\tkept",
		"clear\x1b[2Jscreen":                 "clearscreen",
		"title\x1b]0;pwned\x07after":         "titleafter",
		"title\x1b]0;pwned\x1b\\after":       "titleafter",
		"dcs\x1bPq#0;2;0;0;0\x1b\\done":      "dcsdone",
		"c1 csi \u009b31mred":                "c1 csi red",
		"esc\x1b7two-byte":                   "esctwo-byte",
		"bell\x07nul\x00del\x7f":             "bell?nul?del?",
		"c1 \u0085next":                      "c1 ?next",
		"bidi \u202egnp.exe":                 "bidi gnp.exe",
		"isolate \u2066x\u2069":              "isolate x",
		"zero\u200bwidth\u200djoin\ufeffbom": "zerowidthjoinbom",
		"soft\u00adhyphen":                   "softhyphen",
		"bad \xff utf8":                      "bad \ufffd utf8",
		"unicode ok: żółw 日本 ✓":              "unicode ok: żółw 日本 ✓",
		"trailing esc\x1b":                   "trailing esc",
		"unterminated osc\x1b]0;x":           "unterminated osc",
		"\x1b[31mred\x1b[0m":                 "red",
		"\x1b]8;;http://x\x1b\\link":         "link",
		"cr\rover":                           "cr?over",
		"\xc2\x9b31mC1 CSI":                  "C1 CSI",
		"unterminated \x1b[":                 "unterminated ",
	} {
		if got := Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Line("a\tb\nc"); got != "a b?c" {
		t.Errorf("Line = %q", got)
	}
}

// FuzzText: whatever comes in, nothing that drives a terminal or hides
// text comes out, and the output is valid UTF-8.
func FuzzText(f *testing.F) {
	f.Add("hello \x1b[31mred\x1b[0m \u202e")
	f.Add("\x1b]52;c;aGk=\x07")
	f.Add("\u009b6n")
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Text(s), Line(s)} {
			if !utf8.ValidString(out) {
				t.Fatalf("invalid UTF-8 out of %q: %q", s, out)
			}
			for _, r := range out {
				if r == '\t' && out == Text(s) {
					continue
				}
				if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Bidi_Control, r) {
					t.Fatalf("%U left in %q (from %q)", r, out, s)
				}
			}
			if strings.ContainsRune(out, 0x1b) {
				t.Fatalf("ESC left in %q", out)
			}
		}
	})
}
