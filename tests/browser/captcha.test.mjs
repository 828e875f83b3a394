// Captcha in Debian's chromium (playwright-core), through our Caddy with the cerberus
// module (caddy-module/bin/caddy, from scripts/build-caddy.sh) and through Debian's
// Caddy with forward_auth, against the real cerberus binary and a loopback stand-in of
// the provider (captcha-provider.mjs). Run by scripts/browser-test.sh (CERBERUS_BIN,
// CHROMIUM, MODULE_CADDY; Debian's caddy is /usr/bin/caddy).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import { freePort } from "./net.mjs";
import { chromium } from "playwright-core";
import { startProvider } from "./captcha-provider.mjs";

const BIN = process.env.CERBERUS_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const MODULE_CADDY = process.env.MODULE_CADDY;
const DEBIAN_CADDY = process.env.DEBIAN_CADDY || "/usr/bin/caddy";
assert.ok(BIN, "CERBERUS_BIN names the cerberus binary");
assert.ok(MODULE_CADDY, "MODULE_CADDY names Caddy built with the module");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SECRET = "stand-in-secret";
const CAPTCHA_IP = "198.51.100.7"; // a second client with a captcha decision
const BANNED_IP = "198.51.100.66"; // next to it, banned

async function waitFor(what, url, ok) {
  for (let i = 0; i < 400; i++) {
    try {
      const r = await fetch(url, { redirect: "manual" });
      if (ok(r)) return;
    } catch (_) {}
    await sleep(50);
  }
  throw new Error(`${what} did not come up at ${url}`);
}

let dir, provider, upstream, daemon, caddies = [], browser, admin, token;
const children = [];

function run(bin, args, log) {
  const out = openSync(log, "a");
  const child = spawn(bin, args, { stdio: ["ignore", out, out] });
  children.push(child);
  return child;
}

async function api(path, body) {
  const r = await fetch(`${admin}/api/v1/cerberus/crowdsec${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.ok(r.ok, `${path}: ${r.status} ${await r.text()}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "cerberus-captcha-"));
  provider = await startProvider(SECRET);
  upstream = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<h1 id="upstream">upstream saw ${req.method} ${req.url}</h1>`);
  });
  await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
  const up = `127.0.0.1:${upstream.address().port}`;
  const [adminPort, faPort, modPort, fwdPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  admin = `http://127.0.0.1:${adminPort}`;
  const config = join(dir, "cerberus.yaml");
  writeFileSync(
    config,
    [
      `data_dir: ${dir}`,
      `socket: ${dir}/cerberus.sock`,
      `snapshot_dir: off`,
      `admin_listen: 127.0.0.1:${adminPort}`,
      `forward_auth_listen: 127.0.0.1:${faPort}`,
      `trusted_proxies: [127.0.0.1]`,
      `capi_url: http://127.0.0.1:9`,
      `captcha_provider: turnstile`,
      `captcha_site_key: stand-in-site-key`,
      `captcha_secret_key: ${SECRET}`,
      `captcha_script_url: ${provider.base}/api.js`,
      `captcha_verify_url: ${provider.base}/siteverify`,
      `captcha_expiration: 10m`,
      "",
    ].join("\n"),
  );
  daemon = run(BIN, ["run", "-c", config], join(dir, "daemon.log"));
  await waitFor("cerberus", `${admin}/healthz`, (r) => r.ok);
  token = readFileSync(join(dir, "admin_token"), "utf8").trim();
  for (const value of ["127.0.0.1", CAPTCHA_IP]) {
    await api("/ban", { value, duration: "1h", type: "captcha", reason: "browser test" });
  }
  await api("/ban", { value: BANNED_IP, duration: "1h", reason: "browser test" });

  // Both Caddys believe X-Forwarded-For from loopback (as behind a proxy), so a test
  // can speak for another client IP: our Caddy through its server option, Debian's
  // 2.6.2 (which has none) through forward_auth's own trusted_proxies.
  const global = `{\n\tadmin off\n\tauto_https off\n}\n`;
  const trusted = `{\n\tadmin off\n\tauto_https off\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n}\n`;
  // The module's lookups get 5 s and fail closed: the 20 ms default is short for a
  // loaded test machine, and failing open would let a captcha client through unseen.
  const mod = join(dir, "Caddyfile.module");
  writeFileSync(
    mod,
    trusted +
      `http://127.0.0.1:${modPort} {\n\troute {\n\t\tcerberus {\n\t\t\tsocket ${dir}/cerberus.sock\n\t\t\tsnapshot_dir off\n\t\t\ttimeout 5s\n\t\t\tfail closed\n\t\t}\n\t\treverse_proxy ${up}\n\t}\n}\n`,
  );
  const fwd = join(dir, "Caddyfile.forward_auth");
  writeFileSync(
    fwd,
    global +
      `http://127.0.0.1:${fwdPort} {\n\tforward_auth 127.0.0.1:${faPort} {\n\t\turi /\n\t\ttrusted_proxies 127.0.0.1/32\n\t\tcopy_headers X-Cerberus-Remediation\n\t}\n\treverse_proxy ${up}\n}\n`,
  );
  run(MODULE_CADDY, ["run", "--adapter", "caddyfile", "--config", mod], join(dir, "caddy-module.log"));
  run(DEBIAN_CADDY, ["run", "--adapter", "caddyfile", "--config", fwd], join(dir, "caddy-fwd.log"));
  caddies = [
    { name: "module", base: `http://127.0.0.1:${modPort}` },
    { name: "forward_auth", base: `http://127.0.0.1:${fwdPort}` },
  ];
  for (const c of caddies) await waitFor(`Caddy (${c.name})`, `${c.base}/`, (r) => r.status === 403);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  await sleep(300);
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  upstream?.close();
  await provider?.close();
  if (process.env.KEEP_DIRS) console.log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
});

