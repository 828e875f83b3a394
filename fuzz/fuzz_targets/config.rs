//! The config reader (`cerberus::config::Config::from_yaml_with_env`) on any YAML text
//! and `CERBERUS_*` variables.
//!
//! Input: the YAML text, then optionally a NUL byte and one variable per line,
//! `key=value`, passed as `CERBERUS_KEY` (upper-cased). Inputs naming a `_file` key are
//! skipped: those keys read the file named (a secret), and the fuzzer must not read this
//! machine's files (a path such as /dev/zero would also never end).
//!
//! Checked: nothing panics or overflows; a refused config names at least one problem,
//! each with its key and a message; an accepted one keeps its own invariants (a
//! standalone config has no LAPI key requirement, ban_status is a 4xx or 5xx).
#![no_main]

use cerberus::config::Config;
use libfuzzer_sys::fuzz_target;

fn read(yaml: &str, env: &[(String, String)]) {
    match Config::from_yaml_with_env(yaml, env) {
        Ok(c) => {
            assert!(
                (400..=599).contains(&c.ban_status),
                "ban_status {}",
                c.ban_status
            );
            assert!(!c.update_frequency.is_zero());
            if !c.api_url.is_empty() {
                assert!(
                    c.api_key.is_some() || c.cert_path.is_some(),
                    "LAPI without a key"
                );
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            for p in &problems {
                assert!(!p.key.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.to_ascii_lowercase().contains("_file") {
        return;
    }
    let (yaml, vars) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                format!("CERBERUS_{}", k.to_ascii_uppercase()),
                v.to_string(),
            )
        })
        .collect();
    read(yaml, &env);
});
