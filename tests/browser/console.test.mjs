// The web console in Debian's chromium, driven by playwright-core, against the real
// cerberus binary (standalone, with a config file) started and restarted by this file.
// Run by scripts/browser-test.sh, which installs chromium and playwright-core and sets
// CERBERUS_BIN and CHROMIUM. With SCREENSHOTS=DIR it also saves each page there.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./net.mjs";
import { chromium } from "playwright-core";

const BIN = process.env.CERBERUS_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS || "";
assert.ok(BIN, "CERBERUS_BIN names the cerberus binary");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One daemon: its directory, config, port, log; start() and stop() it.
class Daemon {
  constructor(extra = "") {
    this.dir = mkdtempSync(join(tmpdir(), "cerberus-browser-"));
    this.extra = extra;
    this.log = join(this.dir, "daemon.log");
    this.config = join(this.dir, "cerberus.yaml");
  }
  async start() {
    this.port ??= await freePort();
    writeFileSync(
      this.config,
      `data_dir: ${this.dir}\nsocket: ${this.dir}/cerberus.sock\nadmin_listen: 127.0.0.1:${this.port}\n` +
        `forward_auth_listen: off\ncapi_url: http://127.0.0.1:9\nlog_level: info\n${this.extra}`,
    );
    const { openSync } = await import("node:fs");
    const out = openSync(this.log, "a");
    this.child = spawn(BIN, ["run", "-c", this.config], { stdio: ["ignore", out, out] });
    this.base = `http://127.0.0.1:${this.port}`;
    for (let i = 0; i < 400; i++) {
      try {
        const r = await fetch(`${this.base}/healthz`);
        if (r.ok) break;
      } catch (_) {}
      await sleep(50);
    }
    this.token = readFileSync(join(this.dir, "admin_token"), "utf8").trim();
  }
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const done = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    await Promise.race([done, sleep(10000)]);
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
  lookup(ip) {
    const out = execFileSync(BIN, ["-c", this.config, "lookup", ip], { encoding: "utf8" });
    return JSON.parse(out);
  }
  logText() {
    return readFileSync(this.log, "utf8");
  }
}

// 100k decisions written into the daemon's SQLite before its first start (the schema of
// src/persist.rs), negative ids as cerberus's own local bans.
function seed(dir, n) {
  const script = `
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.executescript("""CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, value TEXT NOT NULL,
 type TEXT NOT NULL, origin TEXT NOT NULL, scenario TEXT NOT NULL, expires_at INTEGER NOT NULL);""")
exp = int(time.time()) + 86400
rows = []
for i in range(int(sys.argv[2])):
    ip = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
    rows.append((-(i + 1), ip, "captcha" if i % 4 == 0 else "ban", "cerberus", "seed-%d" % (i % 7), exp))
db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?)", rows)
db.commit()
`;
  execFileSync("python3", ["-c", script, join(dir, "cerberus.db"), String(n)]);
}

let browser;
const main = new Daemon();
const down = new Daemon("api_url: http://127.0.0.1:9/\napi_key: browser-test-key\n");

before(async () => {
  seed(main.dir, 100_000);
  await main.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await main.stop();
  await down.stop();
  if (!process.env.KEEP) {
    rmSync(main.dir, { recursive: true, force: true });
    rmSync(down.dir, { recursive: true, force: true });
  }
});

async function newPage(width = 1280, height = 900) {
  const context = await browser.newContext({ viewport: { width, height } });
  return { context, page: await context.newPage() };
}

