//! Unit tests of the console: cscli output classified, the engine config read, the
//! state file, the central API version.

use super::cscli::logrus_line;
use super::heartbeat::{capi_version_of, unreachable_of};
use super::state::{load_state, save_state, Saved};
use super::*;

fn engine() -> Engine {
    Engine {
        config: "/etc/crowdsec/config.yaml".into(),
        credentials_path: "/etc/crowdsec/online_api_credentials.yaml".into(),
        url: "https://api.crowdsec.net/".into(),
        hostport: "api.crowdsec.net:443".into(),
        login: "m".into(),
        password: "p".into(),
        scenarios: vec![],
    }
}

fn exited(success: bool, output: &str) -> CscliRun {
    CscliRun::Exited {
        success,
        status: if success {
            "exit status: 0"
        } else {
            "exit status: 1"
        }
        .into(),
        output: output.into(),
    }
}

const LOGIN_OK: &str = "time=\"x\" level=debug msg=\"auth-jwt : http 200\"\n";

fn enroll_answer(code: u16, reason: &str, message: &str, fatal: Option<&str>) -> String {
    let mut s = String::from(LOGIN_OK);
    s.push_str(&format!(
        "time=\"x\" level=debug msg=\"Response: HTTP/1.1 {code} {reason}\\r\\nContent-Type: application/json\\r\\n\\r\\n{{\\\"message\\\":\\\"{message}\\\"}}\"\n"
    ));
    if let Some(f) = fatal {
        s.push_str(&format!("time=\"x\" level=fatal msg=\"{f}\"\n"));
    }
    s
}

#[test]
fn parses_logrus_lines() {
    let (level, msg) =
        logrus_line(r#"time="25-11-2026 12:03:41" level=fatal msg="Could not enroll instance: Post \"http://h/v2/watchers/enroll\": boom""#)
            .unwrap();
    assert_eq!(level, "fatal");
    assert_eq!(
        msg,
        r#"Could not enroll instance: Post "http://h/v2/watchers/enroll": boom"#
    );
    assert!(logrus_line("2026/11/25 version: v1.4.6").is_none());
}

#[test]
fn success_and_already_enrolled() {
    let ok = enroll_answer(202, "Accepted", "ok", None)
        + "time=\"x\" level=info msg=\"Watcher successfully enrolled. Visit https://app.crowdsec.net to accept it.\"\n";
    assert_eq!(
        classify(&exited(true, &ok), &engine(), "KEY12345"),
        Ok(None)
    );
    let already = enroll_answer(200, "OK", "", None)
        + "time=\"x\" level=warning msg=\"Instance already enrolled. You can use '--overwrite' to force enroll\"\n";
    let f = classify(&exited(true, &already), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::AlreadyEnrolled);
    assert!(f.message.contains("overwrite"), "{}", f.message);
    let unsaved = enroll_answer(
        202,
        "Accepted",
        "ok",
        Some("failed writing console config : open /etc/crowdsec/console.yaml: permission denied"),
    );
    let note = classify(&exited(false, &unsaved), &engine(), "KEY12345")
        .unwrap()
        .unwrap();
    assert!(note.contains("console_path"), "{note}");
    // With --overwrite cscli does not warn; the answer body saying so is no warning.
    let overwritten = enroll_answer(200, "OK", "instance already enrolled", None);
    assert_eq!(
        classify(&exited(true, &overwritten), &engine(), "KEY12345"),
        Ok(None)
    );
}

#[test]
fn refused_keys() {
    let out = enroll_answer(
        403,
        "Forbidden",
        "the attachment key provided has expired",
        Some("Could not enroll instance: API error: the attachment key provided has expired"),
    );
    let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::ExpiredKey);
    assert!(f.message.contains("expired") && f.message.contains("new key"));
    let out = enroll_answer(
        403,
        "Forbidden",
        "the attachment key provided is not valid",
        Some("Could not enroll instance: API error: the attachment key provided is not valid"),
    );
    let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::InvalidKey);
    assert!(f.message.contains("HTTP 403"), "{}", f.message);
    assert!(!f.kind.transient());
}

