package cerberus

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const xss = `<script>alert(1)</script>`

// A scenario or origin from LAPI is free-form text (any watcher's alert, a cscli
// reason): the ban page must carry it escaped, never as markup.
func TestBanPageEscapesLAPIText(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 60, Origin: `cscli"><img src=x onerror=alert(2)>`, Scenario: xss, Type: "ban"})
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second)})

	o := serve(t, h, "198.51.100.7", "")
	if o.err != nil || o.status != http.StatusForbidden {
		t.Fatalf("status %d, err %v; want a direct 403", o.status, o.err)
	}
	if strings.Contains(o.body, "<script>") || strings.Contains(o.body, "<img") {
		t.Fatalf("ban page carries LAPI text unescaped:\n%s", o.body)
	}
	if !strings.Contains(o.body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatalf("ban page lacks the escaped scenario:\n%s", o.body)
	}
	if ct := o.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if o.header.Get("X-Cerberus-Remediation") != "ban" || o.header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v", o.header)
	}
}

// The operator's template is an html/template too: its values are escaped.
func TestBanTemplateEscapes(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 60, Origin: "crowdsec", Scenario: xss, Type: "ban"})
	tpl := filepath.Join(t.TempDir(), "ban.html")
	if err := os.WriteFile(tpl, []byte(`<p>{{.IP}} {{.Remediation}} by {{.Origin}}: {{.Scenario}} ({{.Status}})</p>`), 0o644); err != nil {
		t.Fatal(err)
	}
	h := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second), BanTemplate: tpl})
	o := serve(t, h, "198.51.100.7", "")
	want := `<p>198.51.100.7 ban by crowdsec: &lt;script&gt;alert(1)&lt;/script&gt; (403)</p>`
	if o.status != http.StatusForbidden || o.body != want {
		t.Fatalf("status %d body %q; want 403 %q", o.status, o.body, want)
	}
}

func TestBanTemplateErrors(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	missing := &Handler{BanTemplate: filepath.Join(t.TempDir(), "nope.html")}
	if err := missing.Provision(ctx); err == nil || !strings.Contains(err.Error(), "ban_template") {
		t.Errorf("missing template: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.html")
	if err := os.WriteFile(bad, []byte(`{{.IP`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (&Handler{BanTemplate: bad}).Provision(ctx); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("unparsable template: %v", err)
	}
}

// Refusals are answered directly (no Caddy error, so nothing for Caddy to log per
// request); `errors` makes them Caddy HTTP errors for handle_errors again.
func TestRefusalsDirectOrErrors(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("198.51.100.9", Answer{Remediation: Throttle, ExpiresInS: 60, Origin: "cscli", Scenario: "manual", Type: "throttle"})
	f.set("198.51.100.7", Answer{Remediation: Ban, ExpiresInS: 60, Origin: "cscli", Scenario: "manual", Type: "ban"})
	direct := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second)})
	viaErrors := provisioned(t, &Handler{Socket: path, Timeout: caddy.Duration(time.Second), Errors: true})

	o := serve(t, direct, "198.51.100.9", "")
	if o.err != nil || o.status != 429 || o.header.Get("Retry-After") != "60" || !strings.Contains(o.body, "limited") {
		t.Fatalf("direct throttle: err %v status %d headers %v", o.err, o.status, o.header)
	}
	o = serve(t, viaErrors, "198.51.100.9", "")
	var he caddyhttp.HandlerError
	if !errors.As(o.err, &he) || he.StatusCode != 429 || o.header.Get("Retry-After") != "60" || o.body != "" {
		t.Fatalf("errors throttle: err %v headers %v body %q", o.err, o.header, o.body)
	}
	o = serve(t, viaErrors, "198.51.100.7", "")
	if !errors.As(o.err, &he) || he.StatusCode != 403 || o.placeholder("scenario") != "manual" {
		t.Fatalf("errors ban: err %v scenario %q", o.err, o.placeholder("scenario"))
	}
	// fail closed, answered directly: 503 page.
	closed := provisioned(t, &Handler{Socket: filepath.Join(t.TempDir(), "none.sock"), Timeout: caddy.Duration(time.Second), Fail: FailClosed})
	o = serve(t, closed, "192.0.2.1", "")
	if o.err != nil || o.status != 503 || !strings.Contains(o.body, "try again later") {
		t.Fatalf("fail closed: err %v status %d body %q", o.err, o.status, o.body)
	}
}

// No Caddyfile in the examples or docs puts the LAPI-supplied placeholders into an
// HTML body: Caddy does not escape placeholders (stored XSS, issue #10 item 10).
func TestNoLAPIPlaceholderInHTMLExamples(t *testing.T) {
	var files []string
	for _, pat := range []string{"../examples/*", "../*.md", "../docs/*", "../docs/*/*", "*.md", "testdata/*.caddyfile", "../bouncer-api/*.md"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 5 {
		t.Fatalf("found only %v: wrong working directory?", files)
	}
	checked := 0
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			continue // a directory
		}
		for _, bad := range htmlWithLAPIPlaceholders(string(b)) {
			t.Errorf("%s: %s", name, bad)
		}
		checked++
	}
	// The check itself must catch the pattern the old example used.
	old := "handle_errors {\n\theader Content-Type text/html\n\trespond <<HTML\n\t<p>by {http.cerberus.origin} ({http.cerberus.scenario})</p>\n\tHTML 403\n}\n"
	if len(htmlWithLAPIPlaceholders(old)) == 0 {
		t.Error("the check misses the old example's heredoc")
	}
	if len(htmlWithLAPIPlaceholders(`respond "<b>{http.cerberus.scenario}</b>" 403`)) == 0 {
		t.Error("the check misses a one-line HTML respond")
	}
	if len(htmlWithLAPIPlaceholders(`respond "{http.cerberus.scenario}" 403`)) != 0 {
		t.Error("a plain-text respond (Caddy sends it as text/plain) is flagged")
	}
	t.Logf("checked %d files", checked)
}

var lapiPlaceholder = regexp.MustCompile(`\{http\.cerberus\.(scenario|origin|type)\}`)

// htmlWithLAPIPlaceholders returns the respond bodies of text (a Caddyfile, or a
// document with Caddyfile snippets) that look like HTML, or follow a text/html
// Content-Type header, and contain a LAPI-supplied placeholder.
func htmlWithLAPIPlaceholders(text string) []string {
	var found []string
	lines := strings.Split(text, "\n")
	htmlType := false
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if strings.Contains(line, "Content-Type") && strings.Contains(line, "text/html") {
			htmlType = true
		}
		if line == "}" || line == "```" {
			htmlType = false
		}
		if !strings.HasPrefix(line, "respond") {
			continue
		}
		body := line
		if j := strings.Index(line, "<<"); j >= 0 {
			tag := strings.Fields(line[j+2:])
			if len(tag) > 0 {
				for i++; i < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i]), tag[0]); i++ {
					body += "\n" + lines[i]
				}
			}
		}
		if lapiPlaceholder.MatchString(body) && (htmlType || strings.Contains(body, "<")) {
			found = append(found, "respond body puts "+lapiPlaceholder.FindString(body)+" into HTML unescaped")
		}
	}
	return found
}
