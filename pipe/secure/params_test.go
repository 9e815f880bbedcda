package secure

import (
	"fmt"
	"strings"
	"testing"
)

func TestParamsValidation(t *testing.T) {
	small := mustKey(t)
	for name, change := range map[string]func(p *Params){
		"no role":        func(p *Params) { p.Role = 0 },
		"no password":    func(p *Params) { p.Password = nil },
		"RSABits 1024":   func(p *Params) { p.testOnlyRSABits = 0; p.RSABits = 1024 },
		"RSABits 8192":   func(p *Params) { p.testOnlyRSABits = 0; p.RSABits = 8192 },
		"small RSAKey":   func(p *Params) { p.testOnlyRSABits = 0; p.RSAKey = small },
		"negative timer": func(p *Params) { p.Timeout = -1 },
	} {
		t.Run(name, func(t *testing.T) {
			p := testParams(Initiator, testPassword)
			change(&p)
			link := newDiscardLink()
			defer link.Close()
			if _, err := Handshake(t.Context(), link, p); err == nil {
				t.Fatal("Handshake accepted invalid params")
			}
		})
	}
}

func TestParamsStringHidesPassword(t *testing.T) {
	p := testParams(Initiator, testPassword)
	for _, s := range []string{p.String(), fmt.Sprintf("%v", p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p)} {
		if strings.Contains(s, testPassword) {
			t.Errorf("formatted Params contains the password: %s", s)
		}
	}
}