#[test]
fn login_refused_and_server_errors() {
    let out = "time=\"x\" level=debug msg=\"auth-jwt : http 403\"\n\
               time=\"x\" level=fatal msg=\"Could not enroll instance: Post \\\"https://api.crowdsec.net/v2/watchers/enroll\\\": API error: forbidden\"\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Unauthorized);
    assert!(f.message.contains("cscli capi register"), "{}", f.message);
    let out = enroll_answer(
        500,
        "Internal Server Error",
        "Internal server error",
        Some("Could not enroll instance: API error: Internal server error"),
    );
    let f = classify(&exited(false, &out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::ServerError);
    assert!(f.kind.transient());
}

#[test]
fn unreachable_names_host_and_port() {
    let out = "time=\"x\" level=fatal msg=\"Could not enroll instance: Post \\\"https://api.crowdsec.net/v2/watchers/enroll\\\": could not get jwt token: Post \\\"https://api.crowdsec.net/v2/watchers/login\\\": dial tcp 1.2.3.4:443: connect: connection refused\"\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Unreachable);
    assert!(f.message.contains("api.crowdsec.net:443"), "{}", f.message);
    assert!(f.message.contains("connection refused"), "{}", f.message);
}

/// What cscli 1.7.8 printed here against a closed port (its `Error:` line ends a run).
#[test]
fn cscli_1_7_8_errors_are_read() {
    let out = "level=debug msg=\"[URL] POST http://127.0.0.1:9/v3/watchers/enroll\"\n\
               level=debug msg=\"auth-jwt(auth): POST http://127.0.0.1:9/v3/watchers/login\"\n\
               Error: cscli console enroll: could not enroll instance: Post \"http://127.0.0.1:9/v3/watchers/enroll\": could not get jwt token: Post \"http://127.0.0.1:9/v3/watchers/login\": retryable error: dial tcp 127.0.0.1:9: connect: connection refused\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Unreachable);
    assert!(f.message.contains("connection refused"), "{}", f.message);

    // An error cerberus does not know is passed on in cscli's words.
    let out = "Error: cscli console enroll: something new went wrong\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Other);
    assert_eq!(
        f.message,
        "cscli console enroll failed: something new went wrong"
    );

    // Accepted by the central API, then the console options could not be written.
    let out = "level=debug msg=\"Response: HTTP/1.1 202 Accepted\"\n\
               Error: cscli console enroll: failed writing console config: while dumping console config to /etc/crowdsec/console.yaml: open /etc/crowdsec/console.yaml: no such file or directory\n";
    let note = classify(&exited(false, out), &engine(), "KEY12345").unwrap();
    assert!(note.unwrap().contains("console_path"));

    let out = "level=debug msg=\"auth-jwt : http 403\"\n\
               Error: cscli console enroll: could not enroll instance: API error: forbidden\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Unauthorized);
}

#[test]
fn cscli_1_7_8_gives_up_on_a_5xx_login() {
    let out = "Error: cscli console enroll: could not enroll instance: Post \"http://h/v3/watchers/enroll\": performing jwt auth: could not get jwt token: retryable status: 500\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::ServerError);
    assert!(f.message.contains("HTTP 500"), "{}", f.message);
}

#[test]
fn troubleshooting_rows_name_their_fix() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let e = engine();
    let m = |why: &str, timed_out: bool, pairs: &'static [(&'static str, &'static str)]| {
        unreachable_of(&e, why, timed_out, env(pairs)).message()
    };
    // A dead proxy: the proxy is named, not api.crowdsec.net:443.
    let t = m(
        "connection refused",
        false,
        &[("HTTPS_PROXY", "http://127.0.0.1:3128")],
    );
    assert!(
        t.contains("through the proxy 127.0.0.1:3128 (from HTTPS_PROXY)"),
        "{t}"
    );
    let t = m(
        "connection refused",
        false,
        &[("https_proxy", "http://p:8080")],
    );
    assert!(t.contains("p:8080"), "{t}");
    // NO_PROXY covers the host: no proxy.
    let t = m(
        "connection refused",
        false,
        &[
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.crowdsec.net"),
        ],
    );
    assert!(
        !t.contains("proxy") && t.contains("outbound TCP to api.crowdsec.net:443"),
        "{t}"
    );
    // DNS (the fix names the credentials file), timeout, refused.
    let t = m(
        "failed to lookup address information: Name or service not known",
        false,
        &[],
    );
    assert!(
        t.contains("does not resolve")
            && t.contains("resolv.conf")
            && t.contains("online_api_credentials"),
        "{t}"
    );
    let t = m("no answer within 10s", true, &[]);
    assert!(t.contains("drops packets"), "{t}");
    let t = m("connection refused", false, &[]);
    assert!(
        t.contains("outbound TCP to api.crowdsec.net:443 must be open"),
        "{t}"
    );
}

