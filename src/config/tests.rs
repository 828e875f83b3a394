//! Tests of the config reader: defaults, keys, environment, and the problems it names.

use super::*;

fn load(yaml: &str) -> Result<Config, Vec<Problem>> {
    Reader::new(parse_yaml(yaml).unwrap()).finish(&[])
}

#[test]
fn snapshot_dir_follows_the_socket_unless_set() {
    let c = load("socket: /tmp/cerberus.sock\n").unwrap();
    assert_eq!(c.snapshot_path(), Some(PathBuf::from("/tmp/snapshot")));
    let c = load("snapshot_dir: /dev/shm/cerberus\n").unwrap();
    assert_eq!(c.snapshot_path(), Some(PathBuf::from("/dev/shm/cerberus")));
    assert_eq!(load("snapshot_dir: off\n").unwrap().snapshot_path(), None);
    let c = Config {
        socket: PathBuf::from("/tmp/x/cerberus.sock"),
        ..Config::default()
    };
    assert_eq!(c.snapshot_path(), Some(PathBuf::from("/tmp/x/snapshot")));
}

#[test]
fn usage_metrics_interval() {
    assert_eq!(
        load("").unwrap().usage_metrics_interval,
        Duration::from_secs(900)
    );
    assert_eq!(
        load("usage_metrics_interval: 0s\n")
            .unwrap()
            .usage_metrics_interval,
        Duration::ZERO
    );
    assert_eq!(
        load("usage_metrics_interval: 1m30s\n")
            .unwrap()
            .usage_metrics_interval,
        Duration::from_secs(90)
    );
    for (bad, says) in [
        ("2s", "at least 10s"),
        ("soon", "0s sends no usage metrics"),
        ("-5m", "0s sends no usage metrics"),
    ] {
        let problems = load(&format!("usage_metrics_interval: {bad}\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "usage_metrics_interval");
        assert!(problems[0].message.contains(says), "{}", problems[0]);
    }
}

#[test]
fn console_keys() {
    let c = load("").unwrap();
    assert_eq!(c.heartbeat_interval, Duration::from_secs(300));
    assert_eq!(c.console_engine_config, None);
    assert_eq!(c.console_cscli_bin, PathBuf::from("cscli"));
    let c = load("heartbeat_interval: 0s\nconsole_cscli_bin: /usr/bin/cscli\n").unwrap();
    assert_eq!(c.heartbeat_interval, Duration::ZERO);
    assert_eq!(c.console_cscli_bin, PathBuf::from("/usr/bin/cscli"));
    let problems =
        load("heartbeat_interval: 500ms\nconsole_engine_config: /nonexistent/config.yaml\n")
            .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["console_engine_config", "heartbeat_interval"]);
}

#[test]
fn defaults_are_standalone() {
    let c = load("").unwrap();
    assert!(c.standalone());
    assert_eq!(c.update_frequency, Duration::from_secs(10));
    assert_eq!(c.socket, PathBuf::from("./cerberus-data/cerberus.sock"));
    assert_eq!(c.forward_auth_listen, Listen::Tcp("127.0.0.1:7420".into()));
    assert_eq!(c.admin_listen, Listen::Tcp("127.0.0.1:8088".into()));
    assert_eq!(c.ban_status, 403);
}

#[test]
fn env_overrides_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "api_url: http://127.0.0.1:8080\napi_key: a\nupdate_frequency: 10s\n",
    )
    .unwrap();
    let env = vec![
        ("CERBERUS_UPDATE_FREQUENCY".to_string(), "2s".to_string()),
        (
            "CERBERUS_ORIGINS".to_string(),
            "crowdsec, cscli".to_string(),
        ),
        ("CERBERUS_API_KEY".to_string(), "12345".to_string()),
        (
            "CERBERUS_INSECURE_SKIP_VERIFY".to_string(),
            "true".to_string(),
        ),
        ("OTHER".to_string(), "x".to_string()),
    ];
    let c = Config::load_with_env(Some(&file), &env).unwrap();
    assert_eq!(c.update_frequency, Duration::from_secs(2));
    assert_eq!(c.origins, vec!["crowdsec", "cscli"]);
    assert_eq!(c.api_key.as_deref(), Some("12345"));
    assert!(c.insecure_skip_verify);
}

