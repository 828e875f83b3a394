package cerberus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// provisioned returns a provisioned and validated handler for socket path.
func provisioned(t *testing.T, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// outcome is what one request through the handler did.
type outcome struct {
	nextCalled bool
	status     int // the HandlerError's status, 0 when no error
	err        error
	header     http.Header
	body       string
	repl       *caddy.Replacer
}

func (o outcome) placeholder(name string) string {
	v, _ := o.repl.GetString("http.cerberus." + name)
	return v
}

// serve runs one request from clientIP (Caddy's client_ip variable; empty: none)
// and remoteAddr through h, with an asserting next handler.
func serve(t *testing.T, h *Handler, clientIP, remoteAddr string) outcome {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.RemoteAddr = remoteAddr
	repl := caddy.NewReplacer()
	vars := map[string]any{}
	if clientIP != "" {
		vars[caddyhttp.ClientIPVarKey] = clientIP
	}
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, vars)
	req = req.WithContext(ctx)

	o := outcome{repl: repl}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if o.nextCalled {
			t.Error("next called twice")
		}
		o.nextCalled = true
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	rec := httptest.NewRecorder()
	o.err = h.ServeHTTP(rec, req, next)
	o.header = rec.Header()
	var he caddyhttp.HandlerError
	o.body = rec.Body.String()
	if o.err == nil && !o.nextCalled {
		o.status = rec.Code // answered directly by the handler
	}
	if errors.As(o.err, &he) {
		o.status = he.StatusCode
	} else if o.err != nil {
		t.Fatalf("error that is not a caddyhttp.HandlerError: %v", o.err)
	}
	if o.nextCalled && rec.Code != http.StatusTeapot {
		t.Errorf("next was called but the response is %d", rec.Code)
	}
	return o
}

func TestServeHTTPVerdicts(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 14400, Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: "ban"})
	f.set("198.51.100.8", Answer{Remediation: Captcha, ExpiresInS: 600, Origin: "CAPI", Scenario: "crowdsecurity/http-probing", Type: "captcha"})
	f.set("198.51.100.9", Answer{Remediation: Throttle, ExpiresInS: 60, Origin: "cscli", Scenario: "manual", Type: "throttle"})
	f.set("198.51.100.10", Answer{Remediation: Throttle, ExpiresInS: 0, Origin: "cscli", Type: "throttle"})
	f.set("198.51.100.11", Answer{Remediation: Other, ExpiresInS: 5, Origin: "lists", Scenario: "firehol", Type: "mfa"})
	f.set("2001:db8::bad", Answer{Remediation: Ban, Origin: "cscli", Scenario: "v6", Type: "ban"})
	f.set("192.0.2.99", Answer{Remediation: Allow, Flags: FlagBypassed})
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second), Fail: FailClosed})

	tests := []struct {
		name        string
		clientIP    string
		remoteAddr  string
		wantNext    bool
		wantStatus  int
		retryAfter  string
		remediation string
		origin      string
		scenario    string
	}{
		{"allow", "192.0.2.1", "192.0.2.1:5000", true, 0, "", "allow", "", ""},
		{"bypassed is allow", "192.0.2.99", "192.0.2.99:5000", true, 0, "", "allow", "", ""},
		{"ban", "198.51.100.7", "192.0.2.1:5000", false, 403, "", "ban", "crowdsec", "crowdsecurity/ssh-bf"},
		{"captcha answered as ban", "198.51.100.8", "", false, 403, "", "captcha", "CAPI", "crowdsecurity/http-probing"},
		{"throttle", "198.51.100.9", "", false, 429, "60", "throttle", "cscli", "manual"},
		{"throttle without expiry", "198.51.100.10", "", false, 429, "1", "throttle", "cscli", ""},
		{"other treated as ban", "198.51.100.11", "", false, 403, "", "other", "lists", "firehol"},
		{"ipv6 ban", "2001:db8::bad", "", false, 403, "", "ban", "cscli", "v6"},
		{"ipv4-mapped client ip", "::ffff:198.51.100.7", "", false, 403, "", "ban", "crowdsec", "crowdsecurity/ssh-bf"},
		// client_ip wins over the connection's address: trusted_proxies apply.
		{"client_ip over remote addr", "192.0.2.1", "198.51.100.7:443", true, 0, "", "allow", "", ""},
		{"remote addr fallback", "", "198.51.100.7:443", false, 403, "", "ban", "crowdsec", "crowdsecurity/ssh-bf"},
		{"remote addr fallback v6", "", "[2001:db8::bad]:443", false, 403, "", "ban", "cscli", "v6"},
		{"no client ip: fail policy (closed)", "", "@", false, 503, "", "unavailable", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := serve(t, h, tt.clientIP, tt.remoteAddr)
			if o.nextCalled != tt.wantNext {
				t.Errorf("next called = %v, want %v (err %v)", o.nextCalled, tt.wantNext, o.err)
			}
			if o.status != tt.wantStatus {
				t.Errorf("status = %d, want %d", o.status, tt.wantStatus)
			}
			if got := o.header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			for name, want := range map[string]string{"remediation": tt.remediation, "origin": tt.origin, "scenario": tt.scenario} {
				if got := o.placeholder(name); got != want {
					t.Errorf("{http.cerberus.%s} = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// When the daemon gives no usable answer, the fail policy decides.
func TestServeHTTPFailPolicy(t *testing.T) {
	type setup func(t *testing.T, path string)
	running := func(fn func(f *fakeDaemon)) setup {
		return func(t *testing.T, path string) { startFake(t, path).configure(fn) }
	}
	tests := []struct {
		name  string
		setup setup
	}{
		{"daemon gone", func(t *testing.T, path string) {}},
		{"timeout", running(func(f *fakeDaemon) { f.silent = true })},
		{"not ready", running(func(f *fakeDaemon) { f.notReady = true })},
		{"busy", running(func(f *fakeDaemon) { f.answers = nil; f.errFor[mustAddr("192.0.2.1")] = CodeBusy })},
	}
	for _, tt := range tests {
		for _, policy := range []string{FailOpen, FailClosed} {
			t.Run(tt.name+"/fail "+policy, func(t *testing.T) {
				path := socketPath(t)
				tt.setup(t, path)
				h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(30 * time.Millisecond), Fail: policy})
				o := serve(t, h, "192.0.2.1", "192.0.2.1:1234")
				if policy == FailOpen {
					if !o.nextCalled || o.err != nil {
						t.Errorf("fail open: next called %v, err %v; want next and no error", o.nextCalled, o.err)
					}
				} else if o.nextCalled || o.status != http.StatusServiceUnavailable {
					t.Errorf("fail closed: next called %v, status %d; want 503", o.nextCalled, o.status)
				}
				if got := o.placeholder("remediation"); got != "unavailable" {
					t.Errorf("{http.cerberus.remediation} = %q, want unavailable", got)
				}
			})
		}
	}
}

// After a daemon restart the next request gets the new daemon's answer, not the
// fail policy: the broken connection is replaced and the request sent again.
func TestServeHTTPDaemonRestart(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	h := provisioned(t, &Handler{Socket: path, Fail: FailClosed, Timeout: caddy.Duration(time.Second), Connections: 1})
	if o := serve(t, h, "192.0.2.1", ""); !o.nextCalled {
		t.Fatalf("before restart: %v", o.err)
	}
	f.stop()
	if o := serve(t, h, "192.0.2.1", ""); o.status != http.StatusServiceUnavailable {
		t.Fatalf("daemon down, fail closed: status %d, want 503", o.status)
	}
	f2 := startFake(t, path)
	f2.set("192.0.2.1", Answer{Remediation: Ban, Origin: "cscli", Scenario: "banned while down"})
	o := serve(t, h, "192.0.2.1", "")
	if o.status != http.StatusForbidden || o.placeholder("scenario") != "banned while down" {
		t.Fatalf("after restart: status %d, scenario %q, err %v", o.status, o.placeholder("scenario"), o.err)
	}
}

// Many requests at once share the pool and each gets its own verdict.
func TestServeHTTPConcurrent(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.configure(func(f *fakeDaemon) { f.reverse = true })
	for i := range 50 {
		if i%2 == 1 {
			f.set(fmt.Sprintf("10.1.0.%d", i), Answer{Remediation: Ban, Scenario: fmt.Sprintf("s%d", i)})
		}
	}
	h := provisioned(t, &Handler{Socket: path, Fail: FailClosed, Timeout: caddy.Duration(5 * time.Second), Connections: 2})
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			for range 40 {
				o := serve(t, h, fmt.Sprintf("10.1.0.%d", i), "")
				banned := i%2 == 1
				if banned && (o.status != 403 || o.placeholder("scenario") != fmt.Sprintf("s%d", i)) ||
					!banned && !o.nextCalled {
					t.Errorf("client %d: status %d, scenario %q, next %v", i, o.status, o.placeholder("scenario"), o.nextCalled)
					return
				}
			}
		})
	}
	wg.Wait()
}

