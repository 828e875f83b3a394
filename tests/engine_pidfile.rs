//! The engine pid file records the process start time: before a start, a leftover is
//! signalled only when the process at the recorded pid started at the recorded time (a
//! process that reused the pid, even with the same `-c CONFIG` argument, is left alone).
//! With Debian's crowdsec 1.4.6, as in `engine_supervisor.rs`.

mod support;

use cerberus::engine::pidfile;
use cerberus::engine::supervisor::{Supervisor, PID_FILE};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;
use support::managed_engine::{alive, bounded, Engine};

/// A process whose command line holds `-c CONFIG`, as the engine's does, in a process
/// group of its own.
fn decoy(engine: &Engine) -> Child {
    Command::new("sh")
        .args(["-c", "sleep 120; true", "decoy", "-c"])
        .arg(&engine.config)
        .process_group(0)
        .spawn()
        .unwrap()
}

async fn start_and_stop(engine: &Engine) {
    let sup = Supervisor::new(engine.settings()).unwrap();
    sup.start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}\n{}", engine.log()));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_not_signalled_but_the_recorded_process_is() {
    let engine = Engine::new();
    let path = engine.data_dir.join(PID_FILE);
    std::fs::create_dir_all(&engine.data_dir).unwrap();
    bounded(240, async {
        // Another start time than the process at that pid: a reused pid.
        let mut other = decoy(&engine);
        let t = pidfile::start_time(other.id()).expect("its start time");
        std::fs::write(&path, format!("{} {}\n", other.id(), t + 1)).unwrap();
        start_and_stop(&engine).await;
        assert!(
            alive(other.id()),
            "a process that reused the pid is left alone"
        );
        other.kill().unwrap();
        other.wait().unwrap();

        // The recorded start time: the leftover is stopped.
        let mut left = decoy(&engine);
        pidfile::write(&path, left.id()).unwrap();
        start_and_stop(&engine).await;
        let stopped = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = left.try_wait().unwrap() {
                    return Some(status);
                }
                if std::time::Instant::now() > deadline {
                    let _ = left.kill();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        assert!(stopped.is_some(), "the recorded leftover was signalled");
    })
    .await;
}
