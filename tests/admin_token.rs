//! The admin token file and guesses: `data_dir/admin_token` is never followed through a
//! symlink, kept at 0600 (a loose one is fixed, an empty one replaced), wrong tokens are
//! slowed behind one gate and counted, and `cerberus check` names secret files others
//! can read and a short `admin_token` off loopback.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn start(dir: &Path) -> anyhow::Result<cerberus::app::Running> {
    let config = support::admin::with_admin(support::config(dir, None, None));
    tokio::time::timeout(Duration::from_secs(10), cerberus::app::start(config))
        .await
        .expect("start in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_token_file_refuses_the_start_and_its_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "").unwrap();
    chmod(&victim, 0o644);
    std::os::unix::fs::symlink(&victim, dir.path().join("admin_token")).unwrap();
    let err = match start(dir.path()).await {
        Ok(app) => {
            app.stop().await;
            panic!("started through a symlinked admin_token")
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("is a symlink") && err.contains("remove"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
    assert_eq!(mode(&victim), 0o644);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loose_token_file_is_set_to_0600_and_an_empty_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin_token");
    std::fs::write(&path, "kept-token-kept-token-kept-token\n").unwrap();
    chmod(&path, 0o644);
    let app = start(dir.path()).await.unwrap();
    assert_eq!(app.admin_token, "kept-token-kept-token-kept-token");
    assert_eq!(mode(&path), 0o600);
    app.stop().await;

    std::fs::write(&path, "").unwrap();
    chmod(&path, 0o644);
    let app = start(dir.path()).await.unwrap();
    assert_eq!(app.admin_token.len(), 64, "a new token");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        app.admin_token
    );
    assert_eq!(mode(&path), 0o600);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_slowed_one_at_a_time_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await.unwrap();
    let admin = support::admin::AdminClient::new(&app);
    let failures = || {
        let text = cerberus::metrics::render().unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("cerberus_admin_auth_failures_total ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let before = failures();
    let started = Instant::now();
    let guesses = (0..5).map(|i| {
        admin
            .http
            .get(admin.url("/status"))
            .bearer_auth(format!("guess-{i}"))
            .send()
    });
    for r in futures_util::future::join_all(guesses).await {
        assert_eq!(r.unwrap().status().as_u16(), 401);
    }
    // Five guesses in parallel still wait their turn: at least four delays in all.
    let floor = cerberus::admin::FAILURE_DELAY * 4;
    assert!(
        started.elapsed() >= floor,
        "{:?} < {floor:?}",
        started.elapsed()
    );
    assert!(failures() >= before + 5.0);
    // The right token is not slowed down by the gate (it never takes it).
    let (status, _) = admin.get("/status").await;
    assert_eq!(status, 200);
    app.stop().await;
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_names_secret_files_others_can_read_and_short_tokens_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let key = dir.path().join("lapi.key");
    std::fs::write(&key, "k3y\n").unwrap();
    chmod(&key, 0o644);
    let token = dir.path().join("admin_token");
    std::fs::write(&token, "t0ken\n").unwrap();
    chmod(&token, 0o640);
    let cfg = dir.path().join("cerberus.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {d}\napi_url: http://127.0.0.1:1\napi_key_file: {}\n",
            key.display()
        ),
    )
    .unwrap();
    let (ok, text) = check(&cfg);
    assert!(!ok, "{text}");
    assert!(
        text.contains("api_key_file:") && text.contains(&format!("chmod 600 {}", key.display())),
        "{text}"
    );
    assert!(
        text.contains("data_dir:") && text.contains("0640"),
        "{text}"
    );
    chmod(&key, 0o600);
    chmod(&token, 0o600);
    let (ok, text) = check(&cfg);
    assert!(ok, "{text}");

    // A short token with an admin API other machines reach.
    std::fs::write(
        &cfg,
        format!("data_dir: {d}\nadmin_listen: 0.0.0.0:8088\nadmin_token: a\n"),
    )
    .unwrap();
    let (ok, text) = check(&cfg);
    assert!(!ok, "{text}");
    assert!(
        text.contains("admin_token:") && text.contains("at least 32"),
        "{text}"
    );
}
