//! The engine's own config test (`crowdsec -c CONFIG -t`) and reading its complaint: the
//! fatal lines (or, failing those, the error lines) of its log output, and the item they
//! are about.

use super::HubError;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What `crowdsec -t` said.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub ok: bool,
    /// Its stdout and stderr, in that order.
    pub output: String,
}

/// Runs `bin -c config -t` with a deadline (the process is killed past it).
pub(crate) async fn config_test(
    bin: &Path,
    config: &Path,
    timeout: Duration,
) -> Result<Verdict, HubError> {
    let fail = |reason: String| HubError::Engine {
        bin: bin.display().to_string(),
        config: config.display().to_string(),
        reason,
    };
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("-t")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("cannot read its result: {e}"))),
        Err(_) => return Err(fail(format!("it did not finish within {timeout:?}"))),
    };
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Verdict {
        ok: out.status.success(),
        output,
    })
}

/// The lines that say why the test failed, as messages (log prefixes stripped, Go escapes
/// undone, duplicates dropped): the fatal ones, else the errors, else the last lines.
pub(crate) fn complaint(output: &str) -> Vec<String> {
    let parsed: Vec<(String, String)> = output.lines().filter_map(parse_line).collect();
    let pick = |level: &str| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (l, msg) in &parsed {
            if l == level && !out.contains(msg) {
                out.push(msg.clone());
            }
        }
        out
    };
    // "crowdsec stopped" only says that it stopped; the errors before it say why.
    let fatal: Vec<String> = pick("fatal")
        .into_iter()
        .filter(|m| m != "crowdsec stopped")
        .collect();
    if !fatal.is_empty() {
        return fatal;
    }
    let errors = pick("error");
    if !errors.is_empty() {
        return errors;
    }
    let lines: Vec<String> = output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    lines[lines.len().saturating_sub(10)..].to_vec()
}

/// `(level, msg)` of a logrus text line (`time=".." level=fatal msg=".."`) or JSON line.
fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = v.get("level")?.as_str()?.to_string();
        let msg = v.get("msg")?.as_str()?.to_string();
        return Some((level, msg));
    }
    let level_at = line.find("level=")? + "level=".len();
    let level: String = line[level_at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let msg_at = line.find("msg=")? + "msg=".len();
    let rest = &line[msg_at..];
    let msg = if let Some(quoted) = rest.strip_prefix('"') {
        unquote(quoted)
    } else {
        rest.split_whitespace().next().unwrap_or("").to_string()
    };
    Some((level, msg))
}

/// The text of a Go-quoted string whose opening quote is already consumed.
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// The candidate the complaint is about: the one whose file paths (link or hub file),
/// or failing that whose name, appears first in it.
pub(crate) fn failing_item(complaint: &[String], candidates: &[Candidate]) -> Option<String> {
    let text = complaint.join("\n");
    let first_at = |needles: &[String]| needles.iter().filter_map(|n| text.find(n.as_str())).min();
    let by = |f: &dyn Fn(&Candidate) -> Vec<String>| {
        candidates
            .iter()
            .filter_map(|c| first_at(&f(c)).map(|at| (at, c)))
            .min_by_key(|(at, _)| *at)
            .map(|(_, c)| c.name.clone())
    };
    by(&|c| vec![c.link.clone(), c.hub_file.clone()])
        .or_else(|| by(&|c| vec![format!("'{}'", c.name), format!("\"{}\"", c.name)]))
        .or_else(|| by(&|c| vec![c.name.clone()]))
}

