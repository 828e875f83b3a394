package cerberus

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Verdicts and failures are counted by remediation and by reason.
func TestMetricsCount(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban})
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second)})
	bans, allows := verdicts.count(Ban), verdicts.count(Allow)
	serve(t, h, "198.51.100.7", "")
	serve(t, h, "192.0.2.1", "")
	serve(t, h, "192.0.2.1", "")
	if d := verdicts.count(Ban) - bans; d != 1 {
		t.Errorf("ban verdicts +%v, want +1", d)
	}
	if d := verdicts.count(Allow) - allows; d != 2 {
		t.Errorf("allow verdicts +%v, want +2", d)
	}

	f.stop()
	connects := testutil.ToFloat64(failures.WithLabelValues("connect"))
	serve(t, h, "192.0.2.1", "")
	if d := testutil.ToFloat64(failures.WithLabelValues("connect")) - connects; d != 1 {
		t.Errorf("connect failures +%v, want +1", d)
	}
}

// The striped verdict counter is exposed as one counter vector: every remediation,
// under the metric's name, with the counts of the stripes summed.
func TestVerdictsExposition(t *testing.T) {
	v := newVerdictCounter()
	for i := uint32(0); i < 100; i++ {
		v.inc(Allow, i) // over every stripe
	}
	v.inc(Throttle, 3)
	v.inc(Remediation(9), 0)
	reg := prometheus.NewRegistry()
	if err := reg.Register(v); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP caddy_http_cerberus_verdicts_total Answers of the cerberus daemon, by remediation.
# TYPE caddy_http_cerberus_verdicts_total counter
caddy_http_cerberus_verdicts_total{remediation="allow"} 100
caddy_http_cerberus_verdicts_total{remediation="ban"} 0
caddy_http_cerberus_verdicts_total{remediation="captcha"} 0
caddy_http_cerberus_verdicts_total{remediation="other"} 0
caddy_http_cerberus_verdicts_total{remediation="remediation(9)"} 1
caddy_http_cerberus_verdicts_total{remediation="throttle"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
