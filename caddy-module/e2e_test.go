package cerberus

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// A whole Caddy (loaded from a Caddyfile, listening on a Unix socket) in front of a
// fake daemon: the client IP is Caddy's own (X-Forwarded-For from a trusted proxy),
// and handle_errors renders the ban page from the placeholders.
func TestCaddyEndToEnd(t *testing.T) {
	dir := t.TempDir()
	// Caddy keeps its instance id and autosaves under these: not in $HOME.
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	daemonSock := filepath.Join(dir, "cerberus.sock")
	caddySock := filepath.Join(dir, "caddy.sock")
	f := startFake(t, daemonSock)
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 60, Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: "ban"})
	f.set("198.51.100.9", Answer{Remediation: Throttle, ExpiresInS: 30, Origin: "cscli", Scenario: "slow down", Type: "throttle"})

	caddyfile := `{
	admin off
	persist_config off
	auto_https off
	storage file_system ` + filepath.Join(dir, "storage") + `
	log default {
		output discard
	}
	servers {
		trusted_proxies_unix
	}
}

http:// {
	bind unix/` + caddySock + `
	cerberus {
		socket ` + daemonSock + `
		fail closed
		errors
	}
	handle /app/* {
		respond "app"
	}
	respond "welcome"

	handle_errors {
		respond "{http.cerberus.remediation} by {http.cerberus.origin} ({http.cerberus.scenario})" {err.status_code}
	}
}
`
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", caddySock)
		},
	}}
	tests := []struct {
		path         string
		forwardedFor string
		status       int
		body         string
		retryAfter   string
	}{
		{"/", "192.0.2.1", 200, "welcome", ""},
		{"/app/x", "192.0.2.1", 200, "app", ""},
		{"/", "198.51.100.7", 403, "ban by crowdsec (crowdsecurity/ssh-bf)", ""},
		{"/app/x", "198.51.100.7", 403, "ban by crowdsec (crowdsecurity/ssh-bf)", ""},
		{"/", "198.51.100.9", 429, "throttle by cscli (slow down)", "30"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost"+tt.path, nil)
		req.Header.Set("X-Forwarded-For", tt.forwardedFor)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.forwardedFor, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || strings.TrimSpace(string(body)) != tt.body {
			t.Errorf("%s: got %d %q, want %d %q", tt.forwardedFor, resp.StatusCode, body, tt.status, tt.body)
		}
		if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
			t.Errorf("%s: Retry-After %q, want %q", tt.forwardedFor, got, tt.retryAfter)
		}
	}

	// The daemon goes away: fail closed gives 503, rendered by handle_errors too.
	f.stop()
	req, _ := http.NewRequest(http.MethodGet, "http://localhost/", nil)
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.HasPrefix(string(body), "unavailable") {
		t.Errorf("daemon gone: got %d %q, want 503 unavailable", resp.StatusCode, body)
	}
}