#[test]
fn every_problem_names_its_key() {
    let problems = load(
        "api_url: http://127.0.0.1:8080\n\
         update_frequncy: 10s\n\
         stale_after: soon\n\
         trusted_proxies: [10.0.0.0/33]\n\
         on_lapi_unreachable: maybe\n\
         ban_status: 200\n\
         data_dir: /nonexistent-parent/x/data\n\
         admin_listen: nowhere\n\
         cert_path: /nonexistent/cert.pem\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "update_frequncy",
        "stale_after",
        "trusted_proxies",
        "on_lapi_unreachable",
        "ban_status",
        "data_dir",
        "admin_listen",
        "cert_path",
        "key_path",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
    let typo = problems
        .iter()
        .find(|p| p.key == "update_frequncy")
        .unwrap();
    assert!(
        typo.message.contains("did you mean update_frequency"),
        "{typo}"
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let problems = load("admin_listen: 0.0.0.0:8088\n").unwrap_err();
    assert_eq!(problems[0].key, "admin_listen");
    assert!(
        problems[0].message.contains("admin_token"),
        "{}",
        problems[0]
    );
    let long = "t0ken-long-enough-t0ken-long-enough";
    assert!(load(&format!(
        "admin_listen: 0.0.0.0:8088\nadmin_token: {long}\n"
    ))
    .is_ok());
    // Too short off loopback; any length on loopback.
    let problems = load("admin_listen: 0.0.0.0:8088\nadmin_token: a\n").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "admin_token");
    assert!(
        problems[0].message.contains("at least 32"),
        "{}",
        problems[0]
    );
    assert!(load("admin_listen: 127.0.0.1:8088\nadmin_token: a\n").is_ok());
    assert!(load("admin_listen: localhost:8088\n").is_ok());
    assert!(load("admin_listen: \"[::1]:8088\"\n").is_ok());
    let problems = load("capi_url: api.crowdsec.net\n").unwrap_err();
    assert_eq!(problems[0].key, "capi_url");
}

#[test]
fn geoip_database_must_be_a_file() {
    let problems = load("geoip_database: /nonexistent/country.mmdb\n").unwrap_err();
    assert_eq!(problems[0].key, "geoip_database");
    assert!(
        problems[0].message.contains("not a file"),
        "{}",
        problems[0].message
    );
    assert_eq!(load("").unwrap().geoip_database, None);
}

#[test]
fn api_url_needs_credentials() {
    let problems = load("api_url: http://127.0.0.1:8080\n").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "api_key");
    let problems = load("api_url: ftp://x\napi_key: k\n").unwrap_err();
    assert_eq!(problems[0].key, "api_url");
}

#[test]
fn api_url_is_one_url_or_a_list_in_order() {
    let c = load("api_url: http://a:8080/\napi_key: k\n").unwrap();
    assert_eq!(c.api_url, vec!["http://a:8080"]);
    let c = load("api_url:\n  - http://a:8080\n  - https://b:8080/\napi_key: k\n").unwrap();
    assert_eq!(c.api_url, vec!["http://a:8080", "https://b:8080"]);
    assert_eq!(c.mode(), "lapi");
    let env = vec![
        (
            "CERBERUS_API_URL".to_string(),
            "http://a:8080, http://b:8080".to_string(),
        ),
        ("CERBERUS_API_KEY".to_string(), "k".to_string()),
    ];
    let c = Config::load_with_env(None, &env).unwrap();
    assert_eq!(c.api_url, vec!["http://a:8080", "http://b:8080"]);
    assert!(load("api_key: k\n").unwrap().api_url.is_empty());
}

#[test]
fn a_bad_url_in_the_list_is_named_by_its_position() {
    let problems = load("api_url: [http://a:1, ftp://b, http://c:1]\napi_key: k\n").unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "api_url");
    assert!(
        problems[0].message.contains("entry 2 of 3") && problems[0].message.contains("ftp://b"),
        "{}",
        problems[0].message
    );
    let problems = load("api_url: [http://a:1, http://a:1/]\napi_key: k\n").unwrap_err();
    assert!(
        problems[0].message.contains("entry 2 of 2") && problems[0].message.contains("twice"),
        "{}",
        problems[0].message
    );
    let problems = load("api_url: [http://a:1, {x: 1}]\napi_key: k\n").unwrap_err();
    assert_eq!(problems[0].key, "api_url");
}

#[test]
fn key_file_must_be_readable_and_exclusive() {
    let problems = load("api_url: http://x:1\napi_key_file: /nonexistent/key\n").unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "api_key_file"),
        "{problems:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, "secret\n").unwrap();
    let c = load(&format!(
        "api_url: http://x:1\napi_key_file: {}\n",
        f.display()
    ))
    .unwrap();
    assert_eq!(c.api_key.as_deref(), Some("secret"));
    let problems = load(&format!("api_key: a\napi_key_file: {}\n", f.display())).unwrap_err();
    assert_eq!(problems[0].key, "api_key");
}

