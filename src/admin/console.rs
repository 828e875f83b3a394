//! `POST /console/enroll`, `GET /console/status`, `POST /console/heartbeat`: the
//! admin side of [`crate::console`].

use super::{bad, json_reply, only_fields, read_json, string_field, Admin, ApiError, Reply};
use crate::console::{self, EnrollRequest, FailureKind};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

/// Said when cerberus knows no engine config.
pub const NO_ENGINE: &str = "console enrollment needs the managed engine or engine.config_file \
     (in this build: set console_engine_config to the CrowdSec engine's config.yaml, whose \
     api.server.online_client names the central API credentials)";

fn no_engine() -> Reply {
    json_reply(
        StatusCode::CONFLICT,
        &json!({"error": NO_ENGINE, "code": "no_engine"}),
    )
}

const FIELDS: &[&str] = &["enrollment_key", "name", "tags", "overwrite"];

fn request(body: &Value) -> Result<EnrollRequest, ApiError> {
    only_fields(body, FIELDS)?;
    let key = string_field(body, "enrollment_key")?
        .ok_or_else(|| bad("enrollment_key", "`enrollment_key` is missing: copy it from the CrowdSec console (app.crowdsec.net → Security Engines → Enroll)"))?;
    console::check_key(key.trim()).map_err(|m| bad("enrollment_key", m))?;
    let name = string_field(body, "name")?;
    if let Some(n) = &name {
        console::check_name(n).map_err(|m| bad("name", m))?;
    }
    let tags = match body.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > console::MAX_TAGS {
                return Err(bad("tags", format!("at most {} tags", console::MAX_TAGS)));
            }
            let mut tags = Vec::new();
            for item in items {
                let Some(t) = item.as_str() else {
                    return Err(bad("tags", "`tags` must be a list of strings"));
                };
                console::check_tag(t).map_err(|m| bad("tags", m))?;
                tags.push(t.to_string());
            }
            tags
        }
        Some(_) => return Err(bad("tags", "`tags` must be a list of strings")),
    };
    let overwrite = match body.get("overwrite") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("overwrite", "`overwrite` must be true or false")),
    };
    Ok(EnrollRequest {
        key: key.trim().to_string(),
        name,
        tags,
        overwrite,
    })
}

/// `POST /console/enroll {"enrollment_key","name","tags","overwrite"}`: answers once
/// the enrollment is over (its retries included).
pub async fn enroll(admin: &Admin, req: Request<hyper::body::Incoming>) -> Reply {
    if admin.console.is_none() {
        return no_engine();
    }
    match read_json(req).await {
        Ok(body) => enroll_body(admin, &body).await,
        Err(e) => e.into(),
    }
}

/// The enrollment of a parsed body (also the web console's).
pub async fn enroll_body(admin: &Admin, body: &Value) -> Reply {
    let Some(console) = &admin.console else {
        return no_engine();
    };
    let req = match request(body) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    match console.enroll(req).await {
        Ok(mut status) => {
            status["next"] = json!(
                "accept the engine in the CrowdSec console (app.crowdsec.net), then restart the engine"
            );
            json_reply(StatusCode::OK, &status)
        }
        Err(f) => {
            let status = match f.kind {
                FailureKind::ExpiredKey | FailureKind::InvalidKey => StatusCode::BAD_REQUEST,
                FailureKind::AlreadyEnrolled | FailureKind::Busy | FailureKind::EngineConfig => {
                    StatusCode::CONFLICT
                }
                FailureKind::Unauthorized | FailureKind::Unreachable | FailureKind::ServerError => {
                    StatusCode::BAD_GATEWAY
                }
                FailureKind::Other => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut body = json!({
                "error": f.message,
                "code": f.kind.code(),
                "console": console.status(),
            });
            if matches!(f.kind, FailureKind::ExpiredKey | FailureKind::InvalidKey) {
                body["field"] = json!("enrollment_key");
            }
            json_reply(status, &body)
        }
    }
}

/// `GET /console/status`.
pub fn status(admin: &Admin) -> Reply {
    match &admin.console {
        Some(c) => json_reply(StatusCode::OK, &c.status()),
        None => no_engine(),
    }
}

/// `POST /console/heartbeat`: one heartbeat now, `{"ok","at","latency_ms","error"}`.
pub async fn heartbeat(admin: &Admin) -> Reply {
    match &admin.console {
        Some(c) => json_reply(StatusCode::OK, &json!(c.heartbeat().await)),
        None => no_engine(),
    }
}
