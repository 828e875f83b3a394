//! The `cerberus` binary: parses flags, loads the config, sets up logging, runs.

use cerberus::cli;
use cerberus::config::{Config, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cerberus",
    version,
    about = "CrowdSec bouncer daemon for Caddy"
)]
struct Cli {
    /// Config file (YAML). Without one, defaults apply (standalone under ./cerberus-data).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// The admin API (`host:port` or `unix:/path`). Default: `admin_listen` from the config.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The admin token. Default: admin_token from the config, else `data_dir/admin_token`.
    #[arg(
        long,
        global = true,
        env = "CERBERUS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check a config and list every problem.
    Check,
    /// Ask the running daemon about one IP over its socket; prints one JSON line.
    Lookup {
        /// The client address (IPv4 or IPv6).
        ip: String,
        /// The daemon's socket. Default: `socket` from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Show what the running daemon is doing (admin API).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Live decisions (admin API).
    Decisions {
        #[command(subcommand)]
        command: DecisionsCommand,
    },
    /// Ban an IP or range (through LAPI with watcher credentials; local in standalone).
    Ban {
        value: String,
        /// How long, e.g. 4h, 30m, 168h. Default: 4h.
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Decision type: ban (default), captcha, throttle.
        #[arg(long = "type")]
        type_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lift every decision covering an IP or range, at once.
    Unban {
        value: String,
        #[arg(long)]
        json: bool,
    },
    /// Switch protection on (persisted).
    Enable,
    /// Switch protection off: every request is allowed (persisted).
    Disable,
    /// Register the managed engine with the central API (community blocklist).
    CapiRegister {
        #[arg(long)]
        json: bool,
    },
    /// Check everything cerberus depends on; exits non-zero when a check fails.
    Diagnose {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's data_dir (where admin_token is). Default: from the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DecisionsCommand {
    /// List active decisions, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Only decisions that cover this IP.
        #[arg(long)]
        ip: Option<String>,
        /// ip or range.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        origin: Option<String>,
        #[arg(long = "type")]
        type_name: Option<String>,
        /// Part of the scenario name.
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(cli.config),
        Command::Run => run(cli.config),
        Command::Lookup { ip, socket } => lookup(cli.config, &ip, socket),
        Command::Diagnose { json, data_dir } => {
            with_admin(cli.config, data_dir, cli.admin, cli.token, |config, t| {
                cli::diagnose(config, t, json)
            })
        }
        other => with_admin(cli.config, None, cli.admin, cli.token, |_, t| match other {
            Command::Status { json } => cli::status(t, json),
            Command::Decisions {
                command:
                    DecisionsCommand::List {
                        json,
                        ip,
                        scope,
                        origin,
                        type_name,
                        scenario,
                        limit,
                        offset,
                    },
            } => cli::decisions_list(
                t,
                &[
                    ("ip", ip),
                    ("scope", scope),
                    ("origin", origin),
                    ("type", type_name),
                    ("scenario", scenario),
                    ("limit", Some(limit.to_string())),
                    ("offset", Some(offset.to_string())),
                ],
                json,
            ),
            Command::Ban {
                value,
                duration,
                reason,
                type_name,
                json,
            } => cli::ban(t, &value, duration, reason, type_name, json),
            Command::Unban { value, json } => cli::unban(t, &value, json),
            Command::Enable => cli::switch(t, true),
            Command::Disable => cli::switch(t, false),
            Command::CapiRegister { json } => cli::capi_register(t, json),
            Command::Run | Command::Check | Command::Lookup { .. } | Command::Diagnose { .. } => {
                unreachable!("handled above")
            }
        }),
    }
}

/// Loads the config for an admin API command and finds the API and its token.
fn with_admin(
    path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    admin: Option<String>,
    token: Option<String>,
    f: impl FnOnce(&Config, &cli::Target) -> ExitCode,
) -> ExitCode {
    let mut config = match cerberus::app::load_config(path.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("cerberus: the config has {} problem(s):", problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    match cli::Target::new(&config, admin.as_deref(), token) {
        Ok(t) => f(&config, &t),
        Err(e) => {
            eprintln!("cerberus: {e}");
            ExitCode::from(2)
        }
    }
}

fn lookup(config: Option<PathBuf>, ip: &str, socket: Option<PathBuf>) -> ExitCode {
    let addr: std::net::IpAddr = match ip.trim().parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("cerberus lookup: {ip:?} is not an IPv4 or IPv6 address");
            return ExitCode::from(2);
        }
    };
    let socket = match socket {
        Some(s) => s,
        None => match cerberus::app::load_config(config.as_deref()) {
            Ok(c) => c.socket,
            Err(problems) => {
                eprintln!(
                    "cerberus lookup: the config has {} problem(s):",
                    problems.len()
                );
                for p in problems {
                    eprintln!("  {p}");
                }
                return ExitCode::from(2);
            }
        },
    };
    let cfg = bouncer_api::BlockingConfig::new(&socket).timeout(std::time::Duration::from_secs(5));
    let answer = bouncer_api::BlockingClient::connect_with(cfg).and_then(|mut c| c.lookup(addr));
    match answer {
        Ok(a) => {
            let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let line = serde_json::json!({
                "ip": cerberus::decision::normalize_ip(addr).to_string(),
                "remediation": a.remediation.as_str(),
                "origin": text(&a.origin),
                "scenario": text(&a.scenario),
                "expires_in_s": a.expires_in_s,
                "bypassed": a.flags.is_bypassed(),
            });
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "cerberus lookup: cannot ask the daemon on {}: {e} (is cerberus running? set the socket with --socket or -c)",
                socket.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<PathBuf>) -> ExitCode {
    // Secret files that group or others can open are problems here too (the daemon only
    // logs them).
    let problems = match cerberus::app::load_config(path.as_deref()) {
        Ok(c) => {
            let exposed = c.exposed_secret_files();
            if exposed.is_empty() {
                let mode = match (c.mode(), c.api_url.first()) {
                    ("engine", _) => format!(
                        "managed CrowdSec engine ({})",
                        c.engine.config_file.display()
                    ),
                    (_, Some(_)) => format!("LAPI at {}", c.api_url.join(", ")),
                    _ => "standalone".into(),
                };
                println!("config OK: {mode}, data_dir {}", c.data_dir.display());
                return ExitCode::SUCCESS;
            }
            exposed
        }
        Err(problems) => problems,
    };
    eprintln!("config has {} problem(s):", problems.len());
    for p in problems {
        eprintln!("  {p}");
    }
    ExitCode::from(2)
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let config = match cerberus::app::load_config(path.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!(
                "cannot start: the config has {} problem(s):",
                problems.len()
            );
            for p in problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = {
        let _guard = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(cerberus::app::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cerberus failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},hyper=warn,reqwest=warn", config.log_level))
    });
    // Colours only on a terminal: not in a log file or the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Installs the SIGINT and SIGTERM handlers at once (not when first polled: a signal
/// that arrives while the daemon is still starting must stop it cleanly too) and
/// returns a future that completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}
