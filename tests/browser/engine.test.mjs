// The engine pages of the web console in Debian's chromium: hub presets (search by a
// word of the description, install from a loopback hub, the result and the badge) and
// console enrollment (enrolled; an expired key's message and fix; the key in no page).
// The stage is tests/web_engine_scene.rs (cerberus in engine mode with the managed
// CrowdSec engine, the loopback hub, the central-API stand-in): started here with cargo,
// it prints one `SCENE {json}` line and stops when its stdin closes.
// Run by scripts/browser-test.sh (which builds the scene first and sets CHROMIUM); with
// SCREENSHOTS=DIR it also saves both pages there.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS || "";
const REPO = fileURLToPath(new URL("../..", import.meta.url));

let scene, stage, browser;
let stageLog = "";

// Starts the scene and resolves with its SCENE line (or rejects with its output).
function startScene() {
  return new Promise((resolve, reject) => {
    stage = spawn("cargo", ["test", "--quiet", "--test", "web_engine_scene", "--", "--ignored", "--nocapture", "--exact", "scene"], {
      cwd: REPO,
      stdio: ["pipe", "pipe", "pipe"],
      detached: true, // a process group of its own: cargo, the scene and what it started
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`no SCENE line within 240 s:\n${out}\n${stageLog}`)), 240_000);
    stage.stderr.on("data", (d) => (stageLog += d));
    stage.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.startsWith("SCENE "));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice("SCENE ".length)));
      }
    });
    stage.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the scene exited (${code}) before its SCENE line:\n${out}\n${stageLog}`));
    });
  });
}

before(async () => {
  scene = await startScene();
  if (!scene.real_hub) console.log(`no hub fixtures: searching the project's own index for ${scene.search_hit}`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (stage && stage.exitCode === null) {
    const done = new Promise((r) => stage.once("exit", r));
    stage.stdin.end();
    await Promise.race([done, new Promise((r) => setTimeout(r, 30_000))]);
    if (stage.exitCode === null) process.kill(-stage.pid, "SIGKILL");
  }
});

async function signedIn() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${scene.base}/`);
  await page.getByLabel("Admin token").fill(scene.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Overview" }).waitFor();
  return { context, page };
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// The preset row whose name is exactly `name`.
function presetRow(page, name) {
  return page.locator("li.preset").filter({ has: page.locator("strong").getByText(name, { exact: true }) });
}

async function search(page, word) {
  await page.getByRole("link", { name: "Hub presets" }).click();
  await page.getByRole("searchbox", { name: "Search" }).fill(word);
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.locator("#hub-count").waitFor();
}

test("hub presets: a word of the description finds the item, Install shows what was written, then installed", async () => {
  const { context, page } = await signedIn();
  await search(page, scene.search_word);
  const row = presetRow(page, scene.search_hit);
  assert.equal(await row.count(), 1, `${scene.search_hit} is not listed for "${scene.search_word}"`);
  assert.doesNotMatch(scene.search_hit, new RegExp(scene.search_word, "i"), "the word is in the name, not only the description");
  assert.equal(await row.locator(".badge.ok").count(), 0, "installed before the install");

  await presetRow(page, scene.install).getByRole("button", { name: `Install ${scene.install}`, exact: true }).click();
  const result = page.locator("#hub-result");
  await result.waitFor({ timeout: 120_000 });
  assert.equal(await result.getAttribute("role"), "status", await result.textContent());
  assert.match(await result.textContent(), new RegExp(`Install of ${scene.install} done\\.`));
  // What was written: the item and what it brings, listed under "Installed".
  await page.getByRole("heading", { name: "Installed" }).waitFor();
  const written = await page.locator("h2:text-is('Installed') + ul li").allTextContents();
  assert.ok(written.some((l) => l.startsWith(`${scene.install} (collections)`)), written.join("\n"));
  assert.ok(written.length > 1, `only the collection itself was written: ${written}`);
  const report = JSON.parse(await page.locator("details pre").textContent());
  assert.equal(report.changed, true);
  assert.equal(report.validated, true, "the engine's config test did not pass");
  assert.equal(report.reloaded, true);
  // The engine accepts what was written (the same check, run here once more).
  execFileSync(scene.crowdsec, ["-c", scene.engine_config, "-t"], { stdio: "pipe", timeout: 120_000 });

  await page.getByRole("link", { name: "Back to the presets" }).click();
  const after = presetRow(page, scene.install);
  await after.waitFor();
  assert.equal(await after.locator(".badge.ok").textContent(), "installed");
  assert.equal(await after.getByRole("button", { name: `Remove ${scene.install}`, exact: true }).count(), 1);
  await shot(page, "hub-engine");
  await context.close();
});

test("console enrollment: an expired key says so with its fix, a good key enrolls, the key in no page", async () => {
  const { context, page } = await signedIn();
  await page.getByRole("link", { name: "Console enrollment" }).click();
  assert.equal(await page.locator("#console-state").textContent(), "not_enrolled");

  const expired = `${scene.expired_key_prefix}${randomBytes(12).toString("hex")}`;
  await page.getByLabel("Enrollment key").fill(expired);
  await page.getByRole("button", { name: "Enroll", exact: true }).click();
  const alert = page.getByRole("alert").filter({ hasText: "Not enrolled" });
  await alert.waitFor({ timeout: 60_000 });
  const msg = await alert.textContent();
  assert.match(msg, /has expired/);
  assert.match(msg, /Copy a fresh key from app\.crowdsec\.net/);
  assert.equal(await page.locator("#console-state").textContent(), "failed");
  assert.ok(!(await page.content()).includes(expired), "the expired key is in the page");

  const good = `clk${randomBytes(12).toString("hex")}`;
  await page.getByLabel("Enrollment key").fill(good);
  await page.getByLabel("Instance name").fill("browser-1");
  await page.getByRole("button", { name: "Enroll", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "Enrolled." }).waitFor({ timeout: 60_000 });
  assert.equal(await page.locator("#console-state").textContent(), "enrolled");
  assert.ok(!(await page.content()).includes(good), "the key is in the page");
  await shot(page, "console-engine");
  await page.reload();
  assert.equal(await page.locator("#console-state").textContent(), "enrolled");
  assert.ok(!(await page.content()).includes(good), "the key is in the page after a reload");
  assert.ok(!(await page.content()).includes(expired));
  assert.ok(!stageLog.includes(good) && !stageLog.includes(expired), "a key is in the scene's log");
  await context.close();
});