#[test]
fn http_limits() {
    let c = load("").unwrap();
    assert_eq!(
        (c.forward_auth_max_connections, c.admin_max_connections),
        (1024, 64)
    );
    assert_eq!(c.http_header_timeout, Duration::from_secs(10));
    assert_eq!(c.http_write_timeout, Duration::from_secs(10));
    assert_eq!(c.http_idle_timeout, Duration::from_secs(60));
    let c = load(
        "forward_auth_max_connections: 5\nadmin_max_connections: 2\n\
         http_header_timeout: 3s\nhttp_write_timeout: 4s\nhttp_idle_timeout: 2m\n",
    )
    .unwrap();
    assert_eq!(
        (c.forward_auth_max_connections, c.admin_max_connections),
        (5, 2)
    );
    assert_eq!(
        (
            c.http_header_timeout,
            c.http_write_timeout,
            c.http_idle_timeout
        ),
        (
            Duration::from_secs(3),
            Duration::from_secs(4),
            Duration::from_secs(120)
        )
    );
    let problems = load(
        "forward_auth_max_connections: 0\nadmin_max_connections: x\n\
         http_header_timeout: 2h\nhttp_write_timeout: 500ms\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "forward_auth_max_connections",
            "admin_max_connections",
            "http_header_timeout",
            "http_write_timeout"
        ]
    );
}

#[test]
fn socket_limits() {
    let c = load("").unwrap();
    assert_eq!(c.socket_max_connections, 1024);
    assert_eq!(c.socket_idle_timeout, Duration::from_secs(60));
    let c = load("socket_max_connections: 16\nsocket_idle_timeout: 5m\n").unwrap();
    assert_eq!(c.socket_max_connections, 16);
    assert_eq!(c.socket_idle_timeout, Duration::from_secs(300));
    let problems = load("socket_max_connections: 0\nsocket_idle_timeout: 10s\n").unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["socket_max_connections", "socket_idle_timeout"]);
    let env = vec![(
        "CERBERUS_SOCKET_MAX_CONNECTIONS".to_string(),
        "many".to_string(),
    )];
    let problems = Config::load_with_env(None, &env).unwrap_err();
    assert_eq!(problems[0].key, "socket_max_connections");
}

/// A usable engine config and executable stand-ins for the binaries, in `dir`.
fn engine_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bins: Vec<PathBuf> = ["crowdsec", "cscli"]
        .iter()
        .map(|name| {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        })
        .collect();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "api:\n  client:\n    credentials_path: creds.yaml\n  server:\n    listen_uri: 127.0.0.1:8080\n",
    )
    .unwrap();
    (bins[0].clone(), bins[1].clone(), config)
}

#[test]
fn engine_section_defaults_and_values() {
    let c = load("").unwrap();
    assert_eq!(c.engine, EngineConfig::default());
    assert!(!c.engine.enabled);
    assert_eq!(c.engine.stop_grace, Duration::from_secs(10));
    // Off: the default paths need not exist.
    let c = load("engine:\n  enabled: false\n  stop_grace: 3s\n").unwrap();
    assert_eq!(c.engine.stop_grace, Duration::from_secs(3));

    let dir = tempfile::tempdir().unwrap();
    let (crowdsec, cscli, config) = engine_files(dir.path());
    let c = load(&format!(
        "engine:\n  enabled: true\n  crowdsec_bin: {}\n  cscli_bin: {}\n  config_file: {}\n",
        crowdsec.display(),
        cscli.display(),
        config.display()
    ))
    .unwrap();
    assert!(c.engine.enabled);
    assert_eq!(c.engine.crowdsec_bin, crowdsec);
    assert_eq!(c.engine.cscli_bin, cscli);
    assert_eq!(c.engine.config_file, config);
}

