//! The challenge page: the built-in page or `captcha_template`, with the provider's
//! widget in a form that sends the solve back to the URL asked for (GET, so it also
//! works through Caddy's forward_auth, which forwards no body), and a nonce-based CSP.

use super::provider::{self, Facts};
use crate::escape::html_into;
use std::net::IpAddr;

/// The page used when no `captcha_template` is set.
pub const BUILTIN_PAGE: &str = include_str!("captcha.html");

/// The query parameter that carries the URL asked for back with the solve.
pub const RETURN_PARAM: &str = "__cerberus_captcha";

/// What the page needs besides the template.
pub struct Widget<'a> {
    pub facts: &'a Facts,
    pub script_url: &'a str,
    pub site_key: &'a str,
}

impl Widget<'_> {
    /// The `Content-Security-Policy` for a page with `nonce`.
    pub fn csp(&self, nonce: &str) -> String {
        let mut sources = self.facts.csp_sources.to_string();
        if let Some(o) = provider::origin(self.script_url) {
            if !sources.split(' ').any(|s| s == o) {
                sources = format!("{sources} {o}");
            }
        }
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}' {sources}; frame-src {sources}; \
             style-src 'nonce-{nonce}' {sources}; connect-src {sources}; img-src 'self' data: \
             {sources}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
    }

    /// The page for a client at `ip` that asked for `uri` (path and query).
    pub fn render(&self, template: &str, nonce: &str, ip: IpAddr, uri: &str) -> String {
        let path = uri.split(['?', '#']).next().unwrap_or("/");
        let mut form = String::with_capacity(1024);
        form.push_str("<form id=\"cerberus-captcha\" method=\"GET\" action=\"");
        html_into(path, &mut form);
        form.push_str("\">\n<input type=\"hidden\" name=\"");
        form.push_str(RETURN_PARAM);
        form.push_str("\" value=\"");
        html_into(uri, &mut form);
        form.push_str("\">\n<div class=\"");
        form.push_str(self.facts.widget_class);
        form.push_str("\" data-sitekey=\"");
        html_into(self.site_key, &mut form);
        form.push_str("\" data-callback=\"cerberusSolved\"></div>\n<button type=\"submit\">Continue</button>\n</form>\n<script nonce=\"");
        form.push_str(nonce);
        form.push_str("\">function cerberusSolved(){document.getElementById(\"cerberus-captcha\").submit()}</script>\n<script nonce=\"");
        form.push_str(nonce);
        form.push_str("\" src=\"");
        html_into(self.script_url, &mut form);
        form.push_str("\" async defer></script>\n");
        let mut ip_text = String::new();
        html_into(&ip.to_string(), &mut ip_text);
        template
            .replace("{{nonce}}", nonce)
            .replace("{{ip}}", &ip_text)
            .replace("{{captcha_form}}", &form)
    }
}

/// A fresh nonce: 128 random bits, base64url.
pub fn nonce() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// The URL to send a solved client back to: `value` when it is a path on this site
/// (`/...`, never `//host` or `/\host`, which browsers take as another site), else `/`.
pub fn safe_return(value: &str) -> &str {
    let local = value.starts_with('/')
        && !value.starts_with("//")
        && !value.starts_with("/\\")
        && !value.bytes().any(|b| b.is_ascii_control());
    if local {
        value
    } else {
        "/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CaptchaProvider;

    #[test]
    fn the_page_carries_widget_nonce_and_return_url_escaped() {
        let facts = provider::facts(CaptchaProvider::Hcaptcha);
        let w = Widget {
            facts: &facts,
            script_url: "http://127.0.0.1:9/api.js",
            site_key: "site\"key",
        };
        let page = w.render(
            BUILTIN_PAGE,
            "N0NCE",
            "192.0.2.1".parse().unwrap(),
            "/a?b=<x>&c=1",
        );
        assert!(page.contains("class=\"h-captcha\" data-sitekey=\"site&quot;key\""));
        assert!(page.contains("action=\"/a\""));
        assert!(page.contains("value=\"/a?b=&lt;x&gt;&amp;c=1\""));
        assert!(page.contains("<script nonce=\"N0NCE\" src=\"http://127.0.0.1:9/api.js\""));
        assert!(page.contains("<style nonce=\"N0NCE\">"));
        assert!(!page.contains("{{"));
        let csp = w.csp("N0NCE");
        assert!(csp.contains("script-src 'nonce-N0NCE' https://hcaptcha.com https://*.hcaptcha.com http://127.0.0.1:9;"));
        assert!(csp.starts_with("default-src 'none'"));
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_return("/x?y=1"), "/x?y=1");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "x",
            "/a\nb",
        ] {
            assert_eq!(safe_return(bad), "/", "{bad:?}");
        }
    }
}
