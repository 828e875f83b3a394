package cerberus

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Every placeholder reads back what the daemon answered, through the replacer as a
// Caddyfile uses it; a plain allow gives the empty values; unknown names stay unknown.
func TestPlaceholders(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 14400, Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: "ban"})
	f.set("198.51.100.9", Answer{Remediation: Throttle, ExpiresInS: 60, Origin: "cscli", Type: "slow"})
	f.set("192.0.2.99", Answer{Remediation: Allow, Flags: FlagBypassed})
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second), SnapshotDir: "off", Appsec: "off"})
	const all = "{http.cerberus.remediation}|{http.cerberus.origin}|{http.cerberus.scenario}|{http.cerberus.type}|{http.cerberus.expires_in_s}"
	for ip, want := range map[string]string{
		"198.51.100.7": "ban|crowdsec|crowdsecurity/ssh-bf|ban|14400",
		"198.51.100.9": "throttle|cscli||slow|60",
		"192.0.2.1":    "allow||||0",
		"192.0.2.99":   "allow||||0",
	} {
		o := serve(t, h, ip, "")
		if got := o.repl.ReplaceKnown(all, ""); got != want {
			t.Errorf("%s: %q, want %q", ip, got, want)
		}
		for _, key := range []string{"http.cerberus.nope", "http.cerberus", "http.cerberus.remediationx"} {
			if v, ok := o.repl.Get(key); ok {
				t.Errorf("%s: %s known as %v", ip, key, v)
			}
		}
	}
}

// A value Set later (the failure path, AppSec's refusal) wins over the IP answer's.
func TestPlaceholdersSetLaterWins(t *testing.T) {
	repl := caddy.NewReplacer()
	setPlaceholders(repl, Answer{Remediation: Allow})
	repl.Set("http.cerberus.remediation", "ban")
	repl.Set("http.cerberus.origin", "appsec")
	if got := repl.ReplaceAll("{http.cerberus.remediation} {http.cerberus.origin} {http.cerberus.expires_in_s}", "-"); got != "ban appsec 0" {
		t.Fatalf("%q", got)
	}
}

// A plain allow, the answer to almost every request, gives the replacer a provider
// without allocating.
func TestPlainAllowPlaceholdersDoNotAllocate(t *testing.T) {
	repls := make([]*caddy.Replacer, 1000)
	for i := range repls {
		repls[i] = caddy.NewReplacer()
		repls[i].Map(plainAllow) // room for one more provider, as Caddy's server leaves
	}
	i := 0
	allocs := testing.AllocsPerRun(len(repls)-1, func() {
		setPlaceholders(repls[i], Answer{Remediation: Allow, Flags: FlagBypassed})
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}
