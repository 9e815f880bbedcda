package cpace

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/gtank/ristretto255"
)

// vectors mirrors testdata/ristretto255_sha512.json, copied from
// draft-irtf-cfrg-cpace-21 Appendix B.3.
type vectors struct {
	Source          string  `json:"source"`
	PRS             hexData `json:"PRS"`
	CI              hexData `json:"CI"`
	SID             hexData `json:"sid"`
	ZPADLength      int     `json:"ZPAD_length"`
	GeneratorString hexData `json:"generator_string"`
	GeneratorHash   hexData `json:"generator_hash"`
	G               hexData `json:"g"`
	ADa             hexData `json:"ADa"`
	Ya              hexData `json:"Ya"`
	LowerYa         hexData `json:"ya"`
	ADb             hexData `json:"ADb"`
	Yb              hexData `json:"Yb"`
	LowerYb         hexData `json:"yb"`
	K               hexData `json:"K"`
	TranscriptIR    hexData `json:"transcript_ir"`
	DSIISK          hexData `json:"DSI_ISK"`
	ISKInputIR      hexData `json:"ISK_input_ir"`
	ISKIR           hexData `json:"ISK_IR"`
	TranscriptOC    hexData `json:"transcript_oc"`
	ISKInputOC      hexData `json:"ISK_input_oc"`
	ISKSY           hexData `json:"ISK_SY"`
	ScalarMultValid struct {
		S      hexData `json:"s"`
		X      hexData `json:"X"`
		Result hexData `json:"result"`
	} `json:"scalar_mult_valid"`
	ScalarMultVfyInvalid struct {
		S   hexData `json:"s"`
		Yi1 hexData `json:"Y_i1"`
		Yi2 hexData `json:"Y_i2"`
	} `json:"scalar_mult_vfy_invalid"`
}

type hexData []byte

func (h *hexData) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/ristretto255_sha512.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	// Lengths as printed in the draft, so a truncated copy cannot pass.
	for name, got := range map[string]int{
		"generator_string": len(v.GeneratorString), "generator_hash": len(v.GeneratorHash),
		"transcript_ir": len(v.TranscriptIR), "ISK_input_ir": len(v.ISKInputIR),
		"transcript_oc": len(v.TranscriptOC), "ISK_input_oc": len(v.ISKInputOC),
		"ISK_IR": len(v.ISKIR), "ISK_SY": len(v.ISKSY), "K": len(v.K),
	} {
		want := map[string]int{
			"generator_string": 170, "generator_hash": 64, "transcript_ir": 74,
			"ISK_input_ir": 146, "transcript_oc": 76, "ISK_input_oc": 148,
			"ISK_IR": 64, "ISK_SY": 64, "K": 32,
		}[name]
		if got != want {
			t.Fatalf("test vector %s has %d bytes, the draft says %d", name, got, want)
		}
	}
	return &v
}

func checkBytes(t testing.TB, name string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\n got  %x\n want %x", name, got, want)
	}
}

func decodeScalar(t *testing.T, b []byte) *ristretto255.Scalar {
	t.Helper()
	s := ristretto255.NewScalar()
	if err := s.Decode(b); err != nil {
		t.Fatalf("scalar %x: %v", b, err)
	}
	return s
}

// oCat and transcriptOC are the draft's symmetric-setting transcript
// (appendix A.3). p2pcat always has roles, so only the tests need them, to
// check the OC vectors.
func oCat(a, b []byte) []byte {
	if bytes.Compare(a, b) > 0 {
		return append(append([]byte("oc"), a...), b...)
	}
	return append(append([]byte("oc"), b...), a...)
}

func transcriptOC(ya, ada, yb, adb []byte) []byte {
	return oCat(lvCat(nil, ya, ada), lvCat(nil, yb, adb))
}

