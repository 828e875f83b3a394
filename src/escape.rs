//! HTML escaping, shared by the forward_auth ban page and the web console's pages.

/// Appends `s` to `out`, escaped for HTML content and quoted attributes.
pub fn html_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `s` escaped for HTML content and quoted attributes.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    html_into(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            super::html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(super::html("plain é"), "plain é");
    }
}
