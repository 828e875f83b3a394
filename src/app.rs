//! Wires the parts together: open the database, serve the persisted decisions at once on
//! the doors (Unix socket, forward_auth; see [`crate::serve`]),
//! then start the LAPI sync (or stay standalone), all under one shutdown signal.

use crate::admin::{self, Admin};
use crate::clock;
use crate::config::Config;
use crate::control::{self, Control, Owner};
use crate::engine::hub::{EngineLayout, Hub, HubOptions};
use crate::engine::managed::{self, EngineControl};
use crate::engine::supervisor::{EngineSettings, Supervisor};
use crate::lapi::sync::{SyncSettings, SyncStats, Syncer};
use crate::lapi::watcher::Watcher;
use crate::lapi::LapiClient;
use crate::lapi::Upstream;
use crate::persist::Db;
use crate::persist::Persister;
use crate::serve::forward_auth;
use crate::serve::socket::{SocketServer, SocketSettings};
use crate::serve::Readiness;
use crate::store::Decider;
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// The config as `cerberus run` and `cerberus check` read it: the config file's own
/// checks plus those of the parts that own the files it names (the managed engine's).
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, Vec<crate::config::Problem>> {
    Config::load_checked(path, &[crate::engine::config::check])
}

/// A started cerberus: its shared parts and its background tasks.
pub struct Running {
    pub config: Arc<Config>,
    pub decider: Arc<Decider>,
    pub stats: Arc<SyncStats>,
    pub persist: Arc<Persister>,
    /// Changes for the writer's owner (the sync loop, or the standalone loop).
    pub control: Control,
    /// Where the socket and forward_auth doors listen (`unix:/path`, `host:port`).
    pub socket_addr: Option<String>,
    pub forward_auth_addr: Option<String>,
    /// Where the admin API listens, and its token.
    pub admin_addr: Option<String>,
    pub admin_token: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts everything and returns once the persisted decisions are being served.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // Before anything registers a metric handle (the doors do when they are built).
    crate::metrics::install();
    // Connection caps sized from the open-file limit (raised first): see serve::fds.
    let mut config = config;
    crate::serve::fds::fit(&mut config)?;
    for p in config.exposed_secret_files() {
        tracing::warn!("{p}");
    }
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir {}: cannot create it", config.data_dir.display()))?;
    let decider = Arc::new(Decider::new());
    let mut writer = decider.writer();

    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let (db, writer_back, loaded, enabled, overrides) = tokio::task::spawn_blocking(move || {
        let db = Db::open(&data_dir)?;
        let now = clock::now_secs_precise();
        // Every override, also those past their expiry: a clock far ahead must not end
        // them (see crate::control); each lifts its decision by (id, target).
        let overrides = db.load_overrides(0)?;
        let lifted: std::collections::HashSet<(i64, String)> =
            overrides.iter().map(|o| (o.id, o.value.clone())).collect();
        let loaded = db.load_decisions(now, |d| {
            if !lifted.contains(&(d.id, d.target.to_string())) {
                writer.insert(&d)
            }
        })?;
        let enabled = db.setting("enabled")?;
        anyhow::Ok((db, writer, loaded, enabled, overrides))
    })
    .await??;
    writer = writer_back;
    writer.compact();
    let snap = writer.publish();
    if enabled.as_deref() == Some("false") {
        decider.set_enabled(false);
        info!("protection is switched off (persisted setting): every request is allowed");
    }
    info!(
        "[CROWDSEC_STARTUP] enforcing {} persisted decisions from {} (loaded in {} ms; {} expired, {} unreadable skipped)",
        snap.len(),
        db.path().display(),
        started.elapsed().as_millis(),
        loaded.expired,
        loaded.unreadable
    );
    metrics::gauge!(crate::metrics::SNAPSHOT_DECISIONS).set(snap.len() as f64);
    // Expired decisions were skipped above but stay on disk until the first purge, which
    // runs only on a wall clock the monotonic clock has vouched for.
    let persist = Arc::new(db.into_writer());
    let stats = Arc::new(SyncStats::default());
    let console = crate::console::Console::from_config(&config)?.map(Arc::new);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(c) = &console {
        tasks.push(tokio::spawn(c.clone().run_poller(shutdown_rx.clone())));
    }
    let (control, commands) = Control::channel();
    if !overrides.is_empty() {
        info!(
            "{} unbanned decisions stay lifted (local overrides)",
            overrides.len()
        );
    }
    let owner = Owner::new(writer, persist.clone(), overrides);

