package term

import "testing"

func TestSanitize(t *testing.T) {
	cases := map[string]string{
		"hello":                      "hello",
		"tab\there":                  "tab\there",
		"\x1b[31mred\x1b[0m":         "red",
		"\x1b[2J\x1b[Hclear":         "clear",
		"\x1b]0;title\x07after":      "after",
		"\x1b]8;;http://x\x1b\\link": "link",
		"bell\x07":                   "bell?",
		"cr\rover":                   "cr?over",
		"nul\x00":                    "nul?",
		"\x1bPdcs\x1b\\ok":           "ok",
		"\u202eevil":                 "?evil",
		"zoë ✓":                      "zoë ✓",
		"bad\xffutf8":                "bad\uFFFDutf8",
		"\xc2\x9b31mC1 CSI":          "C1 CSI",
		"unterminated \x1b[":         "unterminated ",
	}
	for in, want := range cases {
		if got := Sanitize(in); got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}
