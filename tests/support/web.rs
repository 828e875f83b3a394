//! A small browser stand-in for the web console tests: signs in with the admin token,
//! keeps the session cookie, reads the CSRF token from a page and posts forms.

use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};

pub struct WebClient {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: Option<String>,
}

/// A page or form answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }
}

impl WebClient {
    pub fn new(app: &cerberus::app::Running) -> WebClient {
        WebClient {
            base: format!(
                "http://{}",
                app.admin_addr.as_deref().expect("admin listening")
            ),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.cookie {
            Some(c) => req.header(COOKIE, c),
            None => req,
        };
        let resp = req.send().await.expect("console answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Posts `form` as a browser on the console's own page would (same Origin).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("origin", &self.base)
                .form(form),
        )
        .await
    }

    /// Signs in with `token`; true when a session cookie came back.
    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let a = self.post("/signin", &[("token", token)]).await;
        if let Some(c) = a.headers.get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
            let pair = c.split(';').next().unwrap_or("").to_string();
            if !pair.ends_with('=') {
                self.cookie = Some(pair);
            }
        }
        a
    }

    /// The CSRF token of the session (read from any signed-in page).
    pub async fn csrf(&self) -> String {
        let page = self.get("/diagnostics").await;
        csrf_of(&page.body).expect("a signed-in page carries the CSRF field")
    }

    /// Posts a form with the session's CSRF token added.
    pub async fn change(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let csrf = self.csrf().await;
        let mut f: Vec<(&str, &str)> = form.to_vec();
        f.push(("csrf", &csrf));
        self.post(path, &f).await
    }
}

pub fn csrf_of(page: &str) -> Option<String> {
    let at = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(page[at..].split('"').next()?.to_string())
}