async function expectChallenge(page, response, why) {
  assert.equal(response.status(), 403, `${why}: the challenge page`);
  assert.equal(response.headers()["x-cerberus-remediation"], "captcha", why);
  assert.match(response.headers()["content-security-policy"], /script-src 'nonce-[A-Za-z0-9_-]+'/, why);
  // The stand-in's widget ran under the page's CSP: its button is there.
  await page.locator("#stand-in-solve").waitFor({ timeout: 10000 });
  assert.match(await page.locator("#stand-in-solve").innerText(), /stand-in-site-key/);
}

for (const door of ["module", "forward_auth"]) {
  test(`captcha through ${door}: challenge, solve, back to the URL, cookie remembered`, async () => {
    const { base } = caddies.find((c) => c.name === door);
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const asked = `${base}/shop/item?color=blue&size=2`;
    await expectChallenge(page, await page.goto(asked), "first visit");
    const before = provider.verified.length;
    await Promise.all([
      page.waitForURL(asked, { timeout: 15000 }),
      page.locator("#stand-in-solve").click(),
    ]);
    assert.equal(
      await page.locator("#upstream").innerText(),
      "upstream saw GET /shop/item?color=blue&size=2",
      "the original URL is served, without the solve's parameters",
    );
    const calls = provider.verified.slice(before);
    assert.equal(calls.length, 1, "one siteverify call");
    assert.equal(calls[0].success, true);
    assert.equal(calls[0].remoteip, "127.0.0.1");
    const [cookie] = (await ctx.cookies()).filter((c) => c.name === "cerberus_captcha");
    assert.ok(cookie, "the clearance cookie is set");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Lax");
    assert.equal(cookie.secure, false, "plain http: no Secure");

    const again = await page.goto(`${base}/elsewhere`);
    assert.equal(again.status(), 200, "the cookie is remembered");
    assert.equal(await page.locator("#upstream").innerText(), "upstream saw GET /elsewhere");

    // A fresh browser context has no cookie: challenged.
    const fresh = await browser.newContext();
    const fp = await fresh.newPage();
    await expectChallenge(fp, await fp.goto(`${base}/elsewhere`), "fresh browser");

    // A forged cookie (right shape, a far expiry, a MAC of our own): challenged.
    const forged = await browser.newContext();
    await forged.addCookies([{ ...cookie, value: `9999999999.${"A".repeat(43)}` }]);
    const gp = await forged.newPage();
    await expectChallenge(gp, await gp.goto(`${base}/elsewhere`), "forged cookie");
    // The real cookie with its expiry moved: challenged.
    const [exp, mac] = cookie.value.split(".");
    await forged.addCookies([{ ...cookie, value: `${Number(exp) + 3600}.${mac}` }]);
    await expectChallenge(gp, await gp.goto(`${base}/elsewhere`), "expiry moved");

    // The valid cookie from another client IP (told by the trusted proxy): challenged.
    const other = await browser.newContext({ extraHTTPHeaders: { "X-Forwarded-For": CAPTCHA_IP } });
    await other.addCookies([cookie]);
    const op = await other.newPage();
    await expectChallenge(op, await op.goto(`${base}/elsewhere`), "another client IP");

    // A ban next to it stays 403, whatever cookie it carries.
    const banned = await browser.newContext({ extraHTTPHeaders: { "X-Forwarded-For": BANNED_IP } });
    await banned.addCookies([cookie]);
    const bp = await banned.newPage();
    const br = await bp.goto(`${base}/elsewhere`);
    assert.equal(br.status(), 403);
    assert.equal(await bp.locator("#stand-in-solve").count(), 0, "a ban is no challenge");
    assert.match(await bp.content(), /ban/);

    // A POST with a captcha decision (no cookie) gets 403, not the page.
    const post = await fresh.request.post(`${base}/shop/cart`, { data: "qty=1", maxRedirects: 0 });
    assert.equal(post.status(), 403);
    assert.doesNotMatch(await post.text(), /cf-turnstile/);

    // A solve with a token the provider never issued: the page again, no cookie.
    const bogus = await fresh.request.get(
      `${base}/x?__cerberus_captcha=%2Fx&cf-turnstile-response=made-up`,
      { maxRedirects: 0 },
    );
    assert.equal(bogus.status(), 403);
    assert.match(await bogus.text(), /cf-turnstile/);
    assert.equal(bogus.headers()["set-cookie"], undefined);
    for (const c of [ctx, fresh, forged, other, banned]) await c.close();
  });
}

test("captcha metrics count challenges, solves and failures", async () => {
  const text = await (await fetch(`${admin}/metrics`)).text();
  const value = (re) => Number((text.match(re) || [])[1] || 0);
  assert.ok(value(/^cerberus_captcha_challenges_total (\d+)/m) >= 10, text);
  assert.equal(value(/^cerberus_captcha_solved_total (\d+)/m), 2);
  assert.ok(value(/^cerberus_captcha_failed_total\{reason="rejected"\} (\d+)/m) >= 2);
  assert.ok(value(/^cerberus_captcha_refused_total\{reason="method"\} (\d+)/m) >= 2);
});
