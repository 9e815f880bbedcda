// Package textsafe makes text from elsewhere (a peer, a rendezvous or STUN
// server) safe to print on a terminal or in a log line. It is the one
// sanitizer of p2pcat: the chat, the stream's close reasons and the
// rendezvous client's error messages all go through it.
//
// Rules, applied to every rune:
//   - ANSI/VT escape sequences are removed whole: CSI (ESC [ or 0x9B) up to
//     its final byte, OSC (ESC ] or 0x9D), DCS, SOS, PM and APC (ESC P, X,
//     ^, _ or 0x90) up to BEL or ST, and any other two-byte ESC sequence;
//   - other control characters (C0 but tab, DEL, C1) become '?';
//   - format characters (Unicode category Cf: bidi overrides and isolates
//     such as U+202E, zero-width joiners and spaces, the BOM, soft hyphen)
//     are dropped: they can make text read as something else;
//   - invalid UTF-8 becomes U+FFFD.
//
// It imports only the standard library.
package textsafe

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text sanitizes s by the rules above; tabs and nothing else of C0 are
// kept, so it suits text shown on its own line (a chat line).
func Text(s string) string { return clean(s, false) }

// Line is Text that also turns tabs into spaces, for text embedded in a
// one-line message (an error, a log field).
func Line(s string) string { return clean(s, true) }

func clean(s string, oneLine bool) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b || r == 0x9b || r == 0x9d || r == 0x90 || r == 0x98 || r == 0x9e || r == 0x9f:
			i = skipEscape(s, i)
			continue
		case r == utf8.RuneError && size == 1:
			b.WriteRune(utf8.RuneError)
		case r == '\t':
			if oneLine {
				b.WriteByte(' ')
			} else {
				b.WriteRune(r)
			}
		case unicode.IsControl(r):
			b.WriteByte('?') // C0, DEL, C1
		case unicode.Is(unicode.Cf, r), unicode.Is(unicode.Bidi_Control, r):
			// invisible: dropped
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// skipEscape returns the index just after the escape sequence starting at
// i.
func skipEscape(s string, i int) int {
	r, size := utf8.DecodeRuneInString(s[i:])
	j := i + size
	kind := r
	if r == 0x1b {
		if j >= len(s) {
			return j
		}
		switch s[j] {
		case '[':
			kind = 0x9b
		case ']':
			kind = 0x9d
		case 'P', 'X', '^', '_':
			kind = 0x90
		default:
			_, n := utf8.DecodeRuneInString(s[j:])
			return j + n // ESC and one character
		}
		j++
	}
	switch kind {
	case 0x9b: // CSI: parameters and intermediates, then a final byte 0x40-0x7e
		for j < len(s) {
			c := s[j]
			j++
			if c >= 0x40 && c <= 0x7e {
				break
			}
		}
		return j
	default: // OSC, DCS and the other strings: until BEL or ST (ESC \ or 0x9C)
		for j < len(s) {
			if s[j] == 0x07 {
				return j + 1
			}
			if s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\' {
				return j + 2
			}
			if r, n := utf8.DecodeRuneInString(s[j:]); r == 0x9c {
				return j + n
			}
			j++
		}
		return j
	}
}
