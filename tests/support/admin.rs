//! A small client for the admin API of a running cerberus (tests only).

use serde_json::Value;

pub struct AdminClient {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

pub const PREFIX: &str = "/api/v1/cerberus/crowdsec";

impl AdminClient {
    pub fn new(app: &cerberus::app::Running) -> AdminClient {
        AdminClient {
            base: format!(
                "http://{}",
                app.admin_addr.as_deref().expect("admin listening")
            ),
            token: app.admin_token.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("admin API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {text:?}"));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        self.send(self.http.post(self.url(path))).await
    }

    /// `GET /metrics` (at the listener's root, not under the prefix): the Prometheus text.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("admin API answers");
        assert!(
            resp.status().is_success(),
            "GET /metrics: {}",
            resp.status()
        );
        resp.text().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(self.url(path))).await
    }
}

/// A config with the admin API on a free loopback port.
pub fn with_admin(mut c: cerberus::config::Config) -> cerberus::config::Config {
    c.admin_listen = cerberus::config::Listen::Tcp("127.0.0.1:0".into());
    c
}
