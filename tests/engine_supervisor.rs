//! The managed CrowdSec engine, with Debian's crowdsec 1.4.6 (agent and LAPI): start,
//! bouncer key, restart after a crash, stop (with SIGKILL escalation), reload, orphans,
//! and clear errors. Fake `crowdsec` scripts are used only to inject faults.
//!
//! Each test runs its engine on its own loopback port with its config in a temporary
//! directory; a guard kills every process still running that config when the test ends,
//! passed or failed.

mod support;

use support::managed_engine::{
    alive, bins, bounded, eventually, health_up, read_key, startup_stream, Engine,
};

use cerberus::engine::supervisor::{
    EngineError, EngineSettings, EngineState, Supervisor, DEFAULT_BOUNCER_NAME,
};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_a_key_that_reads_the_decision_stream() {
    let logs = support::logs();
    let engine = Engine::new();
    bounded(180, async {
        let sup = Supervisor::new(engine.settings()).unwrap();
        assert_eq!(sup.lapi_url(), engine.url());
        assert_eq!(sup.status().state, EngineState::Stopped);
        let creds = sup
            .start()
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", engine.log()));
        assert_eq!(creds.lapi_url, engine.url());
        assert!(health_up(&engine.url()).await);
        let status = sup.status();
        assert_eq!(status.state, EngineState::Running);
        let pid = status.pid.expect("a running engine has a pid");
        assert!(alive(pid));
        // Agent and LAPI in one process: no -no-cs.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("-no-cs"));
        assert!(
            engine.root.join("local_api_credentials.yaml").exists(),
            "the agent's machine credentials were created"
        );

        let meta = std::fs::metadata(engine.key_file()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key(&engine), creds.api_key);
        let bouncers = engine.cscli(&["bouncers", "list", "-o", "json"]);
        assert!(bouncers.contains(DEFAULT_BOUNCER_NAME), "{bouncers}");

        engine.cscli(&[
            "decisions",
            "add",
            "--ip",
            "192.0.2.7",
            "--duration",
            "4h",
            "--reason",
            "test",
        ]);
        let (code, body) = startup_stream(&creds.lapi_url, &creds.api_key).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("192.0.2.7"), "{body}");

        let text = logs.text();
        assert!(
            text.contains(&format!(
                "[CROWDSEC_STARTUP] the CrowdSec engine is up at {}",
                engine.url()
            )),
            "{text}"
        );

        sup.stop().await;
        assert_eq!(sup.status().state, EngineState::Stopped);
        assert!(!alive(pid), "pid {pid} still runs after stop");
        assert_eq!(engine.processes(), Vec::<u32>::new());
        assert!(!health_up(&engine.url()).await);
        assert!(
            engine.log().contains("Crowdsec service shutting down"),
            "stopped by a clean SIGTERM shutdown"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_is_reused_and_replaced_when_lapi_forgot_it() {
    let logs = support::logs();
    let engine = Engine::new();
    bounded(240, async {
        let sup = Supervisor::new(engine.settings()).unwrap();
        let first = sup.start().await.unwrap();
        sup.stop().await;

        let second = sup.start().await.unwrap();
        assert_eq!(
            second.api_key, first.api_key,
            "the key in the file is reused"
        );
        assert_eq!(read_key(&engine), first.api_key);
        assert_eq!(startup_stream(&engine.url(), &second.api_key).await.0, 200);

        // An operator deletes the bouncer: the key in the file is now stale.
        engine.cscli(&["bouncers", "delete", DEFAULT_BOUNCER_NAME]);
        assert_eq!(startup_stream(&engine.url(), &first.api_key).await.0, 403);
        sup.stop().await;

        let third = sup.start().await.unwrap();
        assert_ne!(third.api_key, first.api_key, "a stale key is replaced");
        assert_eq!(read_key(&engine), third.api_key);
        let meta = std::fs::metadata(engine.key_file()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(startup_stream(&engine.url(), &third.api_key).await.0, 200);
        assert_eq!(startup_stream(&engine.url(), &first.api_key).await.0, 403);
        assert_eq!(*sup.creds().borrow(), Some(third.clone()));
        let text = logs.text();
        assert!(text.contains("is no longer valid"), "{text}");
        sup.stop().await;
        assert_eq!(engine.processes(), Vec::<u32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_engine_is_restarted() {
    let logs = support::logs();
    let engine = Engine::new();
    bounded(180, async {
        let sup = Supervisor::new(engine.settings()).unwrap();
        let creds = sup.start().await.unwrap();
        let first = sup.status().pid.unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);

        eventually("the engine to be restarted", 120, || async {
            let s = sup.status();
            s.state == EngineState::Running && s.pid.is_some_and(|p| p != first)
        })
        .await;
        let status = sup.status();
        assert_eq!(status.restarts, 1);
        let exit = status.last_exit.clone().expect("the death is recorded");
        assert_eq!(exit.pid, first);
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert_eq!(exit.status, "killed by signal 9 (SIGKILL)");
        assert!(!alive(first));
        assert!(health_up(&engine.url()).await);
        assert_eq!(startup_stream(&engine.url(), &creds.api_key).await.0, 200);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["restarts"], 1);
        assert_eq!(json["last_exit"]["signal"], 9);
        let text = logs.text();
        assert!(
            text.contains(&format!(
                "the CrowdSec engine (pid {first}) died: killed by signal 9 (SIGKILL)"
            )),
            "{text}"
        );

        let second = status.pid.unwrap();
        sup.stop().await;
        assert!(!alive(second));
        assert_eq!(engine.processes(), Vec::<u32>::new());
    })
    .await;
}

/// A `crowdsec` whose main process ignores SIGTERM; the real engine it runs is in its
/// process group (fault injection).
fn term_ignoring_engine(engine: &Engine) -> std::path::PathBuf {
    engine.script(
        "crowdsec-ignoring-term",
        &format!(
            "#!/bin/bash\ntrap ':' TERM\n\"{}\" \"$@\" &\nwhile :; do sleep 0.2 & wait $!; done\n",
            bins().crowdsec.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let logs = support::logs();
    let engine = Engine::new();
    let wrapper = term_ignoring_engine(&engine);
    bounded(120, async {
        let mut settings = engine.settings();
        settings.crowdsec_bin = wrapper.clone();
        settings.stop_grace = Duration::from_secs(1);
        let sup = Supervisor::new(settings).unwrap();
        sup.start().await.unwrap_or_else(|e| panic!("start: {e}\n{}", engine.log()));
        let leader = sup.status().pid.unwrap();
        let group = engine.processes();
        assert!(group.len() >= 2, "wrapper and engine: {group:?}");

        sup.stop().await;
        assert!(!alive(leader));
        for pid in &group {
            assert!(!alive(*pid), "pid {pid} of the group survived stop");
        }
        assert_eq!(engine.processes(), Vec::<u32>::new());
        let text = logs.text();
        assert!(
            text.contains(&format!(
                "the CrowdSec engine (pid {leader}) did not stop within 1s of SIGTERM; sending SIGKILL"
            )),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_engine_running() {
    let engine = Engine::new();
    bounded(120, async {
        let sup = Supervisor::new(engine.settings()).unwrap();
        assert!(matches!(sup.reload().await, Err(EngineError::NotRunning)));
        sup.start().await.unwrap();
        let pid = sup.status().pid.unwrap();
        sup.reload().await.unwrap();
        eventually("the engine to log its reload", 60, || async {
            engine.log().contains("Reload is finished")
        })
        .await;
        assert!(engine.log().contains("SIGHUP received, reloading"));
        let url = engine.url();
        eventually("LAPI after the reload", 60, || health_up(&url)).await;
        let status = sup.status();
        assert_eq!(status.pid, Some(pid), "reloaded in place");
        assert_eq!(status.state, EngineState::Running);
        assert_eq!(status.restarts, 0);
        sup.stop().await;
        assert_eq!(engine.processes(), Vec::<u32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binaries_and_bad_configs_are_named() {
    let engine = Engine::new();
    let mut s = engine.settings();
    s.crowdsec_bin = "/nonexistent/bin/crowdsec".into();
    let e = Supervisor::new(s)
        .err()
        .expect("missing crowdsec")
        .to_string();
    assert!(
        e.contains("/nonexistent/bin/crowdsec") && e.contains("engine.crowdsec_bin"),
        "{e}"
    );
    assert!(e.contains("no such file"), "{e}");

    let mut s = engine.settings();
    s.cscli_bin = "/nonexistent/bin/cscli".into();
    let e = Supervisor::new(s).err().expect("missing cscli").to_string();
    assert!(
        e.contains("/nonexistent/bin/cscli") && e.contains("engine.cscli_bin"),
        "{e}"
    );

    let mut s = engine.settings();
    s.config_file = engine.root.join("missing.yaml");
    let e = Supervisor::new(s)
        .err()
        .expect("missing config")
        .to_string();
    assert!(
        e.contains("missing.yaml") && e.contains("cannot read it"),
        "{e}"
    );

    let bad = engine.root.join("bad.yaml");
    std::fs::write(&bad, "api: [unclosed\n").unwrap();
    let mut s = engine.settings();
    s.config_file = bad.clone();
    let e = Supervisor::new(s).err().expect("invalid YAML").to_string();
    assert!(e.contains("bad.yaml") && e.contains("invalid YAML"), "{e}");

    std::fs::write(&bad, "common:\n  daemonize: true\n").unwrap();
    let mut s = engine.settings();
    s.config_file = bad;
    let e = Supervisor::new(s).err().expect("no LAPI").to_string();
    assert!(
        e.contains("bad.yaml") && e.contains("api.server.listen_uri is missing"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_that_exits_at_once_is_reported_with_its_output() {
    let engine = Engine::new();
    let fake = engine.script(
        "crowdsec-exits",
        "#!/bin/sh\necho \"fake crowdsec: reading $2\"\necho 'FATAL: fake engine cannot open its database' >&2\nexit 1\n",
    );
    bounded(60, async {
        let mut settings = engine.settings();
        settings.crowdsec_bin = fake.clone();
        let sup = Supervisor::new(settings).unwrap();
        let e = sup.start().await.expect_err("the engine exited");
        assert!(matches!(e, EngineError::Exited { .. }), "{e:?}");
        let text = e.to_string();
        for part in [
            fake.display().to_string(),
            engine.config.display().to_string(),
            "exit status 1".to_string(),
            "FATAL: fake engine cannot open its database".to_string(),
            "fake crowdsec: reading".to_string(),
            engine.root.join("crowdsec.log").display().to_string(),
        ] {
            assert!(text.contains(&part), "{part:?} missing from: {text}");
        }
        let status = sup.status();
        assert_eq!(status.state, EngineState::Failed);
        assert!(status
            .last_error
            .as_deref()
            .is_some_and(|m| m.contains("exit status 1")));
        // No restart loop after a failed start.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(sup.status().state, EngineState::Failed);
        assert_eq!(sup.status().restarts, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_taken_by_another_process_is_reported() {
    let engine = Engine::new();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", engine.port)).unwrap();
    bounded(60, async {
        let sup = Supervisor::new(engine.settings()).unwrap();
        let e = sup.start().await.expect_err("port in use");
        let text = e.to_string();
        assert!(matches!(e, EngineError::PortInUse { .. }), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{}", engine.port)),
            "{text}"
        );
        assert!(text.contains("config.yaml"), "{text}");
        assert_eq!(engine.processes(), Vec::<u32>::new());
    })
    .await;
}

const HOST_CONFIG: &str = "CERBERUS_ENGINE_HOST_CONFIG";
const HOST_DATA: &str = "CERBERUS_ENGINE_HOST_DATA";
const HOST_CROWDSEC: &str = "CERBERUS_ENGINE_HOST_CROWDSEC";

/// Runs in a child process of [`engine_dies_with_cerberus`]: starts an engine, prints its
/// pid, and waits to be killed.
#[test]
#[ignore = "a helper process for the orphan tests; does nothing on its own"]
fn orphan_host() {
    let (Ok(config), Ok(data), Ok(crowdsec)) = (
        std::env::var(HOST_CONFIG),
        std::env::var(HOST_DATA),
        std::env::var(HOST_CROWDSEC),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut settings = EngineSettings::new(crowdsec, &bins().cscli, config, data);
        settings.stop_grace = Duration::from_secs(1);
        let sup = Supervisor::new(settings).unwrap();
        sup.start().await.unwrap();
        println!("ENGINE_PID={}", sup.status().pid.unwrap());
        tokio::time::sleep(Duration::from_secs(120)).await;
        sup.stop().await;
    });
}

/// Kills the host process on drop.
struct Host(std::process::Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts [`orphan_host`] in a new process with `crowdsec`; returns it and its engine's pid.
fn start_host(engine: &Engine, crowdsec: &Path) -> (Host, u32) {
    let stderr = std::fs::File::create(engine.root.join("host.stderr")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_host",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOST_CONFIG, &engine.config)
        .env(HOST_DATA, &engine.data_dir)
        .env(HOST_CROWDSEC, crowdsec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let host = Host(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test orphan_host ... " on the same line.
            if let Some((_, pid)) = line.split_once("ENGINE_PID=") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            panic!(
                "the host process did not start its engine:\n{}",
                std::fs::read_to_string(engine.root.join("host.stderr")).unwrap_or_default()
            )
        });
    (host, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_dies_with_cerberus() {
    let engine = Engine::new();
    bounded(180, async {
        let (mut host, pid) = start_host(&engine, &bins().crowdsec);
        assert!(alive(pid));
        // cerberus dies without a chance to stop anything.
        host.0.kill().unwrap();
        host.0.wait().unwrap();
        eventually("the orphaned engine to exit", 60, || async { !alive(pid) }).await;
        assert_eq!(engine.processes(), Vec::<u32>::new());
        assert!(
            engine.log().contains("Crowdsec service shutting down"),
            "the engine got SIGTERM and shut down cleanly"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_engine_of_a_crashed_run_is_stopped_before_a_start() {
    let logs = support::logs();
    let engine = Engine::new();
    let wrapper = term_ignoring_engine(&engine);
    bounded(240, async {
        let (mut host, old) = start_host(&engine, &wrapper);
        host.0.kill().unwrap();
        host.0.wait().unwrap();
        // The wrapper ignores the SIGTERM of PR_SET_PDEATHSIG: the engine outlives its host.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left = engine.processes();
        assert!(left.contains(&old), "{left:?} should still hold {old}");
        assert!(health_up(&engine.url()).await);

        let mut settings = engine.settings();
        settings.stop_grace = Duration::from_secs(1);
        let sup = Supervisor::new(settings).unwrap();
        sup.start()
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", engine.log()));
        let new = sup.status().pid.unwrap();
        for pid in left {
            assert!(!alive(pid), "leftover pid {pid} still runs");
        }
        assert_eq!(engine.processes(), vec![new]);
        let text = logs.text();
        assert!(
            text.contains(&format!(
                "a CrowdSec engine from an earlier run still runs (process group {old}"
            )),
            "{text}"
        );
        sup.stop().await;
        assert_eq!(engine.processes(), Vec::<u32>::new());
    })
    .await;
}

/// issue #10 item 8: cscli makes the bouncer key (`-o raw`); it is on no child's command
/// line and in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bouncer_key_is_on_no_command_line_and_in_no_log() {
    let logs = support::logs();
    let engine = Engine::new();
    let argv_log = engine.root.join("cscli-argv.log");
    let wrapper = engine.script(
        "cscli-recording-argv",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            argv_log.display(),
            bins().cscli.display()
        ),
    );
    bounded(180, async {
        let mut settings = engine.settings();
        settings.cscli_bin = wrapper;
        let sup = Supervisor::new(settings).unwrap();
        let creds = sup
            .start()
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", engine.log()));
        let key = read_key(&engine);
        assert_eq!(creds.api_key, key);
        assert!(key.len() >= 16, "{key:?}");
        let argv = std::fs::read_to_string(&argv_log).unwrap();
        assert!(
            argv.contains("-o raw bouncers add"),
            "the key came from cscli: {argv}"
        );
        assert!(!argv.contains(&key), "the key is on a cscli command line");
        let pid = sup.status().pid.unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&key));
        // The key works: LAPI serves the stream with it.
        let (code, _) = startup_stream(&creds.lapi_url, &creds.api_key).await;
        assert_eq!(code, 200);
        sup.stop().await;
        assert!(!logs.text().contains(&key), "the key is in a log line");
    })
    .await;
}

/// A bouncer add that fails: the error names the command, not a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_bouncer_add_logs_no_secret() {
    let logs = support::logs();
    let engine = Engine::new();
    // Passes everything through but `bouncers add`, which prints a key-like secret and fails.
    let wrapper = engine.script(
        "cscli-failing-add",
        &format!(
            "#!/bin/bash\nfor a in \"$@\"; do [[ $a == add && \" $* \" == *' bouncers add '* ]] && \
             {{ echo 'SECRETSECRETSECRET0123456789'; echo 'level=fatal msg=\"unable to create bouncer\"' >&2; exit 1; }}; done\n\
             exec '{}' \"$@\"\n",
            bins().cscli.display()
        ),
    );
    bounded(180, async {
        let mut settings = engine.settings();
        settings.cscli_bin = wrapper;
        let sup = Supervisor::new(settings).unwrap();
        let err = sup.start().await.unwrap_err().to_string();
        assert!(err.contains("bouncers add"), "{err}");
        assert!(err.contains("unable to create bouncer"), "{err}");
        sup.stop().await;
        let text = logs.text();
        assert!(text.contains("unable to create bouncer"), "{text}");
        assert!(
            !err.contains("SECRETSECRET") && !text.contains("SECRETSECRET"),
            "{err}\n{text}"
        );
    })
    .await;
}

/// issue #10 item 12: a pid file whose recorded start time is not that of the process now
/// holding the pid (the pid was recycled) leaves that process alone, even when its command
/// line names the engine config; with the right start time, it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_pid_with_another_start_time_is_left_alone() {
    let logs = support::logs();
    let engine = Engine::new();
    let config = engine.config.display().to_string();
    let spawn_lookalike = || {
        // `sleep; true` keeps bash from exec'ing sleep: its argv keeps `-c CONFIG`.
        Command::new("bash")
            .args(["-c", "sleep 120; true", "-c", &config])
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let start_time = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        rest.split_whitespace().nth(19).unwrap().parse().unwrap()
    };
    let pid_file = engine.data_dir.join(cerberus::engine::supervisor::PID_FILE);
    // A crowdsec that fails at once: only the leftover check before it matters here.
    let failing = engine.script("crowdsec-failing", "#!/bin/sh\nexit 3\n");
    bounded(120, async {
        let mut lookalike = spawn_lookalike();
        let pid = lookalike.id();
        std::fs::create_dir_all(&engine.data_dir).unwrap();
        std::fs::write(&pid_file, format!("{pid} {}\n", start_time(pid) + 1)).unwrap();
        let mut settings = engine.settings();
        settings.crowdsec_bin = failing.clone();
        settings.stop_grace = Duration::from_secs(1);
        let sup = Supervisor::new(settings.clone()).unwrap();
        let _ = sup.start().await;
        sup.stop().await;
        assert!(alive(pid), "a process with another start time was stopped");
        assert!(
            logs.text().contains(&format!("pid {pid} of")),
            "{}",
            logs.text()
        );

        // The control: the same process with its own start time is the leftover.
        std::fs::write(&pid_file, format!("{pid} {}\n", start_time(pid))).unwrap();
        let sup = Supervisor::new(settings).unwrap();
        let _ = sup.start().await;
        sup.stop().await;
        let _ = lookalike.wait();
        assert!(!alive(pid), "the recorded process was not stopped");
        assert!(logs
            .text()
            .contains(&format!("still runs (process group {pid}")));
    })
    .await;
}
