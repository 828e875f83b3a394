package cerberus

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Verdicts and failures are counted by remediation and by reason.
func TestMetricsCount(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban})
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second)})
	bans := testutil.ToFloat64(verdicts.WithLabelValues("ban"))
	allows := testutil.ToFloat64(verdicts.WithLabelValues("allow"))
	serve(t, h, "198.51.100.7", "")
	serve(t, h, "192.0.2.1", "")
	serve(t, h, "192.0.2.1", "")
	if d := testutil.ToFloat64(verdicts.WithLabelValues("ban")) - bans; d != 1 {
		t.Errorf("ban verdicts +%v, want +1", d)
	}
	if d := testutil.ToFloat64(verdicts.WithLabelValues("allow")) - allows; d != 2 {
		t.Errorf("allow verdicts +%v, want +2", d)
	}

	f.stop()
	connects := testutil.ToFloat64(failures.WithLabelValues("connect"))
	serve(t, h, "192.0.2.1", "")
	if d := testutil.ToFloat64(failures.WithLabelValues("connect")) - connects; d != 1 {
		t.Errorf("connect failures +%v, want +1", d)
	}
}
