package cerberus

import (
	"bytes"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
)

// The built-in page written by hand is the template's output, byte for byte, for
// every status it tells apart and for values full of what must be escaped.
func TestBuiltinPageMatchesItsTemplate(t *testing.T) {
	nasty := []string{"", "plain", `<script>alert("x")</script>`, "a&b'c+d", "\x00nul", "é€ü",
		"\xff\xfe bad utf-8", "&amp; already", "line\nbreak", "{{.Title}}"}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("ab<>&\"'+\x00é\u2028 /=")
	for i := 0; i < 500; i++ {
		r := make([]rune, rng.IntN(12))
		for j := range r {
			r[j] = alphabet[rng.IntN(len(alphabet))]
		}
		nasty = append(nasty, string(r))
	}
	pick := func() string { return nasty[rng.IntN(len(nasty))] }
	for i, status := range []int{403, 429, 503, 403, 451} {
		for n := 0; n < 200; n++ {
			d := PageData{Status: status, Title: pick(), IP: pick(), Remediation: pick(),
				Origin: pick(), Scenario: pick(), Type: pick(), RetryAfter: uint32(n)}
			if n == 0 {
				d.Scenario = ""
			}
			var want, got bytes.Buffer
			if err := defaultPage.Execute(&want, d); err != nil {
				t.Fatal(err)
			}
			writeBuiltinPage(&got, &d)
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("case %d/%d %+v:\ngot:\n%s\nwant:\n%s", i, n, d, got.Bytes(), want.Bytes())
			}
		}
	}
}

func BenchmarkRefuseBuiltinPage(b *testing.B) {
	h := &Handler{}
	d := PageData{Status: 403, Title: "Access denied", IP: "10.1.2.3", Remediation: "ban",
		Origin: "cscli", Scenario: "crowdsecurity/http-probing"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = h.refuse(httptest.NewRecorder(), d, nil)
	}
}

func BenchmarkRefuseTemplatePage(b *testing.B) {
	h := &Handler{page: defaultPage}
	d := PageData{Status: 403, Title: "Access denied", IP: "10.1.2.3", Remediation: "ban",
		Origin: "cscli", Scenario: "crowdsecurity/http-probing"}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = h.refuse(httptest.NewRecorder(), d, nil)
	}
}