// TestStringUtilities checks draft appendix A.1 and A.3.
func TestStringUtilities(t *testing.T) {
	seq := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}
	checkBytes(t, `prepend_len("")`, prependLen(nil, nil), []byte{0})
	checkBytes(t, `prepend_len("1234")`, prependLen(nil, []byte("1234")), []byte("\x041234"))
	checkBytes(t, "prepend_len(range(127))", prependLen(nil, seq(127)), append([]byte{0x7f}, seq(127)...))
	checkBytes(t, "prepend_len(range(128))", prependLen(nil, seq(128)), append([]byte{0x80, 0x01}, seq(128)...))
	// LEB128 beyond the draft's vectors: 300 = 0xac 0x02, 16384 = 0x80 0x80 0x01.
	checkBytes(t, "prepend_len(300)[:2]", prependLen(nil, seq(300))[:2], []byte{0xac, 0x02})
	checkBytes(t, "prepend_len(16384)[:3]", prependLen(nil, make([]byte, 16384))[:3], []byte{0x80, 0x80, 0x01})
	for _, n := range []int{0, 1, 127, 128, 300, 16383, 16384} {
		if got, want := leb128Len(n), len(prependLen(nil, make([]byte, n)))-n; got != want {
			t.Errorf("leb128Len(%d) = %d, want %d", n, got, want)
		}
	}

	lv := lvCat(nil, []byte("1234"), []byte("5"), nil, []byte("678"))
	checkBytes(t, "lv_cat", lv, mustHex(t, "043132333401350003363738"))

	checkBytes(t, "transcript_ir 1",
		transcriptIR([]byte("123"), []byte("PartyA"), []byte("234"), []byte("PartyB")),
		mustHex(t, "03313233065061727479410332333406506172747942"))
	checkBytes(t, "transcript_ir 2",
		transcriptIR([]byte("3456"), []byte("PartyA"), []byte("2345"), []byte("PartyB")),
		mustHex(t, "043334353606506172747941043233343506506172747942"))
	checkBytes(t, "o_cat 1", oCat([]byte("ABCD"), []byte("BCD")), mustHex(t, "6f6342434441424344"))
	checkBytes(t, "o_cat 2", oCat([]byte("BCD"), []byte("ABCDE")), mustHex(t, "6f634243444142434445"))
	checkBytes(t, "transcript_oc 1",
		transcriptOC([]byte("123"), []byte("PartyA"), []byte("234"), []byte("PartyB")),
		mustHex(t, "6f6303323334065061727479420331323306506172747941"))
	checkBytes(t, "transcript_oc 2",
		transcriptOC([]byte("3456"), []byte("PartyA"), []byte("2345"), []byte("PartyB")),
		mustHex(t, "6f63043334353606506172747941043233343506506172747942"))
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDraftVectors checks every intermediate value of draft appendix B.3,
// first through the internal steps, then through the public API.
func TestDraftVectors(t *testing.T) {
	v := loadVectors(t)
	t.Log(v.Source)

	gs := generatorString(v.PRS, v.CI, v.SID)
	checkBytes(t, "generator_string", gs, v.GeneratorString)
	if zpad := len(gs) - (len(v.PRS) + 1) - (len(dsi) + 1) - (len(v.CI) + 1) - (len(v.SID) + 1) - 1; zpad != v.ZPADLength {
		t.Errorf("zero padding is %d bytes, want %d", zpad, v.ZPADLength)
	}
	h := sha512.Sum512(gs)
	checkBytes(t, "generator hash", h[:], v.GeneratorHash)
	checkBytes(t, "element_derivation(hash)", ristretto255.NewElement().FromUniformBytes(v.GeneratorHash).Encode(nil), v.G)
	g := calculateGenerator(v.PRS, v.CI, v.SID)
	checkBytes(t, "generator g", g.Encode(nil), v.G)

	ya, yb := decodeScalar(t, v.LowerYa), decodeScalar(t, v.LowerYb)
	checkBytes(t, "Ya", ristretto255.NewElement().ScalarMult(ya, g).Encode(nil), v.Ya)
	checkBytes(t, "Yb", ristretto255.NewElement().ScalarMult(yb, g).Encode(nil), v.Yb)

	ka, err := scalarMultVfy(ya, v.Yb)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := scalarMultVfy(yb, v.Ya)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "scalar_mult_vfy(ya,Yb)", ka, v.K)
	checkBytes(t, "scalar_mult_vfy(yb,Ya)", kb, v.K)

	tir := transcriptIR(v.Ya, v.ADa, v.Yb, v.ADb)
	checkBytes(t, "transcript_ir", tir, v.TranscriptIR)
	checkBytes(t, "DSI_ISK", []byte(dsi+"_ISK"), v.DSIISK)
	checkBytes(t, "lv_cat(DSI,sid,K)||transcript_ir", append(lvCat(nil, v.DSIISK, v.SID, v.K), tir...), v.ISKInputIR)
	checkBytes(t, "ISK_IR", deriveISK(v.SID, v.K, tir), v.ISKIR)

	toc := transcriptOC(v.Ya, v.ADa, v.Yb, v.ADb)
	checkBytes(t, "transcript_oc", toc, v.TranscriptOC)
	checkBytes(t, "lv_cat(DSI,sid,K)||transcript_oc", append(lvCat(nil, v.DSIISK, v.SID, v.K), toc...), v.ISKInputOC)
	checkBytes(t, "ISK_SY", deriveISK(v.SID, v.K, toc), v.ISKSY)

	// B.3.10: scalar_mult with valid inputs.
	s := decodeScalar(t, v.ScalarMultValid.S)
	x := ristretto255.NewElement()
	if err := x.Decode(v.ScalarMultValid.X); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "scalar_mult(s,decode(X))", ristretto255.NewElement().ScalarMult(s, x).Encode(nil), v.ScalarMultValid.Result)
	res, err := scalarMultVfy(s, v.ScalarMultValid.X)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "scalar_mult_vfy(s,X)", res, v.ScalarMultValid.Result)

	// B.3.11: invalid inputs must abort.
	s = decodeScalar(t, v.ScalarMultVfyInvalid.S)
	for name, y := range map[string][]byte{"Y_i1": v.ScalarMultVfyInvalid.Yi1, "Y_i2": v.ScalarMultVfyInvalid.Yi2} {
		if _, err := scalarMultVfy(s, y); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("scalar_mult_vfy(s,%s) error = %v, want ErrInvalidMessage", name, err)
		}
	}
}