#[test]
fn central_api_version_follows_cscli() {
    assert_eq!(
        capi_version_of("2026/12/01 21:30:08 version: v1.4.6-6~deb12u1+b1-debian\n2026/12/01 21:30:08 Codename: alphaga\n"),
        "v2"
    );
    assert_eq!(capi_version_of("version: v1.7.8\nCodename: \n"), "v3");
    assert_eq!(capi_version_of("version: v1.10.0\n"), "v3");
    assert_eq!(capi_version_of(""), "v3");
}

#[test]
fn the_key_is_scrubbed() {
    let out = "time=\"x\" level=fatal msg=\"Could not enroll instance: strange KEY12345 here\"\n";
    let f = classify(&exited(false, out), &engine(), "KEY12345").unwrap_err();
    assert_eq!(f.kind, FailureKind::Other);
    assert!(!f.message.contains("KEY12345"), "{}", f.message);
    assert!(f.message.contains(KEY_MASK));
    let req = EnrollRequest {
        key: "KEY12345".into(),
        name: None,
        tags: vec![],
        overwrite: false,
    };
    assert!(!format!("{req:?}").contains("KEY12345"));
}

#[test]
fn input_checks() {
    assert!(check_key("cl9abcdefghijklmnop12345").is_ok());
    for bad in [
        "",
        "short",
        "has space in it",
        "semi;colon12",
        &"x".repeat(300),
    ] {
        let e = check_key(bad).unwrap_err();
        assert!(bad.is_empty() || !e.contains(bad), "{e}");
    }
    assert!(check_name("web-1").is_ok());
    assert!(check_name(" ").is_err());
    assert!(check_tag("prod").is_ok());
    assert!(check_tag("a,b").is_err());
    assert!(check_tag("a\"b").is_err());
}

#[test]
fn engine_config_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    assert!(read_engine(&cfg).unwrap_err().contains("cannot read"));
    std::fs::write(&cfg, "api:\n  server:\n    listen_uri: 127.0.0.1:8080\n").unwrap();
    assert!(read_engine(&cfg)
        .unwrap_err()
        .contains("cscli capi register"));
    let creds = dir.path().join("online.yaml");
    std::fs::write(
        &cfg,
        format!(
            "config_paths:\n  config_dir: {}\napi:\n  server:\n    online_client:\n      credentials_path: {}\n",
            dir.path().display(),
            creds.display()
        ),
    )
    .unwrap();
    std::fs::write(&creds, "url: http://127.0.0.1:9/\nlogin: m\n").unwrap();
    assert!(read_engine(&cfg).unwrap_err().contains("no `password`"));
    std::fs::write(&creds, "url: http://127.0.0.1:9\nlogin: m\npassword: p\n").unwrap();
    assert!(read_engine(&cfg).unwrap_err().contains("must end with `/`"));
    std::fs::write(&creds, "url: http://127.0.0.1:9/\nlogin: m\npassword: p\n").unwrap();
    std::fs::create_dir(dir.path().join("scenarios")).unwrap();
    std::fs::write(
        dir.path().join("scenarios/probing.yaml"),
        "type: leaky\nname: crowdsecurity/http-probing\n---\nname: second\n",
    )
    .unwrap();
    let e = read_engine(&cfg).unwrap();
    assert_eq!(e.hostport, "127.0.0.1:9");
    assert_eq!(e.scenarios, vec!["crowdsecurity/http-probing"]);
}

#[test]
fn state_survives_and_an_interrupted_enrollment_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let saved = Saved {
        state: EnrollState::Enrolling,
        ..Saved::default()
    };
    save_state(dir.path(), &saved).unwrap();
    let back = load_state(dir.path());
    assert_eq!(back.state, EnrollState::Failed);
    assert!(back.reason.unwrap().contains("interrupted"));
    std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
    assert_eq!(load_state(dir.path()).state, EnrollState::NotEnrolled);
    assert!(dir.path().join("console.json.corrupt").exists());
}