#[test]
fn engine_keys_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (crowdsec, cscli, config) = engine_files(dir.path());
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "engine:\n  enabled: false\n  stop_grace: 3s\n").unwrap();
    let env: Vec<(String, String)> = [
        ("CERBERUS_ENGINE_ENABLED", "true".to_string()),
        (
            "CERBERUS_ENGINE_CROWDSEC_BIN",
            crowdsec.display().to_string(),
        ),
        ("CERBERUS_ENGINE_CSCLI_BIN", cscli.display().to_string()),
        ("CERBERUS_ENGINE_CONFIG_FILE", config.display().to_string()),
        ("CERBERUS_ENGINE_STOP_GRACE", "20s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let c = Config::load_with_env(Some(&file), &env).unwrap();
    assert!(c.engine.enabled);
    assert_eq!(c.engine.crowdsec_bin, crowdsec);
    assert_eq!(c.engine.config_file, config);
    assert_eq!(c.engine.stop_grace, Duration::from_secs(20));
}

#[test]
fn engine_problems_name_their_keys() {
    let problems = load(
        "api_url: http://127.0.0.1:8080\napi_key: k\n\
         engine:\n  enabled: true\n  crowdsec_bin: /nonexistent/crowdsec\n  \
         cscli_bin: /nonexistent/cscli\n  config_file: /nonexistent/config.yaml\n  \
         stop_grace: forever\n  enable: true\n",
    )
    .unwrap_err();
    let find = |key: &str| message_for(&problems, key);
    // The binaries and the engine config are the engine's to check
    // (crate::engine::config::check); this file's reading leaves them alone.
    assert!(problems.iter().all(|p| p.key != "engine.crowdsec_bin"));
    assert!(find("engine.stop_grace").contains("forever"));
    assert!(find("engine.enable").contains("did you mean engine.enabled?"));
    assert!(find("api_url").contains("engine.enabled is true"));

    let problems = load("engine: yes\n").unwrap_err();
    assert_eq!(problems[0].key, "engine");
    assert!(problems[0].message.contains("section"), "{}", problems[0]);
}

#[test]
fn sizes_and_listeners() {
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size("10"), Some(10));
    assert_eq!(parse_size("1.5GiB"), None);
    assert_eq!(
        Listen::parse("unix:/tmp/a.sock"),
        Ok(Listen::Unix("/tmp/a.sock".into()))
    );
    assert_eq!(
        Listen::parse("[::1]:7420"),
        Ok(Listen::Tcp("[::1]:7420".into()))
    );
    assert_eq!(Listen::parse("off"), Ok(Listen::Off));
    assert!(Listen::parse("7420").is_err());
}

/// The message of the problem naming `key`.
fn message_for(problems: &[Problem], key: &str) -> String {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("{key} missing from {problems:?}"))
        .message
        .clone()
}

#[test]
fn captcha_keys_and_their_problems() {
    let c = load("").unwrap();
    assert_eq!(c.captcha.provider, None, "captcha is off by default");
    let c = load(
        "captcha_provider: hCaptcha\ncaptcha_site_key: site\ncaptcha_secret_key: secret\n\
         captcha_expiration: 30m\ncaptcha_verify_url: http://127.0.0.1:9/siteverify\n",
    )
    .unwrap();
    assert_eq!(c.captcha.provider, Some(CaptchaProvider::Hcaptcha));
    assert_eq!(c.captcha.expiration, Duration::from_secs(1800));
    assert_eq!(c.captcha.signing_key, None, "generated at start when unset");

    let dir = tempfile::tempdir().unwrap();
    let no_form = dir.path().join("page.html");
    std::fs::write(&no_form, "<p>hi</p>").unwrap();
    let yaml = format!(
        "captcha_provider: funcaptcha\ncaptcha_signing_key: short\n\
         captcha_template: {}\ncaptcha_script_url: ftp://x/api.js\ncaptcha_verify_url: nope\n",
        no_form.display()
    );
    let problems = load(&yaml).unwrap_err();
    let find = |key: &str| message_for(&problems, key);
    assert!(find("captcha_provider").contains("funcaptcha"));
    assert!(find("captcha_signing_key").contains("at least 32"));
    assert!(find("captcha_template").contains("{{captcha_form}}"));
    assert!(find("captcha_script_url").contains("ftp://x/api.js"));
    assert!(find("captcha_verify_url").contains("nope"));

    let problems =
        load("captcha_provider: turnstile\ncaptcha_template: /nonexistent/t.html\n").unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in ["captcha_site_key", "captcha_secret_key", "captcha_template"] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
    let problems = load("captcha_site_key: x\n").unwrap_err();
    assert_eq!(problems[0].key, "captcha_provider");
}

#[test]
fn an_empty_key_is_named() {
    // Found by the config fuzz target (fuzz/fuzz_targets/config.rs): `? !!$;A` is a key
    // that reads as the empty string, and the problem had no key to name.
    for yaml in ["? !!$;A\n", "\"\": 1\n"] {
        let problems = load(yaml).unwrap_err();
        assert_eq!(problems.len(), 1, "{yaml:?}: {problems:?}");
        assert_eq!(problems[0].key, "\"\"", "{yaml:?}");
        assert!(
            problems[0].message.contains("unknown key"),
            "{}",
            problems[0]
        );
    }
}

#[test]
fn every_key_is_shown_in_the_example_config() {
    // examples/cerberus.yaml is the reference users copy, and the packaged config must
    // hold every key of it (scripts/test-packaging.sh); a key missing there is unknown
    // to users. Section keys (`engine.enabled`) appear indented under their section.
    let example = include_str!("../../examples/cerberus.yaml");
    let missing: Vec<&str> = KEYS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| {
            let name = k.rsplit('.').next().unwrap_or(k);
            !example.lines().any(|l| {
                l.trim_start_matches([' ', '#'])
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(':'))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in examples/cerberus.yaml: {missing:?}"
    );
}
