package cerberus

// Refusals answered by the handler itself: the built-in ban page (or the operator's
// ban_template), 429 with Retry-After, 503 for fail closed. With `errors` they become
// Caddy HTTP errors instead, for handle_errors.

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// builtinPage is the page of a refusal, its text in builtin_page.go. It is an
// html/template: every value is escaped for its HTML context, and the origin and
// scenario come from LAPI (free-form reasons, any watcher's alerts), so they must
// never reach the page raw.
const builtinPage = pageTop + "{{.Title}}" + pageStyle + "{{.Title}}" + pageH1End +
	"{{if eq .Status 503}}" + pageUnavailable +
	"{{else}}" + pageAddress + "{{.IP}}) are {{if eq .Status 429}}limited{{else}}blocked{{end}}" +
	pageContact + "{{.Remediation}}{{if .Scenario}}" + pageReason + "{{.Scenario}}{{end}}</p>\n{{end}}" +
	pageEnd

// PageData is what a ban page template sees. Title, IP and Remediation are set by the
// module; Origin, Scenario and Type come from the deciding decision (LAPI data).
type PageData struct {
	Status      int
	Title       string
	IP          string
	Remediation string
	Origin      string
	Scenario    string
	Type        string
	RetryAfter  uint32
}

// defaultPage is builtinPage as a template. Refusals write the built-in page with
// writeBuiltinPage (the same bytes, TestBuiltinPageMatchesItsTemplate): executing a
// template costs about 12 us and 60 allocations, more than the rest of a refusal.
var defaultPage = template.Must(template.New("ban").Parse(builtinPage))

// loadTemplate parses the operator's ban template (an html/template file, so its
// values are escaped too); nil for an empty path (the built-in page).
func loadTemplate(path string) (*template.Template, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cerberus: ban_template: %w", err)
	}
	t, err := template.New("ban").Parse(string(b))
	if err != nil {
		return nil, fmt.Errorf("cerberus: ban_template %s: %w", path, err)
	}
	return t, nil
}

var pageBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// refuse answers a refused request: directly (default) or as a Caddy HTTP error
// (`errors`). The placeholders are set by the caller before.
func (h *Handler) refuse(w http.ResponseWriter, d PageData, cause error) error {
	if d.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.FormatUint(uint64(max(d.RetryAfter, 1)), 10))
	}
	if h.Errors {
		return caddyhttp.Error(d.Status, cause)
	}
	if d.Title == "" {
		d.Title = http.StatusText(d.Status)
	}
	buf := pageBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer pageBuffers.Put(buf)
	hdr := w.Header()
	// The four values in one array (one allocation, not four), each slice capped so
	// that an Add elsewhere copies rather than writes into its neighbour. The names
	// are canonical already.
	vals := [...]string{"no-store", d.Remediation, "text/html; charset=utf-8", ""}
	hv := vals[:]
	hdr["Cache-Control"] = hv[0:1:1]
	hdr["X-Cerberus-Remediation"] = hv[1:2:2]
	if h.page == nil {
		writeBuiltinPage(buf, &d)
	} else if err := h.page.Execute(buf, d); err != nil {
		// A template that fails on some data: the status still goes out, the page
		// does not; counted and logged (rate limited) so the operator sees it.
		failures.WithLabelValues("template").Inc()
		h.failLog.record("template", h.Fail, err)
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(d.Status)
		_, _ = w.Write([]byte(http.StatusText(d.Status) + "\n"))
		return nil
	}
	hv[3] = strconv.Itoa(buf.Len())
	hdr["Content-Type"] = hv[2:3:3]
	hdr["Content-Length"] = hv[3:4:4]
	w.WriteHeader(d.Status)
	// A failed write means the client went away; Caddy has nothing left to answer.
	_, _ = w.Write(buf.Bytes())
	return nil
}
