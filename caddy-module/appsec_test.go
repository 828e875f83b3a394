package cerberus

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// post sends a POST with body from 192.0.2.20 through h; it returns the status the
// client got and the body the next handler read (nil when it did not run).
func post(t *testing.T, h *Handler, body string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "http://example.com/form?a=1", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	repl := caddy.NewReplacer()
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.20"})
	req = req.WithContext(ctx)
	var got []byte
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("upstream read: %v", err)
		}
		got = b
		w.WriteHeader(http.StatusOK)
		return nil
	})
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, req, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return rec.Code, got
}

// frameBody returns the body carried by an AppSec frame and its truncated flag.
func frameBody(t *testing.T, frame []byte) ([]byte, bool) {
	t.Helper()
	r, err := DecodeAppsec(frame)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return r.Body, r.Truncated
}

func TestAppsecBodyGoesToTheDaemonAndUnchangedToTheUpstream(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	h := provisioned(t, &Handler{Socket: path, SnapshotDir: "off", AppsecMaxBody: 8})
	body := "0123456789abcdef" // longer than the limit
	status, got := post(t, h, body)
	if status != http.StatusOK || string(got) != body {
		t.Fatalf("status %d, upstream got %q, want 200 and %q", status, got, body)
	}
	f.mu.Lock()
	seen := f.appsecSeen
	f.mu.Unlock()
	if len(seen) != 1 {
		t.Fatalf("%d AppSec frames, want 1", len(seen))
	}
	sent, truncated := frameBody(t, seen[0])
	if string(sent) != body[:8] || !truncated {
		t.Fatalf("sent %q (truncated %v), want %q truncated", sent, truncated, body[:8])
	}
	for _, want := range []string{"POST", "/form?a=1", "example.com", "Content-Type", "192"} {
		if want == "192" {
			if !bytes.Contains(seen[0], []byte{4, 192, 0, 2, 20}) {
				t.Errorf("the client address is not in the frame")
			}
			continue
		}
		if !bytes.Contains(seen[0], []byte(want)) {
			t.Errorf("%q is not in the frame", want)
		}
	}
}

func TestAppsecVerdictsRefuseOrServe(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	h := provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	for _, tc := range []struct {
		answer AppsecAnswer
		want   int
	}{
		{AppsecAnswer{Remediation: Ban, Reason: AppsecVerdict}, http.StatusForbidden},
		{AppsecAnswer{Remediation: Ban, Reason: AppsecFailed}, http.StatusForbidden},
		{AppsecAnswer{Remediation: Allow, Reason: AppsecFailed}, http.StatusOK},
		{AppsecAnswer{Remediation: Allow, Reason: AppsecVerdict}, http.StatusOK},
	} {
		f.configure(func(f *fakeDaemon) { f.appsecAnswer = tc.answer })
		status, got := post(t, h, "hello")
		if status != tc.want {
			t.Errorf("%+v: status %d, want %d", tc.answer, status, tc.want)
		}
		if (tc.want == http.StatusOK) != (got != nil) {
			t.Errorf("%+v: upstream ran %v", tc.answer, got != nil)
		}
	}
}

func TestAppsecOffIsNotAsked(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	off := provisioned(t, &Handler{Socket: path, SnapshotDir: "off", Appsec: "off"})
	if status, got := post(t, off, "x"); status != http.StatusOK || string(got) != "x" {
		t.Fatalf("appsec off: %d %q", status, got)
	}
	// A daemon without AppSec says so once; the handler then stops asking.
	f.configure(func(f *fakeDaemon) { f.appsecAnswer = AppsecAnswer{Reason: AppsecOff} })
	on := provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	for i := 0; i < 3; i++ {
		if status, _ := post(t, on, "x"); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
	}
	f.mu.Lock()
	n := len(f.appsecSeen)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d AppSec frames, want 1 (none from `appsec off`, one before the daemon said off)", n)
	}
}

func TestAppsecCaptchaGoesToTheDaemonsCaptchaFlow(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	h := provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	challenge := CaptchaAnswer{Action: CaptchaRespond, Status: http.StatusUnauthorized,
		Headers: [][2]string{{"Content-Type", "text/html; charset=utf-8"}}, Body: []byte("<p>prove it</p>")}
	f.configure(func(f *fakeDaemon) {
		f.appsecAnswer = AppsecAnswer{Remediation: Captcha, Reason: AppsecVerdict}
		f.captchaAnswer = challenge
	})
	req := httptest.NewRequest(http.MethodGet, "http://example.com/login?next=%2F", nil)
	rec := httptest.NewRecorder()
	ran := false
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { ran = true; return nil })
	repl := caddy.NewReplacer()
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.20"})
	if err := h.ServeHTTP(rec, req.WithContext(ctx), next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	if ran || rec.Code != http.StatusUnauthorized || rec.Body.String() != "<p>prove it</p>" {
		t.Fatalf("AppSec captcha: upstream ran %v, wrote %d %q; want the daemon's challenge", ran, rec.Code, rec.Body.String())
	}
	f.mu.Lock()
	seen := append([]CaptchaRequest(nil), f.captchaSeen...)
	f.mu.Unlock()
	if len(seen) != 1 || !seen[0].FromAppsec || seen[0].URI != "/login?next=%2F" || seen[0].Addr.String() != "192.0.2.20" {
		t.Fatalf("captcha requests %+v, want one from AppSec for /login?next=%%2F", seen)
	}

	// Cleared (the daemon passes it): the request is served, its body unchanged.
	f.configure(func(f *fakeDaemon) { f.captchaAnswer = CaptchaAnswer{Action: CaptchaPass} })
	if status, got := post(t, h, "a=1&b=2"); status != http.StatusOK || string(got) != "a=1&b=2" {
		t.Fatalf("cleared: status %d, upstream got %q", status, got)
	}
	// Refused by the flow (a POST, or no provider): 403, not served.
	f.configure(func(f *fakeDaemon) { f.captchaAnswer = CaptchaAnswer{Action: CaptchaRefuse} })
	if status, got := post(t, h, "x"); status != http.StatusForbidden || got != nil {
		t.Fatalf("refused: status %d, upstream ran %v", status, got != nil)
	}
}
