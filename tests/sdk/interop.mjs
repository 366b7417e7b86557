// Providers' own Node.js SDKs against Portcullis: each verifier must accept what
// `portcullis sign` prints (GitHub, Shopify, Linear, Zoom, Paddle, Square), and where the SDK
// signs (Octokit), `portcullis verify` must accept its signature and refuse it on another
// body. Usage: node interop.mjs PATH/TO/portcullis. Exits 1 on any disagreement.

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import "@shopify/shopify-api/adapters/node";
import { shopifyApi, ApiVersion } from "@shopify/shopify-api";
import { sign as octokitSign, verify as octokitVerify } from "@octokit/webhooks-methods";
import { LinearWebhookClient } from "@linear/sdk/webhooks";
import { Paddle } from "@paddle/paddle-node-sdk";
import { WebhooksHelper } from "square";
import { AwsLambdaReceiver } from "@zoom/rivet/meetings";

const BIN = process.argv[2];
const WORK = mkdtempSync(join(tmpdir(), "portcullis-sdk-"));
const passed = [];
const failed = [];

function filterFile(name, yaml) {
  const path = join(WORK, `${name}.yaml`);
  writeFileSync(path, yaml);
  return path;
}

function sign(path, body) {
  const out = execFileSync(BIN, ["sign", "--filter", path, "--body", body], { encoding: "utf8" });
  const headers = {};
  for (const line of out.split("\n").filter(Boolean)) {
    const at = line.indexOf(": ");
    headers[line.slice(0, at).toLowerCase()] = line.slice(at + 2);
  }
  return headers;
}

function verify(path, target, headers, body) {
  let head = `POST ${target} HTTP/1.1\r\nHost: hooks.example.com\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  head += `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
  const raw = join(WORK, "request.http");
  writeFileSync(raw, head + body);
  const done = spawnSync(BIN, ["verify", "--filter", path, "--request", raw], { encoding: "utf8" });
  return [done.status === 0, done.stdout.trim()];
}

function check(what, ok, detail = "") {
  (ok ? passed : failed).push(what);
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${ok ? "" : " " + detail}`);
}

async function attempt(what, fn) {
  try {
    const result = await fn();
    check(what, result !== false, String(result));
  } catch (e) {
    check(what, false, `${e.name}: ${e.message}`);
  }
}

async function github() {
  const secret = "It's a Secret to Everybody";
  const path = filterFile("github", `name: github\npreset: github\nsecrets: ["${secret}"]\n`);
  const body = '{"action":"opened","n":1}';
  const headers = sign(path, body);
  await attempt("github: @octokit/webhooks-methods verifies sign", () =>
    octokitVerify(secret, body, headers["x-hub-signature-256"]));
  const sdk = { "x-hub-signature-256": await octokitSign(secret, body) };
  let [ok, out] = verify(path, "/webhook/github", sdk, body);
  check("github: verify accepts @octokit/webhooks-methods' signature", ok, out);
  [ok, out] = verify(path, "/webhook/github", sdk, body.replace("1", "2"));
  check("github: verify refuses it on another body", !ok, out);
}

async function shopify() {
  const secret = "shopify-app-secret";
  const path = filterFile("shopify", `name: shopify\npreset: shopify\nsecrets: ["${secret}"]\n`);
  const body = '{"id":820982911946154500,"email":"jon@example.com"}';
  const headers = sign(path, body);
  const api = shopifyApi({
    apiKey: "key", apiSecretKey: secret, scopes: [], hostName: "hooks.example.com",
    apiVersion: ApiVersion.July25, isEmbeddedApp: false, logger: { level: 0 },
  });
  await attempt("shopify: @shopify/shopify-api validates sign (headers included)", async () => {
    const rawRequest = { method: "POST", url: "/webhook/shopify", headers };
    const result = await api.webhooks.validate({ rawBody: body, rawRequest, rawResponse: {} });
    return result.valid || JSON.stringify(result);
  });
}

async function linear() {
  const secret = "lin_wh_secret";
  const path = filterFile("linear", `name: linear\npreset: linear\nsecrets: ["${secret}"]\n`);
  const body = JSON.stringify({ action: "create", type: "Issue", webhookTimestamp: Date.now() });
  const headers = sign(path, body);
  await attempt("linear: @linear/sdk verifies sign", () =>
    new LinearWebhookClient(secret).verify(Buffer.from(body), headers["linear-signature"]));
}

async function zoom() {
  const secret = "zoom-secret-token";
  const path = filterFile("zoom", `name: zoom\npreset: zoom\nsecrets: ["${secret}"]\n`);
  // Zoom's SDK re-serialises the payload before hashing: compact JSON, as Zoom sends it.
  const body = '{"event":"meeting.started","payload":{"account_id":"a1"},"event_ts":1}';
  const headers = sign(path, body);
  await attempt("zoom: @zoom/rivet verifies sign", async () => {
    const handler = new AwsLambdaReceiver({ webhooksSecretToken: secret }).start();
    const console_debug = console.debug;
    console.debug = () => {};
    const answer = await handler({ body, headers, isBase64Encoded: false }, {});
    console.debug = console_debug;
    return answer.statusCode === 200 || answer.body;
  });
}

async function paddle() {
  const secret = "pdl_ntfset_01gkpjp8bkh3ptwjn7kxjcw7wz_secret";
  const path = filterFile("paddle", `name: paddle\npreset: paddle\nsecrets: ["${secret}"]\n`);
  const body = '{"event_id":"evt_01","event_type":"transaction.paid","occurred_at":"2026-12-01T00:00:00Z","notification_id":"ntf_01","data":{}}';
  const headers = sign(path, body);
  await attempt("paddle: @paddle/paddle-node-sdk verifies sign", () =>
    // As Paddle's docs use it: the client sets up the Node runtime the check needs.
    new Paddle("pdl_sdbx_apikey_interop").webhooks.isSignatureValid(body, secret, headers["paddle-signature"]));
}

async function square() {
  const secret = "square-signature-key";
  const url = "https://hooks.example.com/webhook/square";
  const path = filterFile("square", `name: square\npreset: square\nsecrets: ["${secret}"]\npublic_url: ${url}\n`);
  const body = '{"merchant_id":"M1","type":"payment.created","event_id":"e1","data":{}}';
  const headers = sign(path, body);
  await attempt("square: square's WebhooksHelper verifies sign", () =>
    WebhooksHelper.verifySignature({
      requestBody: body, signatureHeader: headers["x-square-hmacsha256-signature"],
      signatureKey: secret, notificationUrl: url,
    }));
}

await github();
await shopify();
await linear();
await zoom();
await paddle();
await square();
const json = (path) => JSON.parse(readFileSync(new URL(path, import.meta.url)));
const versions = Object.keys(json("./package.json").dependencies)
  .map((p) => `${p} ${json(`./node_modules/${p}/package.json`).version}`)
  .join(", ");
console.log(`SDK versions: ${versions}`);
console.log(`${passed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
