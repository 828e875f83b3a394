//! What each captcha service needs: its widget script, the CSS class of the element the
//! script turns into the widget, the form field its widget fills with the solve token,
//! the sources its page needs in the CSP, and its siteverify endpoint.
//!
//! Where these come from: crowdsecurity/lua-cs-bouncer `lib/plugins/crowdsec/captcha.lua`
//! (tables `captcha_backend_url`, `captcha_frontend_js`, `captcha_frontend_key`; the
//! field is the key plus `-response`; `M.Validate` posts `secret`, `response`,
//! `remoteip` as a form and reads `success` from the JSON answer), and the providers'
//! own documentation (developers.cloudflare.com/turnstile, docs.hcaptcha.com,
//! developers.google.com/recaptcha) for the CSP sources.

use crate::config::CaptchaProvider as Provider;

/// The facts of one provider.
pub struct Facts {
    pub script_url: &'static str,
    pub widget_class: &'static str,
    pub field: &'static str,
    pub verify_url: &'static str,
    /// Sources for script-src, frame-src, style-src and connect-src.
    pub csp_sources: &'static str,
}

pub fn facts(p: Provider) -> Facts {
    match p {
        Provider::Turnstile => Facts {
            script_url: "https://challenges.cloudflare.com/turnstile/v0/api.js",
            widget_class: "cf-turnstile",
            field: "cf-turnstile-response",
            verify_url: "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            csp_sources: "https://challenges.cloudflare.com",
        },
        Provider::Hcaptcha => Facts {
            script_url: "https://js.hcaptcha.com/1/api.js",
            widget_class: "h-captcha",
            field: "h-captcha-response",
            verify_url: "https://api.hcaptcha.com/siteverify",
            csp_sources: "https://hcaptcha.com https://*.hcaptcha.com",
        },
        Provider::Recaptcha => Facts {
            script_url: "https://www.google.com/recaptcha/api.js",
            widget_class: "g-recaptcha",
            field: "g-recaptcha-response",
            verify_url: "https://www.google.com/recaptcha/api/siteverify",
            csp_sources: "https://www.google.com/recaptcha/ https://www.gstatic.com/recaptcha/ \
                          https://recaptcha.google.com/recaptcha/",
        },
    }
}

/// `scheme://host[:port]` of an http(s) URL (for the CSP of an overridden script URL).
pub fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    (!rest[..end].is_empty()).then(|| &url[..scheme.len() + 3 + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_widget_class() {
        for p in Provider::ALL {
            let f = facts(p);
            assert_eq!(f.field, format!("{}-response", f.widget_class));
            assert!(f.verify_url.ends_with("siteverify"));
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("http://127.0.0.1:9/w.js?x"),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(origin("https://a.example"), Some("https://a.example"));
        assert_eq!(origin("nope"), None);
    }
}
