// cerberus web console: the little behaviour the server-rendered pages need.
// Written for this project (no library); loaded from the daemon only (CSP script-src 'self').
"use strict";

// Time left counts down: cells carry their expiry as a Unix second in data-expires.
function formatLeft(secs) {
  if (secs <= 0) return "expired";
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + two(m) + "m";
  if (m > 0) return m + "m " + two(s) + "s";
  return s + "s";
}

function tick() {
  const now = Math.floor(Date.now() / 1000);
  document.querySelectorAll("[data-expires]").forEach((el) => {
    el.textContent = formatLeft(Number(el.dataset.expires) - now);
  });
}

// Elements with data-poll are refreshed from that URL (an HTML fragment of the server),
// unless the operator is selecting rows in them.
async function poll(el) {
  if (document.hidden) return;
  if (el.querySelector("input[type=checkbox]:checked")) return;
  if (el.contains(document.activeElement)) return;
  try {
    const r = await fetch(el.dataset.poll, { credentials: "same-origin", redirect: "error" });
    if (r.ok) {
      el.innerHTML = await r.text();
      tick();
    }
  } catch (_) {
    // The next round tries again; the page keeps what it shows.
  }
}

// "Copy JSON": copies the text of the element named by data-copy.
function wireCopy() {
  document.querySelectorAll("[data-copy]").forEach((btn) => {
    btn.addEventListener("click", async () => {
      const src = document.getElementById(btn.dataset.copy);
      const state = document.getElementById("copy-state");
      try {
        await navigator.clipboard.writeText(src.textContent);
        if (state) state.textContent = "Copied.";
      } catch (e) {
        if (state) state.textContent = "The browser refused the clipboard: select the text below and copy it.";
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  document.querySelectorAll("[data-poll]").forEach((el) => {
    setInterval(() => poll(el), 3000);
  });
  wireCopy();
});
