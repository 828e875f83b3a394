// Package cerberus is a Caddy HTTP handler that asks the cerberus daemon (a CrowdSec
// bouncer) what to do with each request's client address, over the daemon's Unix
// socket, and allows, refuses (403) or throttles (429) the request accordingly.
package cerberus

import (
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the configuration.
const (
	DefaultSocket      = "/run/cerberus/cerberus.sock"
	DefaultTimeout     = 20 * time.Millisecond
	DefaultConnections = 4
	FailOpen           = "open"
	FailClosed         = "closed"
)

// failLogEvery is the shortest interval between two "daemon unavailable" logs.
const failLogEvery = 10 * time.Second

// Handler asks the cerberus daemon about every request's client address.
//
// The client address is Caddy's own (the `client_ip` variable), so the server's
// `trusted_proxies` and `client_ip_headers` apply. Verdicts:
//
//   - allow: the next handler runs.
//   - ban, and `other` (a decision type the daemon does not map; treated as ban, as
//     CrowdSec's bouncers do with their default fallback remediation): status 403.
//   - captcha: answered as ban (403) until captcha support exists; the placeholder
//     `{http.cerberus.remediation}` still says `captcha`.
//   - throttle: status 429 with a `Retry-After` header (seconds until the decision
//     expires, at least 1).
//
// Refusals are answered by the handler itself with the built-in page (or the
// `ban_template`), no error log per request; with `errors` they are Caddy HTTP
// errors instead, which `handle_errors` can render.
//
// In every case the handler sets the placeholders `{http.cerberus.remediation}`
// (allow, ban, captcha, throttle, other, or `unavailable` when the daemon did not
// answer), `{http.cerberus.origin}`, `{http.cerberus.scenario}`,
// `{http.cerberus.type}` and `{http.cerberus.expires_in_s}`.
//
// When the daemon is unreachable, times out, answers with an error, or says that it
// has no decision set yet (`not_ready`), the `fail` policy decides. Such failures
// are logged at most once every 10 s (with the number of failures since the last
// log) and counted in the Prometheus counter
// `caddy_http_cerberus_failures_total{reason}` (reason: connect, timeout, broken,
// daemon_error, not_ready, no_client_ip). Verdicts are counted in
// `caddy_http_cerberus_verdicts_total{remediation}`.
type Handler struct {
	// Socket is the path of the daemon's Unix socket.
	// Default: /run/cerberus/cerberus.sock.
	Socket string `json:"socket,omitempty"`

	// Timeout bounds one lookup, connecting included. Default: 20ms. The daemon
	// answers in microseconds; this only bounds the damage when it is stuck.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Fail is what to do when the daemon gives no usable answer: "open" (pass the
	// request) or "closed" (refuse it with a 503 error). Default: "open", because
	// the daemon is a filter in front of a working site: a crashed or restarting
	// bouncer should not take the site down with it, and the daemon itself already
	// applies its own `on_lapi_unreachable` policy when it runs but cannot sync.
	// Choose "closed" where letting a banned client through is worse than an
	// outage.
	Fail string `json:"fail,omitempty"`

	// Connections is the number of connections kept open to the daemon; every
	// connection carries many concurrent lookups. Default: 4.
	Connections int `json:"connections,omitempty"`

	// Errors makes refusals (403, 429, fail-closed 503) Caddy HTTP errors, for
	// `handle_errors` to render. Default: false, the handler answers them itself
	// with the ban page.
	Errors bool `json:"errors,omitempty"`

	// SnapshotDir is the daemon's snapshot segment directory (its `snapshot_dir`),
	// mapped read-only so that lookups need no socket round trip; "off": socket
	// only. Default: the socket's directory + "/snapshot". When the segments cannot
	// be mapped (missing, other mount namespace, permission, daemon gone) lookups use
	// the socket, and a log line says why.
	SnapshotDir string `json:"snapshot_dir,omitempty"`

	// BanTemplate is the path of an html/template file used as the page of a
	// refusal instead of the built-in one (fields: see PageData). Values are
	// escaped by html/template; never mark LAPI data (Origin, Scenario) as safe.
	BanTemplate string `json:"ban_template,omitempty"`

	// Appsec is "on" (default) or "off". On: every request the IP check allowed is
	// also inspected by CrowdSec's AppSec through the daemon (when the daemon has
	// `appsec_url`; otherwise it says so and the handler stops asking for 10 s), its
	// body read up to AppsecMaxBody and handed to the next handler unchanged.
	Appsec string `json:"appsec,omitempty"`

	// AppsecMaxBody is the most of a body sent to AppSec, in bytes; longer bodies
	// are sent cut (the daemon's `appsec_fail: closed` refuses them). Default: 1 MiB.
	AppsecMaxBody int `json:"appsec_max_body,omitempty"`

	appsec  *appsecState
	client  *Client
	logger  *zap.Logger
	failLog *rateLimitedLog
	page    *template.Template
	snap    *snapReader
	counts  *reportCounts
	stopRep chan struct{}
	repDone chan struct{}
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.cerberus",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in the defaults and prepares the client. It does not dial: the
// first request does, so Caddy starts even while the daemon is down.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Socket == "" {
		h.Socket = DefaultSocket
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(DefaultTimeout)
	}
	if h.Fail == "" {
		h.Fail = FailOpen
	}
	if h.Connections == 0 {
		h.Connections = DefaultConnections
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	h.failLog = &rateLimitedLog{logger: h.logger, every: failLogEvery}
	page, err := loadTemplate(h.BanTemplate)
	if err != nil {
		return err
	}
	h.page = page
	h.client = NewClient(h.Socket, h.Connections, time.Duration(h.Timeout))
	if h.Appsec == "" {
		h.Appsec = "on"
	}
	if h.AppsecMaxBody == 0 {
		h.AppsecMaxBody = DefaultAppsecMaxBody
	}
	if h.Appsec == "on" {
		// Connections of their own: the daemon answers AppSec requests of one
		// connection in order, and lookups must not wait behind them.
		h.appsec = &appsecState{client: NewClient(h.Socket, max(h.Connections, 16), DefaultAppsecTimeout)}
	}
	if h.SnapshotDir == "" {
		h.SnapshotDir = filepath.Join(filepath.Dir(h.Socket), "snapshot")
	}
	if h.SnapshotDir != "off" {
		h.snap = acquireSnapshot(h.SnapshotDir, h.logger)
		h.counts = newReportCounts()
		h.stopRep, h.repDone = make(chan struct{}), make(chan struct{})
		go runReporter(h.client, h.counts, h.logger, h.stopRep, h.repDone)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.Fail != FailOpen && h.Fail != FailClosed {
		return fmt.Errorf("cerberus: fail must be %q or %q, not %q", FailOpen, FailClosed, h.Fail)
	}
	if h.Timeout < 0 {
		return fmt.Errorf("cerberus: timeout must not be negative")
	}
	if h.Connections < 0 {
		return fmt.Errorf("cerberus: connections must not be negative")
	}
	if h.Appsec != "" && h.Appsec != "on" && h.Appsec != "off" {
		return fmt.Errorf("cerberus: appsec must be on or off, not %q", h.Appsec)
	}
	if h.AppsecMaxBody < 0 || h.AppsecMaxBody > 16<<20 {
		return fmt.Errorf("cerberus: appsec_max_body must be from 0 to 16777216 bytes")
	}
	return nil
}

// Cleanup closes the connections. It works whatever Provision did.
func (h *Handler) Cleanup() error {
	if h.snap != nil {
		close(h.stopRep) // one last report, then the connections close below
		<-h.repDone
		h.snap.release()
		h.snap = nil
	}
	if h.appsec != nil {
		_ = h.appsec.client.Close()
	}
	if h.client != nil {
		return h.client.Close()
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler. The allowed path, almost every
// request, stays in small frames: what refuses, fails or asks the socket is in
// functions of its own, so a request that needs none of it grows no goroutine stack
// (a grown stack is copied, and shrunk again by the next GC).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil { // not served by Caddy's server (direct use, some tests)
		repl = caddy.NewReplacer()
	}
	addr, ok := clientAddr(r)
	if !ok {
		return h.noClientIP(w, r, next, repl)
	}
	var ans Answer
	mapped, hint, now := false, hintOf(r), time.Now()
	if h.snap != nil {
		ans, mapped = h.snap.lookup(addr, uint32(now.Unix()), hint)
		if mapped {
			h.counts.add(ans, hint)
		}
	}
	if !mapped {
		var err error
		if ans, err = h.askSocket(r, addr); err != nil {
			return h.failure(w, r, next, repl, failureReason(err), err)
		}
	}
	setPlaceholders(repl, ans)
	verdicts.inc(ans.Remediation, hint)
	if ans.Remediation != Allow {
		return h.deny(w, r, next, repl, addr, &ans)
	}
	if h.inspects(now.UnixNano()) {
		return h.inspect(w, r, next, repl, addr)
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) noClientIP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	return h.failure(w, r, next, repl, "no_client_ip", fmt.Errorf("no client IP address in %q", r.RemoteAddr))
}

// askSocket looks addr up through the daemon's socket (no mapped snapshot).
func (h *Handler) askSocket(r *http.Request, addr netip.Addr) (Answer, error) {
	ans, err := h.client.Lookup(r.Context(), addr)
	if err == nil && ans.Status == StatusNotReady {
		err = errNotReady
	}
	return ans, err
}

// errNotReady: the daemon has no decision set yet (failure reason not_ready).
var errNotReady = errors.New("daemon has no decision set yet")

// deny answers a request whose address has a decision: the captcha flow, or a
// refusal (403, or 429 for a throttle).
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, addr netip.Addr, ans *Answer) error {
	d := PageData{Status: http.StatusForbidden, Title: "Access denied", IP: addr.String(),
		Remediation: ans.Remediation.String(), Origin: ans.Origin, Scenario: ans.Scenario,
		Type: ans.Type, RetryAfter: ans.ExpiresInS}
	if ans.Remediation == Throttle {
		d.Status, d.Title = http.StatusTooManyRequests, "Too many requests"
	}
	// ban, other, and a captcha the daemon refuses: 403. The error (for `errors`)
	// is built only when it is used.
	var cause error
	if h.Errors {
		cause = fmt.Errorf("cerberus: %s: %s by %s (%s)", addr, ans.Remediation, ans.Origin, ans.Scenario)
	}
	if ans.Remediation == Captcha {
		passed, err := h.captcha(w, r, addr, false, d, cause)
		if !passed {
			return err
		}
		// Cleared by the captcha: the request is inspected like any allowed one.
		if h.inspects(time.Now().UnixNano()) {
			return h.inspect(w, r, next, repl, addr)
		}
		return next.ServeHTTP(w, r)
	}
	return h.refuse(w, d, cause)
}

// failure applies the fail policy to a request the daemon gave no usable answer for.
func (h *Handler) failure(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, reason string, err error) error {
	repl.Set("http.cerberus.remediation", "unavailable")
	repl.Set("http.cerberus.origin", "")
	repl.Set("http.cerberus.scenario", "")
	repl.Set("http.cerberus.type", "")
	repl.Set("http.cerberus.expires_in_s", "0")
	failures.WithLabelValues(reason).Inc()
	h.failLog.record(reason, h.Fail, err)
	if h.Fail == FailClosed {
		return h.refuse(w, PageData{Status: http.StatusServiceUnavailable, Title: "Service unavailable",
			Remediation: "unavailable"}, fmt.Errorf("cerberus: fail closed: %w", err))
	}
	return next.ServeHTTP(w, r)
}

func failureReason(err error) string {
	var se *ServerError
	switch {
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrConnect):
		return "connect"
	case errors.Is(err, errNotReady):
		return "not_ready"
	case errors.As(err, &se):
		return "daemon_error"
	}
	return "broken"
}

// clientAddr returns Caddy's client IP (which honours trusted_proxies), falling
// back to the connection's remote address.
func clientAddr(r *http.Request) (netip.Addr, bool) {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if s == "" {
		s = r.RemoteAddr
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.WithZone("").Unmap(), true
}

// rateLimitedLog logs daemon failures at most once per interval, with a count of
// the failures since the previous log.
type rateLimitedLog struct {
	logger *zap.Logger
	every  time.Duration

	mu     sync.Mutex
	last   time.Time
	missed int
}

func (l *rateLimitedLog) record(reason, policy string, err error) {
	l.mu.Lock()
	l.missed++
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.mu.Unlock()
		return
	}
	n := l.missed
	l.missed = 0
	l.last = now
	l.mu.Unlock()
	l.logger.Warn("cerberus daemon gave no usable answer; applying the fail policy",
		zap.String("reason", reason),
		zap.String("fail", policy),
		zap.Int("failures_since_last_log", n),
		zap.Error(err))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
