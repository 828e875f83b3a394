//! One enrollment: cscli `console enroll` run with the request, its output read by
//! [`classify`](super::classify), transient failures (central API unreachable, 5xx)
//! tried again, [`ATTEMPTS`] attempts with a doubling backoff; the state kept at each
//! step. One enrollment at a time, in a task of its own, so it ends even if the caller
//! leaves.

use super::{
    classify, now_rfc3339, read_engine, Console, CscliRun, EnrollRequest, EnrollState, Failure,
    FailureKind, ATTEMPTS, CSCLI_TIMEOUT,
};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{error, info, warn, Instrument};

impl Console {
    /// Enrolls the engine; runs to its end even when the caller goes away. On success
    /// answers the new status.
    pub async fn enroll(self: &Arc<Self>, req: EnrollRequest) -> Result<Value, Failure> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Failure::new(
                FailureKind::Busy,
                "an enrollment is already running; wait for it (GET /console/status shows it)",
            ));
        }
        let me = self.clone();
        let span = self.span();
        let task = tokio::spawn(
            async move {
                let result = me.enroll_inner(req).await;
                me.busy.store(false, Ordering::Release);
                result
            }
            .instrument(span),
        );
        match task.await {
            Ok(r) => r,
            Err(e) => {
                self.busy.store(false, Ordering::Release);
                self.update(|s| {
                    s.state = EnrollState::Failed;
                    s.reason = Some(format!("the enrollment task stopped: {e}"));
                    s.code = Some(FailureKind::Other.code().into());
                });
                Err(Failure::new(
                    FailureKind::Other,
                    format!("the enrollment task stopped: {e}"),
                ))
            }
        }
    }

    async fn enroll_inner(&self, req: EnrollRequest) -> Result<Value, Failure> {
        let engine = match read_engine(&self.settings.engine_config) {
            Ok(e) => e,
            Err(msg) => {
                let f = Failure::new(FailureKind::EngineConfig, msg);
                self.fail(&f, 0);
                return Err(f);
            }
        };
        let (old_name, old_tags) = {
            let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            (saved.name.clone(), saved.tags.clone())
        };
        self.update(|s| {
            s.state = EnrollState::Enrolling;
            s.name = req.name.clone();
            s.tags = req.tags.clone();
            s.reason = None;
            s.code = None;
            s.attempts = 0;
        });
        info!(
            "[CROWDSEC_ENROLLMENT] enrolling the engine with the central API at {} (name {}, tags [{}])",
            engine.url,
            req.name.as_deref().unwrap_or("(engine default)"),
            req.tags.join(", ")
        );
        let mut backoff = self.settings.retry_backoff;
        let mut attempt = 1;
        loop {
            self.update(|s| s.attempts = attempt);
            let run = self.run_cscli(&req).await;
            match classify(&run, &engine, &req.key) {
                Ok(note) => {
                    self.update(|s| {
                        s.state = EnrollState::Enrolled;
                        s.reason = note.clone();
                        s.code = None;
                        s.enrolled_at = Some(now_rfc3339());
                    });
                    metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => "enrolled")
                        .increment(1);
                    info!("[CROWDSEC_ENROLLMENT] enrollment completed");
                    if let Some(n) = note {
                        warn!("[CROWDSEC_ENROLLMENT] {n}");
                    }
                    return Ok(self.status());
                }
                Err(f) if f.kind == FailureKind::AlreadyEnrolled => {
                    self.update(|s| {
                        s.state = EnrollState::Enrolled;
                        s.name = old_name;
                        s.tags = old_tags;
                        s.reason = Some(f.message.clone());
                        s.code = Some(f.kind.code().into());
                        if s.enrolled_at.is_none() {
                            s.enrolled_at = Some(now_rfc3339());
                        }
                    });
                    metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => f.kind.code())
                        .increment(1);
                    warn!("[CROWDSEC_ENROLLMENT] {}", f.message);
                    return Err(f);
                }
                Err(f) if f.kind.transient() && attempt < ATTEMPTS => {
                    warn!(
                        "[CROWDSEC_ENROLLMENT] attempt {attempt}/{ATTEMPTS} failed: {}",
                        f.message
                    );
                    attempt += 1;
                    info!(
                        backoff_ms = backoff.as_millis() as u64,
                        "[CROWDSEC_ENROLLMENT] retrying enrollment (attempt {attempt}/{ATTEMPTS})"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(f) => {
                    self.fail(&f, attempt);
                    return Err(f);
                }
            }
        }
    }

    fn fail(&self, f: &Failure, attempts: u32) {
        self.update(|s| {
            s.state = EnrollState::Failed;
            s.reason = Some(f.message.clone());
            s.code = Some(f.kind.code().into());
            s.attempts = attempts;
        });
        metrics::counter!(crate::metrics::CONSOLE_ENROLLMENTS, "outcome" => f.kind.code())
            .increment(1);
        error!("[CROWDSEC_ENROLLMENT] enrollment failed: {}", f.message);
    }

    /// Runs cscli once. The command line holds the key: it is never formatted or logged.
    async fn run_cscli(&self, req: &EnrollRequest) -> CscliRun {
        let mut cmd = tokio::process::Command::new(&self.settings.cscli_bin);
        cmd.arg("-c").arg(&self.settings.engine_config).args([
            "-o", "human", "--color", "no", "--debug", "console", "enroll",
        ]);
        if let Some(name) = &req.name {
            cmd.arg(format!("--name={name}"));
        }
        for tag in &req.tags {
            cmd.arg(format!("--tags={tag}"));
        }
        if req.overwrite {
            cmd.arg("--overwrite");
        }
        cmd.arg("--").arg(&req.key);
        // cscli 1.5+ would retry a refused connection or a 5xx for minutes (backoff from
        // 20s, pkg/apiclient/auth_retry.go); cerberus retries itself. 1.4 ignores it.
        cmd.env("CROWDSEC_FEATURE_DISABLE_HTTP_RETRY_BACKOFF", "true");
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(CSCLI_TIMEOUT, cmd.output()).await {
            Err(_) => CscliRun::TimedOut,
            Ok(Err(e)) => CscliRun::NotStarted(format!(
                "cannot run cscli ({}): {e}; set console_cscli_bin to the engine's cscli",
                self.settings.cscli_bin.display()
            )),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
                text.push('\n');
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                CscliRun::Exited {
                    success: out.status.success(),
                    status: out.status.to_string(),
                    output: text,
                }
            }
        }
    }
}