    // Where decisions come from: nothing (standalone), a fixed LAPI, or the managed engine.
    let (upstream_tx, upstream_rx) = watch::channel(Upstream::default());
    let mut engine = None;
    match config.mode() {
        "standalone" => {
            info!(
                "[CROWDSEC_STARTUP] standalone mode (no api_url): decisions come only from the admin API and live in {}",
                config.data_dir.display()
            );
            tasks.push(tokio::spawn(control::run_standalone(
                owner,
                commands,
                shutdown_rx.clone(),
            )));
        }
        mode => {
            if mode == "lapi" {
                let client = LapiClient::new(&config)?;
                let watcher = match (&config.machine_id, &config.machine_password) {
                    (Some(id), Some(pw)) => Some(Arc::new(Watcher::following(
                        LapiClient::plain_http(&config)?,
                        client.endpoints().clone(),
                        id,
                        pw,
                    ))),
                    _ => None,
                };
                if !config.usage_metrics_interval.is_zero() {
                    let usage = crate::lapi::usage::run(
                        client.clone(),
                        decider.clone(),
                        config.usage_metrics_interval,
                        shutdown_rx.clone(),
                    );
                    tasks.push(tokio::spawn(usage));
                }
                upstream_tx.send_replace(Upstream {
                    client: Some(client),
                    watcher,
                });
            } else {
                let sup = Arc::new(Supervisor::new(EngineSettings::from_config(&config))?);
                let on = decider.enabled();
                info!(
                    "[CROWDSEC_STARTUP] engine mode: cerberus runs the CrowdSec engine ({}){}",
                    config.engine.config_file.display(),
                    if on {
                        ""
                    } else {
                        "; protection is off, so it stays stopped"
                    }
                );
                let (handle, task) = managed::spawn(
                    config.clone(),
                    sup,
                    on,
                    upstream_tx.clone(),
                    shutdown_rx.clone(),
                );
                tasks.push(task);
                engine = Some(handle);
            }
            let syncer = Syncer::new(
                upstream_rx.clone(),
                owner,
                decider.clone(),
                stats.clone(),
                SyncSettings::from_config(&config),
                commands,
            );
            tasks.push(tokio::spawn(syncer.run(shutdown_rx.clone())));
        }
    }
    // The doors. A failure here stops what was started before returning the error.
    let ready = Readiness::new(
        config.standalone() || !snap.is_empty(),
        stats.first_sync_done.clone(),
    );
    let mut threads = Vec::new();
    let mut running = Running {
        config: config.clone(),
        decider: decider.clone(),
        stats,
        persist,
        control,
        socket_addr: None,
        forward_auth_addr: None,
        admin_addr: None,
        admin_token: String::new(),
        shutdown,
        tasks,
        threads: Vec::new(),
    };
    let doors = async {
        let server = SocketServer::bind(SocketSettings {
            path: config.socket.clone(),
            mode: config.socket_mode,
            max_connections: config.socket_max_connections,
            idle_timeout: config.socket_idle_timeout,
        })?;
        let captcha = crate::captcha::Captcha::new(&config)?.map(std::sync::Arc::new);
        crate::captcha::set_flow(captcha.is_some());
        let server = server.with_captcha(captcha.clone());
        let appsec = crate::engine::appsec::start(
            &config,
            engine.as_deref(),
            upstream_rx.clone(),
            shutdown_rx.clone(),
        )?;
        if let Some(a) = &appsec {
            info!(
                "AppSec: every request the IP check allows is inspected by {}",
                a.url()
            );
        }
        let server = server.with_appsec(appsec.clone());
        threads.push(server.spawn(decider.clone(), ready.clone(), shutdown_rx.clone())?);
        if let Some(dir) = config.snapshot_path() {
            let settings = crate::serve::segments::SegmentSettings::new(dir, &config.socket);
            let decider = decider.clone();
            // Not fatal: without segments the module asks the socket, as before.
            match crate::serve::segments::spawn(settings, decider, ready.clone(), shutdown_rx.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!(
                    "snapshot segments are off: {e:#}; the Caddy module will ask the socket (set snapshot_dir, or `off` to silence this)"
                ),
            }
        }
        let socket_addr = format!("unix:{}", config.socket.display());
        info!("listening for Caddy module lookups on {socket_addr}");
        let door = forward_auth::Door::new(&config, decider.clone(), ready.clone())?
            .with_captcha(captcha.clone())
            .with_appsec(appsec.clone());
        let fa = forward_auth::start(&config, door, shutdown_rx.clone()).await?;
        let token = admin::token(&config)?;
        let mut state = Admin::new(
            config.clone(),
            decider.clone(),
            running.stats.clone(),
            running.control.clone(),
            running.persist.clone(),
            ready.clone(),
            token.clone(),
            upstream_rx.clone(),
        )?;
        state.socket_addr = Some(socket_addr.clone());
        state.appsec = appsec.clone();
        if let Some(e) = &engine {
            state.hub = Some(hub_for(&config, e)?);
        }
        state.engine = engine.clone();
        state.console = console.clone();
        if let Some(path) = &config.geoip_database {
            let geo = crate::geoip::GeoIp::open(path)?;
            info!(
                "countries of decisions from {} ({})",
                path.display(),
                geo.kind()
            );
            state.geoip = Some(Arc::new(geo));
        }
        state.captcha = captcha.clone();
        let adm = crate::web::start(Arc::new(state), shutdown_rx.clone()).await?;
        anyhow::Ok((socket_addr, fa, adm, token))
    };
    match doors.await {
        Ok((socket_addr, fa, adm, token)) => {
            running.socket_addr = Some(socket_addr);
            running.admin_token = token;
            if let Some((task, addr)) = adm {
                info!(
                    "admin API on {addr}{}, web console on http://{addr}/",
                    admin::PREFIX
                );
                running.tasks.push(task);
                running.admin_addr = Some(addr);
            } else {
                info!("the admin API is off");
            }
            if let Some((task, addr)) = fa {
                info!("listening for Caddy forward_auth on {addr}");
                running.tasks.push(task);
                running.forward_auth_addr = Some(addr);
            } else {
                info!("forward_auth is off");
            }
            running.threads = threads;
            Ok(running)
        }
        Err(e) => {
            running.threads = threads;
            running.stop().await;
            Err(e)
        }
    }
}