// Failures are logged at most once per interval, with the count since the last log.
func TestFailureLogIsRateLimited(t *testing.T) {
	h := provisioned(t, &Handler{Socket: socketPath(t), Fail: FailOpen})
	core, logs := observer.New(zapcore.WarnLevel)
	h.failLog = &rateLimitedLog{logger: zap.New(core), every: time.Hour}
	for range 5 {
		serve(t, h, "192.0.2.1", "")
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d logs for 5 failures within the interval, want 1", n)
	}
	h.failLog.every = 0 // the interval has passed
	serve(t, h, "192.0.2.1", "")
	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("%d logs, want 2", len(entries))
	}
	if got := entries[1].ContextMap()["failures_since_last_log"]; got != int64(5) {
		t.Errorf("failures_since_last_log = %v, want 5 (4 suppressed + this one)", got)
	}
	if got := entries[0].ContextMap()["reason"]; got != "connect" {
		t.Errorf("reason = %v, want connect", got)
	}
}

func TestProvisionDefaults(t *testing.T) {
	h := provisioned(t, &Handler{})
	if h.Socket != DefaultSocket || time.Duration(h.Timeout) != DefaultTimeout || h.Fail != FailOpen || h.Connections != DefaultConnections {
		t.Errorf("defaults: %+v", h)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		h    Handler
		want string
	}{
		{Handler{Fail: "open"}, ""},
		{Handler{Fail: "closed"}, ""},
		{Handler{Fail: "maybe"}, `fail must be "open" or "closed"`},
		{Handler{Fail: "open", Timeout: -1}, "timeout must not be negative"},
		{Handler{Fail: "open", Connections: -1}, "connections must not be negative"},
	}
	for _, tt := range tests {
		err := tt.h.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !contains(err.Error(), tt.want)) {
			t.Errorf("%+v: got %v, want %q", tt.h, err, tt.want)
		}
	}
}

// Cleanup works on a handler that was never (or only partly) provisioned.
func TestCleanupWithoutProvision(t *testing.T) {
	var h Handler
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	h2 := provisioned(t, &Handler{Socket: socketPath(t)})
	if err := h2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := h2.Cleanup(); err != nil {
		t.Fatal(err)
	}
}