// TestDraftVectorsPublicAPI runs the B.3 vectors through Start and Finish,
// feeding the draft's scalars as the random source.
func TestDraftVectorsPublicAPI(t *testing.T) {
	v := loadVectors(t)
	a, ya, err := Start(v.PRS, v.CI, v.SID, v.ADa, bytes.NewReader(v.LowerYa))
	if err != nil {
		t.Fatal(err)
	}
	b, yb, err := Start(v.PRS, v.CI, v.SID, v.ADb, bytes.NewReader(v.LowerYb))
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "Start A message", ya, v.Ya)
	checkBytes(t, "Start B message", yb, v.Yb)

	iskA, err := a.Finish(yb, v.ADb, Initiator)
	if err != nil {
		t.Fatal(err)
	}
	iskB, err := b.Finish(ya, v.ADa, Responder)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "initiator ISK", iskA, v.ISKIR)
	checkBytes(t, "responder ISK", iskB, v.ISKIR)

	if _, err := a.Finish(yb, v.ADb, Initiator); err == nil {
		t.Error("second Finish on a spent State succeeded")
	}
}

func run(t *testing.T, prsA, prsB, ciA, ciB, sidA, sidB, adA, adB []byte) (iskA, iskB []byte) {
	t.Helper()
	a, ya, err := Start(prsA, ciA, sidA, adA, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, yb, err := Start(prsB, ciB, sidB, adB, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if iskA, err = a.Finish(yb, adB, Initiator); err != nil {
		t.Fatal(err)
	}
	if iskB, err = b.Finish(ya, adA, Responder); err != nil {
		t.Fatal(err)
	}
	return iskA, iskB
}

func TestAgreement(t *testing.T) {
	pw, ci, sid := []byte("correct horse"), []byte("ci"), []byte("0123456789abcdef")
	adA, adB := []byte("alice"), []byte("bob")

	iskA, iskB := run(t, pw, pw, ci, ci, sid, sid, adA, adB)
	if !bytes.Equal(iskA, iskB) || len(iskA) != ISKSize {
		t.Fatalf("same inputs gave different keys:\n%x\n%x", iskA, iskB)
	}
	iskA2, _ := run(t, pw, pw, ci, ci, sid, sid, adA, adB)
	if bytes.Equal(iskA, iskA2) {
		t.Fatal("two runs with fresh scalars gave the same ISK")
	}

	differ := map[string][8][]byte{
		"wrong password": {pw, []byte("correct horsf"), ci, ci, sid, sid, adA, adB},
		"different CI":   {pw, pw, ci, []byte("cj"), sid, sid, adA, adB},
		"different sid":  {pw, pw, ci, ci, sid, []byte("0123456789abcdeF"), adA, adB},
	}
	for name, in := range differ {
		a, b := run(t, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7])
		if bytes.Equal(a, b) {
			t.Errorf("%s: both sides derived the same ISK", name)
		}
	}
}

// TestADIsAuthenticated checks that each side binds the AD it actually
// received: a peer that was told a different AD ends with a different key.
func TestADIsAuthenticated(t *testing.T) {
	pw := []byte("pw")
	a, ya, _ := Start(pw, nil, nil, []byte("A"), rand.Reader)
	b, yb, _ := Start(pw, nil, nil, []byte("B"), rand.Reader)
	iskA, err := a.Finish(yb, []byte("B-tampered"), Initiator)
	if err != nil {
		t.Fatal(err)
	}
	iskB, err := b.Finish(ya, []byte("A"), Responder)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(iskA, iskB) {
		t.Fatal("tampered AD gave the same ISK")
	}
}

// TestSameRoleDisagrees: two initiators order the transcript differently,
// so a reflected or role-confused run never agrees.
func TestSameRoleDisagrees(t *testing.T) {
	pw := []byte("pw")
	a, ya, _ := Start(pw, nil, nil, []byte("x"), rand.Reader)
	b, yb, _ := Start(pw, nil, nil, []byte("x"), rand.Reader)
	iskA, _ := a.Finish(yb, []byte("x"), Initiator)
	iskB, _ := b.Finish(ya, []byte("x"), Initiator)
	if bytes.Equal(iskA, iskB) {
		t.Fatal("two initiators derived the same ISK")
	}
}

func TestRejectsInvalidPeerMessages(t *testing.T) {
	v := loadVectors(t)
	nonCanonical := make([]byte, 32) // p = 2^255-19 encodes 0 non-canonically
	nonCanonical[0] = 0xed
	for i := 1; i < 31; i++ {
		nonCanonical[i] = 0xff
	}
	nonCanonical[31] = 0x7f
	negative := make([]byte, 32) // s = 1 is "negative" (odd)
	negative[0] = 1

	cases := map[string][]byte{
		"identity":             identity[:],
		"draft Y_i1":           v.ScalarMultVfyInvalid.Yi1,
		"empty":                nil,
		"short":                v.Yb[:31],
		"long":                 append(append([]byte(nil), v.Yb...), 0),
		"non-canonical":        nonCanonical,
		"negative field value": negative,
		"all ones":             bytes.Repeat([]byte{0xff}, 32),
	}
	a, _, err := Start(v.PRS, v.CI, v.SID, v.ADa, bytes.NewReader(v.LowerYa))
	if err != nil {
		t.Fatal(err)
	}
	for name, msg := range cases {
		isk, err := a.Finish(msg, v.ADb, Initiator)
		if !errors.Is(err, ErrInvalidMessage) || isk != nil {
			t.Errorf("%s: Finish = %x, %v; want ErrInvalidMessage", name, isk, err)
		}
	}
	// Rejections leave the State usable for the genuine message.
	isk, err := a.Finish(v.Yb, v.ADb, Initiator)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "ISK after rejected messages", isk, v.ISKIR)
}

