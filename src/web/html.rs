//! HTML pieces shared by the pages: escaping, the page frame (navigation, sign-out,
//! flash message) and small builders. Every value put into a page goes through [`esc`].

use std::fmt::Write;

/// Escapes text for HTML content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    crate::escape::html(s)
}

/// The pages of the navigation: path and link text (the names tests rely on).
pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/decisions", "Live decisions"),
    ("/hub", "Hub presets"),
    ("/console", "Console enrollment"),
    ("/diagnostics", "Diagnostics"),
];

/// A message shown once at the top of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// The frame of a signed-in page: `active` is the path of its navigation link.
pub fn frame(title: &str, active: &str, csrf: &str, flash: Option<&Flash>, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in NAV {
        let current = if *path == active {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<li><a href="{path}"{current}>{name}</a></li>"#);
    }
    let flash = flash.map_or(String::new(), |f| {
        format!(
            r#"<p class="flash {}" role="{}">{}</p>"#,
            if f.ok { "ok" } else { "error" },
            if f.ok { "status" } else { "alert" },
            esc(&f.text)
        )
    });
    format!(
        r#"{head}<script src="/static/app.js" defer></script>
</head>
<body>
<header>
<span class="brand">cerberus</span>
<nav aria-label="Main"><ul>{nav}</ul></nav>
<form method="post" action="/signout" class="signout">{csrf}<button type="submit">Sign out</button></form>
</header>
<main id="main">
<h1>{title}</h1>
{flash}
{body}
</main>
</body>
</html>
"#,
        head = head(title),
        title = esc(title),
        csrf = csrf_field(csrf),
    )
}

/// A page shown without a session (sign-in, refusals).
pub fn bare(title: &str, body: &str) -> String {
    format!(
        r#"{head}</head>
<body class="bare">
<main id="main">
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        head = head(title),
        title = esc(title),
    )
}

/// The start of every page, up to the stylesheet.
fn head(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · cerberus</title>
<link rel="stylesheet" href="/static/app.css">
"#,
        esc(title)
    )
}

/// A duration in seconds as `2d 3h`, `4h 05m`, `12m 30s` or `45s`.
pub fn left(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The text of a JSON value for a table cell (strings without quotes, null as "–").
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "–".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn time_left() {
        assert_eq!(left(45), "45s");
        assert_eq!(left(750), "12m 30s");
        assert_eq!(left(4 * 3600 + 300), "4h 05m");
        assert_eq!(left(2 * 86_400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn page_marks_the_current_link_and_escapes_the_flash() {
        let flash = Flash {
            ok: false,
            text: "<b>no</b>".into(),
        };
        let p = frame("Live decisions", "/decisions", "c1", Some(&flash), "");
        assert!(p.contains(r#"<a href="/decisions" aria-current="page">Live decisions</a>"#));
        assert!(p.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(!p.contains("<b>no</b>"));
        assert!(p.contains(r#"name="csrf" value="c1""#));
    }
}
