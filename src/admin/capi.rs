//! The managed engine's central API: `POST /capi/register` runs `cscli capi register`
//! (the work is [`crate::engine::supervisor::Supervisor::capi_register`]'s).

use super::{error, json_reply, Admin, Reply};
use crate::engine::supervisor::EngineError;
use hyper::StatusCode;
use serde_json::json;

/// `POST /capi/register`: registers the engine, writes its online credentials, restarts
/// it with its central API; answers the community blocklist's new state.
pub async fn register(admin: &Admin) -> Reply {
    let Some(engine) = &admin.engine else {
        return error(
            StatusCode::CONFLICT,
            "central API registration needs the managed engine: set engine.enabled and engine.config_file",
            None,
        );
    };
    match engine.supervisor.capi_register().await {
        Ok(plan) => json_reply(
            StatusCode::OK,
            &json!({"capi": plan, "engine": engine.supervisor.status()}),
        ),
        Err(e @ EngineError::Config { .. }) => error(StatusCode::CONFLICT, e.to_string(), None),
        Err(e @ EngineError::Cscli { .. }) => error(StatusCode::BAD_GATEWAY, e.to_string(), None),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}
