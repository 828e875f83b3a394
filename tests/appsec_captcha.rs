//! An AppSec verdict of captcha is answered with the captcha flow, through both doors:
//! the challenge, the solve (303 and the clearance cookie), the cookie letting the
//! request through, a POST and another client IP refused or challenged again, a banned
//! IP still refused; each challenge counted once, with origin `appsec`, in the usage
//! metrics. Without a captcha provider the verdict is a 403.
//!
//! CrowdSec's AppSec answers captcha only when a rule or `default_remediation` says so,
//! so the component here is the stand-in of `support::stand_ins::appsec`, answering as
//! v1.7.8's does; the real component's ban and allow are in `appsec_e2e`.

mod support;

use bouncer_api::captcha::{
    encode_captcha_request, take_captcha_answer, CaptchaAnswer, CaptchaRequest, Taken,
};
use bytes::BytesMut;
use cerberus::app::Running;
use cerberus::config::{CaptchaProvider, Config, Listen};
use cerberus::decision::{Decision, Target};
use std::net::IpAddr;
use std::time::Duration;
use support::stand_ins::{appsec, provider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const LIMIT: Duration = Duration::from_secs(10);
/// The stand-in AppSec answers captcha for these URIs, ban for `/admin`, else allow.
const GUARDED: &str = "/login";
const TURNSTILE_FIELD: &str = "cf-turnstile-response";
const RETURN_PARAM: &str = "__cerberus_captcha";

async fn daemon(
    dir: &std::path::Path,
    appsec_url: &str,
    verify_url: Option<&str>,
) -> (Running, String) {
    // The key AppSec is called with (no LAPI here: the stand-in takes any key).
    let mut config: Config = support::config(dir, None, Some("the-bouncer-key"));
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.appsec.url = Some(appsec_url.to_string());
    config.appsec.timeout = Duration::from_secs(5);
    if let Some(url) = verify_url {
        config.captcha.provider = Some(CaptchaProvider::Turnstile);
        config.captcha.site_key = "the-site-key".into();
        config.captcha.secret_key = "s3cret".into();
        config.captcha.verify_url = Some(url.to_string());
    }
    let app = tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .unwrap()
        .unwrap();
    app.control
        .insert(vec![Decision {
            id: 1,
            target: Target::parse("192.0.2.66").unwrap(),
            type_name: "ban".into(),
            origin: "cscli".into(),
            scenario: "test/ban".into(),
            expires_at: cerberus::clock::now_secs_precise() + 3600,
        }])
        .await
        .unwrap();
    let url = format!("http://{}", app.forward_auth_addr.clone().unwrap());
    (app, url)
}

/// Requests as Caddy's forward_auth sends them: the original method and URI in
/// headers, the client in `X-Forwarded-For` (127.0.0.1 is a trusted proxy here).
struct ForwardAuth {
    http: reqwest::Client,
    url: String,
}

impl ForwardAuth {
    async fn ask(
        &self,
        client: &str,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .http
            .get(&self.url)
            .header("X-Forwarded-For", client)
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", uri)
            .header("X-Forwarded-Proto", "http")
            .header("Accept", "text/html");
        if let Some(c) = cookie {
            r = r.header("Cookie", format!("cerberus_captcha={c}"));
        }
        r.send().await.unwrap()
    }
}

fn dropped(app: &Running, origin: &str, remediation: &str) -> u64 {
    app.decider
        .usage()
        .totals()
        .dropped
        .get(&(origin.to_string(), remediation.to_string()))
        .copied()
        .unwrap_or(0)
}

/// The clearance cookie's value in a 303's `Set-Cookie`.
fn clearance(r: &reqwest::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap();
    let value = set.strip_prefix("cerberus_captcha=").expect(set);
    value.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_an_appsec_captcha_with_the_challenge_and_its_cookie() {
    let waf = appsec(GUARDED, "/admin").await;
    let site = provider(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = daemon(dir.path(), &waf.url, Some(&site.url)).await;
    let fa = ForwardAuth {
        http: reqwest::Client::builder()
            .timeout(LIMIT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        url,
    };
    let client = "198.51.100.20";

    // Not guarded by the WAF: served, nothing to solve.
    let r = fa.ask(client, "GET", "/", None).await;
    assert_eq!(r.status().as_u16(), 200);

    // AppSec says captcha: the challenge page, with the widget and the site key.
    let r = fa.ask(client, "GET", "/login?next=%2F", None).await;
    assert_eq!(r.status().as_u16(), 403, "the challenge's status");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("nonce-"), "a nonce-based CSP: {csp}");
    let page = r.text().await.unwrap();
    assert!(
        page.contains("the-site-key") && page.contains("cf-turnstile"),
        "{page}"
    );
    assert_eq!(dropped(&app, "appsec", "captcha"), 1, "counted once");

    // Solved: 303 back to the URL asked for, with the clearance cookie.
    let solve = format!("/login?{RETURN_PARAM}=%2Flogin%3Fnext%3D%252F&{TURNSTILE_FIELD}=good");
    let r = fa.ask(client, "GET", &solve, None).await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2F");
    let cookie = clearance(&r);

    // With the cookie: through (AppSec still answers captcha; the cookie clears it).
    let r = fa
        .ask(client, "GET", "/login?next=%2F", Some(&cookie))
        .await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "the cookie clears AppSec's captcha"
    );
    // The cookie does not clear a ban of AppSec.
    let r = fa.ask(client, "GET", "/admin", Some(&cookie)).await;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    // Another client IP with the same cookie: challenged again.
    let r = fa
        .ask("198.51.100.21", "GET", "/login", Some(&cookie))
        .await;
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("the-site-key"));
    // A POST cannot be challenged: 403, the ban page.
    let r = fa.ask("198.51.100.22", "POST", "/login", None).await;
    assert_eq!(r.status().as_u16(), 403);
    assert!(!r.text().await.unwrap().contains("the-site-key"));
    // A banned IP is refused by its decision before AppSec is asked.
    let calls = waf.calls.load(std::sync::atomic::Ordering::SeqCst);
    let r = fa.ask("192.0.2.66", "GET", "/login", None).await;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["x-cerberus-remediation"], "ban");
    assert_eq!(
        waf.calls.load(std::sync::atomic::Ordering::SeqCst),
        calls,
        "not asked"
    );
    // Challenges shown: the first, the other IP's; the POST refused: 3 in all.
    assert_eq!(dropped(&app, "appsec", "captcha"), 3);
    assert_eq!(dropped(&app, "appsec", "ban"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_captcha_provider_an_appsec_captcha_is_a_403_counted_once() {
    let waf = appsec(GUARDED, "/admin").await;
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = daemon(dir.path(), &waf.url, None).await;
    let fa = ForwardAuth {
        http: reqwest::Client::builder().timeout(LIMIT).build().unwrap(),
        url,
    };
    let r = fa.ask("198.51.100.30", "GET", "/login", None).await;
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["x-cerberus-remediation"], "captcha");
    assert_eq!(dropped(&app, "appsec", "captcha"), 1);

    // Through the socket, as the module goes: AppSec's frame answers captcha (counted
    // there, once), then the captcha request for it is refused (not counted again).
    let verdict = socket_appsec(&app, "198.51.100.31", "/login").await;
    assert_eq!(verdict, bouncer_api::Remediation::Captcha);
    assert_eq!(dropped(&app, "appsec", "captcha"), 2);
    let answer = socket_captcha(&app, "198.51.100.31", "/login", "", true).await;
    assert_eq!(answer, CaptchaAnswer::Refuse);
    assert_eq!(dropped(&app, "appsec", "captcha"), 2);
    app.stop().await;
}

/// One AppSec frame for a `GET uri` (no body), as the module sends it; the verdict.
async fn socket_appsec(app: &Running, client: &str, uri: &str) -> bouncer_api::Remediation {
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut out = BytesMut::new();
    bouncer_api::appsec::encode_request(
        &bouncer_api::appsec::AppsecRequest {
            id: 3,
            truncated: false,
            ip: client.parse::<IpAddr>().unwrap(),
            method: "GET",
            uri,
            host: "example.com",
            http_version: "1.1",
            headers: Vec::new(),
            body: b"",
        },
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut frame = [0u8; 10];
    tokio::time::timeout(LIMIT, s.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    let answer = bouncer_api::appsec::parse_answer(&frame).expect("an AppSec answer frame");
    assert_eq!(answer.id, 3);
    answer.remediation
}

/// One captcha request on a connection of its own, as the module sends it.
async fn socket_captcha(
    app: &Running,
    client: &str,
    uri: &str,
    cookie: &str,
    from_appsec: bool,
) -> CaptchaAnswer {
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut out = BytesMut::new();
    encode_captcha_request(
        &CaptchaRequest {
            id: 7,
            addr: client.parse::<IpAddr>().unwrap(),
            https: false,
            from_appsec,
            method: "GET".into(),
            uri: uri.into(),
            cookie: cookie.into(),
        },
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let mut input = BytesMut::new();
    loop {
        let taken = if input.is_empty() {
            Taken::Partial
        } else {
            take_captcha_answer(&mut input)
        };
        match taken {
            Taken::Message(Ok((id, answer))) => {
                assert_eq!(id, 7);
                return answer;
            }
            Taken::Message(Err(e)) => panic!("bad answer: {e}"),
            Taken::Other => panic!("not a captcha answer: {input:?}"),
            Taken::Partial => {
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout(LIMIT, s.read(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "the daemon closed the connection");
                input.extend_from_slice(&buf[..n]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_runs_the_flow_for_a_captcha_request_from_appsec() {
    let waf = appsec(GUARDED, "/admin").await;
    let site = provider(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = daemon(dir.path(), &waf.url, Some(&site.url)).await;
    let client = "198.51.100.40";

    // Without the AppSec flag an allowed address passes (the IP's verdict is allow).
    let a = socket_captcha(&app, client, "/login", "", false).await;
    assert_eq!(a, CaptchaAnswer::Pass);
    // With it: the challenge.
    let CaptchaAnswer::Respond { status, body, .. } =
        socket_captcha(&app, client, "/login", "", true).await
    else {
        panic!("a challenge");
    };
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("the-site-key"));
    assert_eq!(dropped(&app, "appsec", "captcha"), 1);
    // The solve: a 303 with the cookie; the cookie then passes.
    let solve = format!("/login?{RETURN_PARAM}=%2Flogin&{TURNSTILE_FIELD}=good");
    let CaptchaAnswer::Respond {
        status, headers, ..
    } = socket_captcha(&app, client, &solve, "", true).await
    else {
        panic!("a redirect");
    };
    assert_eq!(status, 303);
    let set = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .expect("Set-Cookie");
    let cookie = set
        .strip_prefix("cerberus_captcha=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let a = socket_captcha(&app, client, "/login", &cookie, true).await;
    assert_eq!(a, CaptchaAnswer::Pass);
    // A banned address is refused, flag or not.
    let a = socket_captcha(&app, "192.0.2.66", "/login", "", true).await;
    assert_eq!(a, CaptchaAnswer::Refuse);
    app.stop().await;
}
