package rendezvous

import (
	"crypto/rand"
	"strings"
)

// GeneratePassphrase returns a random passphrase of five groups of five
// base32 characters: 25 × 5 = 125 bits, well above the 80 bits a shared
// secret on a public server needs, and easy to read out and type.
func GeneratePassphrase() string {
	t := strings.ToLower(rand.Text()[:25])
	var b strings.Builder
	for i := 0; i < len(t); i += 5 {
		if i > 0 {
			b.WriteByte('-')
		}
		b.WriteString(t[i : i+5])
	}
	return b.String()
}
