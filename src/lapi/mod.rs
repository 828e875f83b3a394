//! The LAPI side: an HTTP client for the decision stream (API key or TLS client
//! certificate, streaming parse with a size limit) and the sync loop that feeds the store.

pub mod endpoints;
pub mod stream;
pub mod sync;
pub mod usage;
pub mod watcher;

use crate::config::Config;
use crate::decision::RawDecision;
pub use endpoints::Endpoints;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use stream::{Counts, List};

/// Where the decisions come from right now: the bouncer client, and the watcher for
/// writes. Fixed in LAPI mode, empty in standalone mode, and following the managed
/// engine (empty while it is stopped) in engine mode.
#[derive(Clone, Default)]
pub struct Upstream {
    pub client: Option<LapiClient>,
    pub watcher: Option<Arc<watcher::Watcher>>,
}

/// The User-Agent every request carries: `cerberus/<version>`.
pub const USER_AGENT: &str = concat!("cerberus/", env!("CARGO_PKG_VERSION"));

/// Why a pull failed. Each has a short, bounded `reason()` for metrics.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot reach LAPI: {0}")]
    Connect(String),
    #[error("LAPI did not answer within {0:?} (lapi_timeout)")]
    Timeout(Duration),
    #[error("LAPI refused the bouncer credentials (HTTP 403 {0}); check api_key against `cscli bouncers list`")]
    Forbidden(String),
    #[error("LAPI answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("LAPI answer is not valid decision JSON: {0}")]
    InvalidJson(String),
    #[error("LAPI answer was cut short: {0}")]
    Truncated(String),
    #[error("LAPI answer is larger than lapi_max_body ({0} bytes)")]
    TooLarge(u64),
    #[error("LAPI request failed: {0}")]
    Other(String),
}

impl PullError {
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::Connect(_) => "connect",
            PullError::Timeout(_) => "timeout",
            PullError::Forbidden(_) => "forbidden",
            PullError::Status { status, .. } if *status >= 500 => "status_5xx",
            PullError::Status { .. } => "status_other",
            PullError::InvalidJson(_) => "invalid_json",
            PullError::Truncated(_) => "truncated",
            PullError::TooLarge(_) => "too_large",
            PullError::Other(_) => "other",
        }
    }
}

/// Receives the decisions of one pull as they are parsed.
pub trait DecisionSink: Send + 'static {
    fn take(&mut self, list: List, raw: RawDecision);
    /// Called once LAPI's answer has begun (a 2xx head), before any decision: LAPI wrote
    /// each `duration` relative to then, not to when the request left.
    fn answered(&mut self) {}
}