/// An item the engine may blame, with the paths it would print.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub name: String,
    pub link: String,
    pub hub_file: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as crowdsec 1.4.6 prints them when today's caddy parser is loaded.
    const OUTPUT: &str = concat!(
        "time=\"25-11-2026 11:42:08\" level=info msg=\"Loading grok library /e/config/patterns\"\n",
        "time=\"25-11-2026 11:42:08\" level=error msg=\"unable to register plugin 'GeoIpCity': open /e/data/GeoLite2-City.mmdb: no such file or directory\"\n",
        "time=\"25-11-2026 11:42:08\" level=fatal msg=\"crowdsec init: while loading parsers: failed to load parser config : failed to compile node 'crowdsecurity/caddy-logs' in '/e/config/parsers/s01-parse/caddy-logs.yaml' : compilation of 'evt.Parsed.program startsWith 'caddy' &&\\nUnmarshalJSON(evt.Parsed.message, evt.Unmarshaled, 'caddy') in ['', nil]' failed: unknown func UnmarshalJSON (2:1)\"\n",
        "time=\"25-11-2026 11:42:08\" level=fatal msg=\"crowdsec init: while loading parsers: failed to load parser config : failed to compile node 'crowdsecurity/caddy-logs' in '/e/config/parsers/s01-parse/caddy-logs.yaml' : compilation of 'evt.Parsed.program startsWith 'caddy' &&\\nUnmarshalJSON(evt.Parsed.message, evt.Unmarshaled, 'caddy') in ['', nil]' failed: unknown func UnmarshalJSON (2:1)\"\n",
    );

    fn cand(name: &str, link: &str) -> Candidate {
        Candidate {
            name: name.into(),
            link: link.into(),
            hub_file: format!("/e/hub/{link}"),
        }
    }

    #[test]
    fn the_complaint_is_the_fatal_line_once_unescaped() {
        let c = complaint(OUTPUT);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].starts_with("crowdsec init: while loading parsers"),
            "{}",
            c[0]
        );
        assert!(c[0].contains("\nUnmarshalJSON(") && c[0].contains("unknown func UnmarshalJSON"));
    }

    #[test]
    fn errors_stand_in_when_nothing_is_fatal_then_the_last_lines() {
        let c = complaint(
            "time=\"x\" level=info msg=\"a\"\ntime=\"x\" level=error msg=\"bad \\\"thing\\\"\"\n",
        );
        assert_eq!(c, ["bad \"thing\""]);
        let c = complaint("{\"level\":\"fatal\",\"msg\":\"json says no\"}\n");
        assert_eq!(c, ["json says no"]);
        // A crash: the fatal line says nothing, the error lines say what.
        let c = complaint(concat!(
            "time=\"x\" level=error msg=\"crowdsec - goroutine crowdsec/main crashed : assignment to entry in nil map\"\n",
            "time=\"x\" level=fatal msg=\"crowdsec stopped\"\n",
        ));
        assert_eq!(
            c,
            ["crowdsec - goroutine crowdsec/main crashed : assignment to entry in nil map"]
        );
        let c = complaint("panic: assignment to entry in nil map\n\ngoroutine 1\n");
        assert_eq!(c, ["panic: assignment to entry in nil map", "goroutine 1"]);
    }

    #[test]
    fn the_failing_item_is_found_by_path_then_name() {
        let c = complaint(OUTPUT);
        let cands = [
            cand(
                "crowdsecurity/http-logs",
                "/e/config/parsers/s02-enrich/http-logs.yaml",
            ),
            cand(
                "crowdsecurity/caddy-logs",
                "/e/config/parsers/s01-parse/caddy-logs.yaml",
            ),
            cand("crowdsecurity/caddy", "/e/config/collections/caddy.yaml"),
        ];
        assert_eq!(
            failing_item(&c, &cands).as_deref(),
            Some("crowdsecurity/caddy-logs")
        );
        let named = ["scenario 'crowdsecurity/http-probing' is broken".to_string()];
        let cands = [
            cand("crowdsecurity/http", "/x"),
            cand("crowdsecurity/http-probing", "/y"),
        ];
        assert_eq!(
            failing_item(&named, &cands).as_deref(),
            Some("crowdsecurity/http-probing")
        );
        assert_eq!(failing_item(&["nothing".into()], &cands), None);
    }
}