impl Running {
    /// Stops the background tasks and writes out what is queued for the database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let persist = self.persist;
        let _ = tokio::task::spawn_blocking(move || match Arc::try_unwrap(persist) {
            Ok(p) => p.close(),
            Err(shared) => shared.flush(),
        })
        .await;
        info!("cerberus stopped");
    }
}

/// The hub presets of the managed engine; installs reload it.
fn hub_for(config: &Config, engine: &Arc<EngineControl>) -> anyhow::Result<Hub> {
    let layout =
        EngineLayout::from_engine_config(&config.engine.config_file, &config.engine.crowdsec_bin)
            .map_err(|e| anyhow::anyhow!("engine.config_file: {e}"))?;
    let sup = engine.supervisor.clone();
    let rt = tokio::runtime::Handle::current();
    let reload = move || rt.block_on(sup.reload()).map_err(|e| e.to_string());
    let opts = HubOptions {
        reload: Some(Arc::new(reload)),
        ..HubOptions::default()
    };
    let http = reqwest::Client::builder()
        .user_agent(crate::lapi::USER_AGENT)
        .build()?;
    Ok(Hub::with_options(
        &config.engine.hub_url,
        &config.data_dir.join("hub"),
        layout,
        http,
        opts,
    )?)
}

/// Runs until `shutdown` completes (SIGINT or SIGTERM in `main`).
/// Tells systemd (sd_notify, [`crate::notify`]) when it is ready, how it does, and when
/// it stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let notify = crate::notify::Notifier::from_env();
    notify.status("starting: loading the persisted decisions");
    let running = start(config)
        .await
        .inspect_err(|e| notify.status(&format!("failed to start: {e:#}")))?;
    let watchdog = notify.ready(&running);
    shutdown.await;
    info!("shutting down");
    notify.stopping();
    watchdog.inspect(|w| w.abort());
    running.stop().await;
    Ok(())
}