func TestStartErrors(t *testing.T) {
	if _, _, err := Start(nil, nil, nil, nil, rand.Reader); err == nil {
		t.Error("Start accepted an empty password")
	}
	if _, _, err := Start([]byte("pw"), nil, nil, nil, bytes.NewReader(make([]byte, 10))); err == nil {
		t.Error("Start accepted a short random source")
	}
	if _, _, err := Start([]byte("pw"), nil, nil, nil, bytes.NewReader(make([]byte, 32*4))); err == nil {
		t.Error("Start accepted a random source of zeros")
	}
	// Top bits are cleared: an all-ones source is a valid 252-bit scalar.
	if _, _, err := Start([]byte("pw"), nil, nil, nil, bytes.NewReader(bytes.Repeat([]byte{0xff}, 32))); err != nil {
		t.Errorf("Start with all-ones randomness: %v", err)
	}
	s, _, err := Start([]byte("pw"), nil, nil, nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, peer, _ := Start([]byte("pw"), nil, nil, nil, rand.Reader)
	if _, err := s.Finish(peer, nil, Role(0)); err == nil {
		t.Error("Finish accepted role 0")
	}
}

func TestLongPasswordHasNoPadding(t *testing.T) {
	prs := bytes.Repeat([]byte("p"), 200)
	gs := generatorString(prs, nil, nil)
	want := lvCat(nil, []byte(dsi), prs, nil, nil, nil)
	checkBytes(t, "generator string for a 200-byte password", gs, want)
}

func FuzzFinish(f *testing.F) {
	v := loadVectors(f)
	f.Add([]byte(v.Yb), []byte(v.ADb))
	f.Add(identity[:], []byte{})
	f.Add([]byte(v.ScalarMultVfyInvalid.Yi1), []byte("x"))
	f.Add([]byte{1}, []byte(nil))
	f.Fuzz(func(t *testing.T, msg, ad []byte) {
		a, _, err := Start(v.PRS, v.CI, v.SID, v.ADa, bytes.NewReader(v.LowerYa))
		if err != nil {
			t.Fatal(err)
		}
		isk, err := a.Finish(msg, ad, Initiator)
		if err != nil {
			if !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// Accepted: msg must be the canonical encoding of a non-identity element.
		e := ristretto255.NewElement()
		if e.Decode(msg) != nil || !bytes.Equal(e.Encode(nil), msg) || bytes.Equal(msg, identity[:]) {
			t.Fatalf("accepted invalid message %x", msg)
		}
		if len(isk) != ISKSize {
			t.Fatalf("ISK has %d bytes", len(isk))
		}
	})
}

func BenchmarkRun(b *testing.B) {
	pw, ci, sid := []byte("password"), []byte("ci"), []byte("sid")
	for b.Loop() {
		a, ya, _ := Start(pw, ci, sid, nil, rand.Reader)
		r, yb, _ := Start(pw, ci, sid, nil, rand.Reader)
		if _, err := a.Finish(yb, nil, Initiator); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Finish(ya, nil, Responder); err != nil {
			b.Fatal(err)
		}
	}
}