async function signIn(page, d = main) {
  await page.goto(`${d.base}/`);
  await page.getByLabel("Admin token").fill(d.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Overview" }).waitFor();
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

test("sign-in: a wrong token is refused and nothing else is visible", async () => {
  const { context, page } = await newPage();
  for (const path of ["/", "/decisions", "/hub", "/console", "/diagnostics"]) {
    await page.goto(`${main.base}${path}`);
    assert.equal(new URL(page.url()).pathname, "/signin", path);
  }
  await shot(page, "signin");
  await page.getByLabel("Admin token").fill("wrong-token-from-the-browser");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").waitFor();
  assert.match(await page.getByRole("alert").textContent(), /Wrong admin token/);
  assert.equal(await page.getByRole("link", { name: "Live decisions" }).count(), 0);
  assert.equal((await context.cookies()).length, 0);
  await signIn(page);
  const [cookie] = await context.cookies();
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.ok(!page.url().includes(main.token));
  assert.ok(!(await page.content()).includes(main.token));
  await context.close();
});

test("the protection switch: bypassed, then enforced, and it survives a restart", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  await page.goto(`${main.base}/decisions`);
  await page.getByLabel("IP or range").fill("192.0.2.44");
  await page.getByRole("button", { name: "Ban", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "Banned 192.0.2.44" }).waitFor();
  assert.equal(main.lookup("192.0.2.44").remediation, "ban");

  await page.getByRole("link", { name: "Overview" }).click();
  const sw = page.getByRole("switch", { name: "CrowdSec protection" });
  assert.equal(await sw.getAttribute("aria-checked"), "true");
  await shot(page, "overview");
  await sw.click();
  await page.getByRole("status").filter({ hasText: "protection is off" }).waitFor();
  let a = main.lookup("192.0.2.44");
  assert.equal(a.remediation, "allow");
  assert.equal(a.bypassed, true);

  await main.stop();
  await main.start();
  assert.equal(main.lookup("192.0.2.44").bypassed, true, "off survives a restart");
  await signIn(page);
  const sw2 = page.getByRole("switch", { name: "CrowdSec protection" });
  assert.equal(await sw2.getAttribute("aria-checked"), "false");
  await sw2.press("Enter"); // the keyboard works too
  await page.getByRole("status").filter({ hasText: "protection is on" }).waitFor();
  a = main.lookup("192.0.2.44");
  assert.equal(a.remediation, "ban");
  assert.equal(a.bypassed, false);
  await context.close();
});

test("ban from the form, the row appears; unban from the row, the hot path allows", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  await page.goto(`${main.base}/decisions`);
  await page.getByLabel("IP or range").fill("203.0.113.77");
  await page.getByLabel("Duration").fill("24h");
  await page.getByLabel("Reason").fill("browser test ban");
  await page.getByRole("button", { name: "Ban", exact: true }).click();
  const row = page.getByRole("row").filter({ hasText: "203.0.113.77" });
  await row.waitFor();
  assert.match(await row.textContent(), /browser test ban/);
  assert.equal(main.lookup("203.0.113.77").remediation, "ban");
  await shot(page, "decisions");

  await row.getByRole("button", { name: "Unban" }).click();
  await page.getByRole("button", { name: "Confirm unban" }).click();
  await page.getByRole("status").filter({ hasText: "hot path allows it now" }).waitFor();
  assert.equal(main.lookup("203.0.113.77").remediation, "allow");
  await context.close();
});

test("new decisions appear without a reload", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  await page.goto(`${main.base}/decisions?ip=198.51.100.200`);
  assert.equal(await page.getByRole("row").filter({ hasText: "198.51.100.200" }).count(), 0);
  const r = await fetch(`${main.base}/api/v1/cerberus/crowdsec/ban`, {
    method: "POST",
    headers: { authorization: `Bearer ${main.token}`, "content-type": "application/json" },
    body: JSON.stringify({ value: "198.51.100.200", reason: "from the API" }),
  });
  assert.equal(r.status, 201);
  await page.getByRole("row").filter({ hasText: "198.51.100.200" }).waitFor({ timeout: 10000 });
  await context.close();
});

