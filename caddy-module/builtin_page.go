package cerberus

// The built-in refusal page: its text, from which refuse.go's builtinPage template is
// put together, and writeBuiltinPage, which writes what that template writes without
// executing it, the values escaped as html/template escapes text in an HTML element
// (its htmlEscaper: NUL, ", &, ', +, <, >).

import (
	"bytes"
	"strings"
)

const (
	pageTop = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>`
	pageStyle = `</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; }
.small { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<h1>`
	pageH1End       = "</h1>\n"
	pageUnavailable = "<p>This site's security filter cannot answer right now. Please try again later.</p>\n"
	pageAddress     = "<p>Requests from your address ("
	pageContact     = ` by this site's security policy.</p>
<p>If you think this is a mistake, contact the site's administrator and quote the details below.</p>
<p class="small">Remediation: `
	pageReason = " &middot; Reason: "
	pageEnd    = "\n</body>\n</html>\n"
)

// htmlText escapes like html/template in an element's text.
var htmlText = strings.NewReplacer("\x00", "\uFFFD", `"`, "&#34;", "&", "&amp;", "'", "&#39;",
	"+", "&#43;", "<", "&lt;", ">", "&gt;")

func writeEscaped(b *bytes.Buffer, s string) {
	if strings.ContainsAny(s, "\x00\"&'+<>") {
		_, _ = htmlText.WriteString(b, s)
		return
	}
	b.WriteString(s)
}

// writeBuiltinPage writes what defaultPage.Execute writes for d.
func writeBuiltinPage(b *bytes.Buffer, d *PageData) {
	b.WriteString(pageTop)
	writeEscaped(b, d.Title)
	b.WriteString(pageStyle)
	writeEscaped(b, d.Title)
	b.WriteString(pageH1End)
	if d.Status == 503 {
		b.WriteString(pageUnavailable)
	} else {
		b.WriteString(pageAddress)
		writeEscaped(b, d.IP)
		if d.Status == 429 {
			b.WriteString(") are limited")
		} else {
			b.WriteString(") are blocked")
		}
		b.WriteString(pageContact)
		writeEscaped(b, d.Remediation)
		if d.Scenario != "" {
			b.WriteString(pageReason)
			writeEscaped(b, d.Scenario)
		}
		b.WriteString("</p>\n")
	}
	b.WriteString(pageEnd)
}
