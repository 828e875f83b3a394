//! Hub presets of the managed engine: `GET /hub/presets?q=&type=`,
//! `POST /hub/presets/install {"name","type"}`, `POST /hub/presets/remove {...}`. The
//! work is [`crate::engine::hub`]'s; this maps it to HTTP.

use super::{bad, error, json_reply, only_fields, string_field, Admin, ApiError, Reply};
use crate::engine::hub::{HubError, PresetRequest};
use hyper::StatusCode;
use serde_json::Value;

fn no_hub() -> Reply {
    error(
        StatusCode::CONFLICT,
        "hub presets need the managed engine: set engine.enabled and engine.config_file",
        None,
    )
}

fn hub_error(e: HubError) -> Reply {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_reply(status, &serde_json::to_value(e.body()).unwrap_or_default())
}

/// `GET /hub/presets`.
pub async fn list(admin: &Admin, query: Option<&str>) -> Reply {
    let Some(hub) = &admin.hub else {
        return no_hub();
    };
    let (mut q, mut kind) = (None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "q" => q = Some(value.into_owned()),
            "type" => kind = Some(value.into_owned()),
            other => {
                return bad(
                    other,
                    format!("unknown query parameter `{other}` (known: q, type)"),
                )
                .into()
            }
        }
    }
    match hub.list(q.as_deref(), kind.as_deref()).await {
        Ok(list) => json_reply(
            StatusCode::OK,
            &serde_json::to_value(list).unwrap_or_default(),
        ),
        Err(e) => hub_error(e),
    }
}

fn request(body: &Value) -> Result<PresetRequest, ApiError> {
    only_fields(body, &["name", "type"])?;
    let name = string_field(body, "name")?
        .ok_or_else(|| bad("name", "`name` is required, e.g. crowdsecurity/caddy"))?;
    Ok(PresetRequest {
        name,
        kind: string_field(body, "type")?,
    })
}

/// `POST /hub/presets/install` (`install`) or `/remove`.
pub async fn change(admin: &Admin, body: &Value, install: bool) -> Reply {
    let Some(hub) = &admin.hub else {
        return no_hub();
    };
    let req = match request(body) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let result = if install {
        hub.install(&req)
            .await
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    } else {
        hub.remove(&req)
            .await
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    };
    match result {
        Ok(report) => json_reply(StatusCode::OK, &report),
        Err(e) => hub_error(e),
    }
}