test("paging and filters over 100k decisions", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  await page.goto(`${main.base}/decisions`);
  assert.match(await page.locator("#page-info").textContent(), /Page 1 of \d+ \(1000\d\d decisions\)/);
  assert.equal(await page.getByRole("button", { name: /^Unban \d/ }).count(), 50);
  await page.getByRole("link", { name: "Next page" }).click();
  assert.match(await page.locator("#page-info").textContent(), /Page 2 of/);
  await page.getByLabel("Filter by type").fill("captcha");
  await page.getByRole("button", { name: "Filter" }).click();
  assert.match(await page.locator("#page-info").textContent(), /\(25000 decisions\)/);
  await page.getByLabel("Filter by IP").fill("10.1.2.3");
  await page.getByLabel("Filter by type").fill("");
  await page.getByRole("button", { name: "Filter" }).click();
  assert.match(await page.locator("#page-info").textContent(), /\(1 decisions\)/);
  await page.getByRole("row").filter({ hasText: "10.1.2.3" }).waitFor();
  await context.close();
});

test("hub presets and console enrollment say what to configure without an engine", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  await page.getByRole("link", { name: "Hub presets" }).click();
  await page.getByText("hub presets need the managed engine").waitFor();
  await shot(page, "hub");
  await page.getByRole("link", { name: "Console enrollment" }).click();
  await page.getByText("console enrollment needs").waitFor();
  await shot(page, "console");
  await context.close();
});

test("diagnostics shows LAPI down while it is down", async () => {
  await down.start();
  const { context, page } = await newPage();
  await signIn(page, down);
  await page.getByRole("link", { name: "Diagnostics" }).click();
  assert.equal(await page.locator("#conn-lapi").textContent(), "unreachable");
  assert.ok(await page.getByRole("button", { name: "Copy JSON" }).isVisible());
  await shot(page, "diagnostics");
  await page.getByRole("link", { name: "Overview" }).click();
  assert.match(await page.locator("#lapi-health").textContent(), /unreachable/);
  await context.close();
});

test("security: CSRF, foreign Origin, and the token in no page, URL or log line", async () => {
  const { context, page } = await newPage();
  await signIn(page);
  // A form without the CSRF token, posted from the signed-in browser: refused, no change.
  const refused = await page.evaluate(async () => {
    const r = await fetch("/protection", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "on=false",
    });
    return r.status;
  });
  assert.equal(refused, 403);
  assert.equal(main.lookup("192.0.2.44").bypassed, false);
  // Another origin (a page on another port) posting with the cookie: refused.
  const cookie = (await context.cookies())[0];
  const r = await fetch(`${main.base}/protection`, {
    method: "POST",
    headers: { cookie: `${cookie.name}=${cookie.value}`, origin: "http://evil.example", "content-type": "application/x-www-form-urlencoded" },
    body: "on=false",
    redirect: "manual",
  });
  assert.equal(r.status, 403);
  assert.equal(main.lookup("192.0.2.44").bypassed, false);
  for (const path of ["/", "/decisions", "/diagnostics"]) {
    await page.goto(`${main.base}${path}`);
    assert.ok(!(await page.content()).includes(main.token), path);
  }
  const log = main.logText();
  assert.ok(log.includes("web console: signed in"));
  assert.ok(!log.includes(main.token), "the token is in a log line");
  assert.ok(!log.includes("wrong-token-from-the-browser"));
  await context.close();
});

test("phone width: the pages fit 390 px", async () => {
  const { context, page } = await newPage(390, 844);
  await signIn(page);
  await page.goto(`${main.base}/decisions`);
  for (const path of ["/", "/decisions", "/hub", "/console", "/diagnostics"]) {
    await page.goto(`${main.base}${path}`);
    const wide = await page.evaluate(() =>
      [...document.querySelectorAll("body *")]
        .filter((e) => e.getBoundingClientRect().right > 391 && !e.closest(".scroll"))
        .map((e) => e.tagName + "#" + e.id + "." + e.className)
        .slice(0, 5),
    );
    assert.deepEqual(wide, [], `${path}: wider than 390 px`);
  }
  await page.goto(`${main.base}/decisions`);
  await shot(page, "decisions-phone");
  await context.close();
});
