// A loopback stand-in for a captcha provider (Cloudflare Turnstile's shapes), for the
// captcha browser test. What it copies from the real service, and where that was found:
// - the widget script turns each `.cf-turnstile[data-sitekey]` element into a widget
//   and, once solved, puts the token into a hidden input named `cf-turnstile-response`
//   inside the element's form, then calls the function named by `data-callback`
//   (crowdsecurity/lua-cs-bouncer lib/plugins/crowdsec/captcha.lua: the widget class
//   `cf-turnstile` and the field `<class>-response`; developers.cloudflare.com/turnstile
//   "Client-side rendering" for data-sitekey and data-callback);
// - siteverify takes a form POST of `secret`, `response`, `remoteip` and answers JSON
//   `{"success": bool, "error-codes": [...]}` (captcha.lua `M.Validate`, and Cloudflare's
//   "Server-side validation" page: invalid-input-secret, invalid-input-response, and a
//   token is good once).
// Here a token is good when this server issued it (one per served widget script), the
// secret matches, and it was not used before.
import http from "node:http";
import { randomBytes } from "node:crypto";

export function startProvider(secret) {
  const issued = new Set();
  const verified = [];
  const server = http.createServer((req, res) => {
    if (req.method === "GET" && req.url.startsWith("/api.js")) {
      const token = "tok-" + randomBytes(12).toString("hex");
      issued.add(token);
      res.writeHead(200, { "content-type": "text/javascript", "cache-control": "no-store" });
      res.end(`(function () {
  for (const el of document.querySelectorAll(".cf-turnstile[data-sitekey]")) {
    const form = el.closest("form");
    const field = document.createElement("input");
    field.type = "hidden";
    field.name = "cf-turnstile-response";
    (form || el).appendChild(field);
    const button = document.createElement("button");
    button.type = "button";
    button.id = "stand-in-solve";
    button.textContent = "I am human (" + el.dataset.sitekey + ")";
    button.addEventListener("click", function () {
      field.value = ${JSON.stringify(token)};
      const done = window[el.dataset.callback];
      if (typeof done === "function") done(field.value);
    });
    el.appendChild(button);
  }
})();`);
      return;
    }
    if (req.method === "POST" && req.url === "/siteverify") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const form = new URLSearchParams(body);
        const token = form.get("response") || "";
        const codes = [];
        if (form.get("secret") !== secret) codes.push("invalid-input-secret");
        if (!issued.has(token)) codes.push("invalid-input-response");
        const success = codes.length === 0;
        if (success) issued.delete(token);
        verified.push({ token, remoteip: form.get("remoteip"), success });
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ success, "error-codes": codes }));
      });
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const base = `http://127.0.0.1:${server.address().port}`;
      resolve({ base, verified, close: () => new Promise((r) => server.close(r)) });
    });
  });
}