/// A client builder that trusts LAPI's certificate as configured (`ca_cert_path`,
/// `insecure_skip_verify`), with the User-Agent and timeouts.
fn trusting(config: &Config) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(5).min(config.lapi_timeout))
        .timeout(config.lapi_timeout)
        .danger_accept_invalid_certs(config.insecure_skip_verify);
    if let Some(ca) = &config.ca_cert_path {
        let pem =
            std::fs::read(ca).map_err(|e| anyhow::anyhow!("ca_cert_path {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("ca_cert_path {}: {e}", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

#[derive(Debug, thiserror::Error)]
#[error("body over the size limit")]
struct OverLimit;

/// A client for the LAPIs of `api_url`, as one bouncer; clones share the one in use.
#[derive(Clone)]
pub struct LapiClient {
    http: reqwest::Client,
    endpoints: Arc<Endpoints>,
    query: Vec<(&'static str, String)>,
    max_body: u64,
    timeout: Duration,
}

impl LapiClient {
    pub fn new(config: &Config) -> anyhow::Result<LapiClient> {
        let endpoints = Arc::new(Endpoints::new(config.api_url.clone())?);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &config.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(key).map_err(|_| {
                anyhow::anyhow!("api_key contains characters not allowed in a header")
            })?;
            value.set_sensitive(true);
            headers.insert("X-Api-Key", value);
        }
        let mut builder = trusting(config)?.default_headers(headers);
        if let (Some(cert), Some(key)) = (&config.cert_path, &config.key_path) {
            let mut pem = std::fs::read(cert)
                .map_err(|e| anyhow::anyhow!("cert_path {}: {e}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| anyhow::anyhow!("key_path {}: {e}", key.display()))?,
            );
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("cert_path/key_path: not a usable certificate and key: {e}")
            })?;
            builder = builder.identity(identity);
        }
        let mut query = vec![
            ("scopes", config.scopes.join(",")),
            ("dedup", "false".into()),
        ];
        for (key, list) in [
            ("origins", &config.origins),
            ("scenarios_containing", &config.scenarios_containing),
            ("scenarios_not_containing", &config.scenarios_not_containing),
        ] {
            if !list.is_empty() {
                query.push((key, list.join(",")));
            }
        }
        Ok(LapiClient {
            http: builder.build()?,
            endpoints,
            query,
            max_body: config.lapi_max_body,
            timeout: config.lapi_timeout,
        })
    }

    /// The base URL of the LAPI in use.
    pub fn url(&self) -> &str {
        self.endpoints.current()
    }

    /// Every LAPI of `api_url` and the one in use.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// A client for LAPI calls that are not the bouncer's (the watcher's writes): the same
    /// server trust, timeouts and User-Agent, without the bouncer's key or certificate.
    pub fn plain_http(config: &Config) -> anyhow::Result<reqwest::Client> {
        Ok(trusting(config)?.build()?)
    }

    /// The HTTP client, with this bouncer's credentials (key or certificate), User-Agent
    /// and timeouts, for other calls as this bouncer (usage metrics).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /health`: the round trip on success.
    pub async fn health(&self) -> Result<Duration, PullError> {
        let started = Instant::now();
        let resp = self
            .http
            .get(format!("{}/health", self.url()))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        if resp.status().is_success() {
            Ok(started.elapsed())
        } else {
            Err(PullError::Status {
                status: resp.status().as_u16(),
                body: String::new(),
            })
        }
    }

    /// Pulls the decision stream (`startup` for everything) and hands every decision to
    /// `sink` while the body streams in. The sink runs on a blocking thread and is given
    /// back with the outcome; on error, whatever it saw must be thrown away.
    pub async fn pull<S: DecisionSink>(
        &self,
        startup: bool,
        mut sink: S,
    ) -> (S, Result<Counts, PullError>) {
        let mut query = self.query.clone();
        if startup {
            query.push(("startup", "true".into()));
        }
        let resp = match self
            .http
            .get(format!("{}/v1/decisions/stream", self.url()))
            .query(&query)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (sink, Err(self.classify(e))),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = snippet(resp).await;
            let err = if status == reqwest::StatusCode::FORBIDDEN {
                PullError::Forbidden(body)
            } else {
                PullError::Status {
                    status: status.as_u16(),
                    body,
                }
            };
            return (sink, Err(err));
        }
        let limit = self.max_body;
        if resp.content_length().is_some_and(|len| len > limit) {
            return (sink, Err(PullError::TooLarge(limit)));
        }
        sink.answered();
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let body = resp.bytes_stream().map(move |chunk| match chunk {
            Ok(bytes) => {
                let total =
                    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
                if total > limit {
                    Err(std::io::Error::other(OverLimit))
                } else {
                    Ok(bytes)
                }
            }
            Err(e) => Err(std::io::Error::other(e)),
        });
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
        let timeout = self.timeout;
        let joined = tokio::task::spawn_blocking(move || {
            let result = stream::parse(reader, |list, raw| sink.take(list, raw));
            (sink, result)
        })
        .await;
        let (sink, result) = match joined {
            Ok(pair) => pair,
            Err(e) => panic!("decision parser thread failed: {e}"),
        };
        let result = result.map_err(|e| classify_parse(e, limit, timeout));
        if let Ok(counts) = &result {
            metrics::counter!(crate::metrics::LAPI_BYTES).increment(seen.load(Ordering::Relaxed));
            tracing::debug!(
                "pulled {} bytes: {} new, {} deleted",
                seen.load(Ordering::Relaxed),
                counts.new,
                counts.deleted
            );
        }
        (sink, result)
    }

    fn classify(&self, e: reqwest::Error) -> PullError {
        if e.is_timeout() {
            PullError::Timeout(self.timeout)
        } else if e.is_connect() {
            PullError::Connect(format!("{}: {}", self.url(), root_cause(&e)))
        } else {
            PullError::Other(root_cause(&e))
        }
    }
}

fn classify_parse(e: serde_json::Error, limit: u64, timeout: Duration) -> PullError {
    if e.is_io() {
        let io = std::io::Error::from(e);
        if let Some(inner) = io.get_ref() {
            if inner.downcast_ref::<OverLimit>().is_some() {
                return PullError::TooLarge(limit);
            }
            if let Some(re) = inner.downcast_ref::<reqwest::Error>() {
                if re.is_timeout() {
                    return PullError::Timeout(timeout);
                }
                return PullError::Truncated(root_cause(re));
            }
        }
        return PullError::Truncated(io.to_string());
    }
    if e.is_eof() {
        PullError::Truncated(e.to_string())
    } else {
        PullError::InvalidJson(e.to_string())
    }
}

/// The innermost error message, which names the actual cause (refused, reset, ...).
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    let mut text = cur.to_string();
    while let Some(next) = cur.source() {
        text = next.to_string();
        cur = next;
    }
    text
}

/// The first 200 bytes of an error answer, for the log.
async fn snippet(resp: reqwest::Response) -> String {
    match resp.bytes().await {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b[..b.len().min(200)]);
            text.trim().to_string()
        }
        Err(_) => String::new(),
    }
}
