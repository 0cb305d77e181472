// The console end to end, in a real Chromium against a real `sojourn dev`:
// build a workflow by dragging and connecting nodes, see and fix a
// validation error, preview, publish, start an execution and follow it to
// its end in the inspector, find it in analytics, drive a trigger's
// lifecycle, sign in with a key; a screenshot of every page in e2e/out/.
// Then a 200-node workflow: the time until its canvas is usable and the
// frame times of a drag, printed.
//
//   node e2e/run.mjs            (SOJOURN_BIN, CHROMIUM to override paths)
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "out");
const bin = process.env.SOJOURN_BIN ?? resolve(here, "../../target/debug/sojourn");
const browserPath = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
if (!existsSync(bin)) fail(`no sojourn binary at ${bin} (cargo build first, or set SOJOURN_BIN)`);
if (!browserPath) fail("no Chromium: install Debian's chromium package, or set CHROMIUM");

function fail(message) {
  console.error(`e2e: ${message}`);
  process.exit(1);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function freePort() {
  return new Promise((ok, no) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on("error", no);
  });
}

async function startNode() {
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), "sojourn-e2e-"));
  // The node reads every SOJOURN_* variable as a setting: this script's own
  // (SOJOURN_BIN) is not one.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== "SOJOURN_BIN"));
  const child = spawn(bin, ["dev", "--listen", `127.0.0.1:${port}`, "--data", data], {
    // The rollup every 300 ms, so analytics show this run's execution.
    env: { ...env, SOJOURN_ENGINE__ANALYTICS_ROLLUP_MS: "300", RUST_LOG: "warn" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) return { url, child, data, log: () => log };
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill();
  fail(`sojourn dev did not become ready:\n${log}`);
}

async function api(base, method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Drags from one element's centre to another's with real mouse moves. */
async function drag(page, from, to) {
  const a = await from.boundingBox();
  const b = await to.boundingBox();
  check(a && b, "drag: an element is not on screen");
  await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2);
  await page.mouse.down();
  await page.mouse.move(a.x + a.width / 2 + 10, a.y + a.height / 2 + 10, { steps: 3 });
  await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2, { steps: 12 });
  await page.mouse.up();
}

/** Drags an element by (dx, dy) pixels. */
async function dragBy(page, what, dx, dy) {
  const a = await what.boundingBox();
  check(a, "dragBy: the element is not on screen");
  await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2);
  await page.mouse.down();
  await page.mouse.move(a.x + a.width / 2 + dx, a.y + a.height / 2 + dy, { steps: 10 });
  await page.mouse.up();
}

const node = await startNode();
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 1500, height: 950 }, timezoneId: "Europe/Paris" });
const page = await context.newPage();
page.setDefaultTimeout(15_000);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.on("console", (m) => {
  // Failed requests are reported below, with their address.
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(m.text());
});
// Every failed request is an error, except the refused keys of the sign-in step.
let expect401 = false;
page.on("response", (r) => {
  if (r.status() >= 400 && !(expect401 && r.status() === 401)) pageErrors.push(`${r.status()} ${r.request().method()} ${r.url()}`);
});
const shot = (name) => page.screenshot({ path: join(out, `${name}.png`), fullPage: false });
let step = "start";
const figures = {};

try {
  step = "dashboard";
  await page.goto(node.url + "/");
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  await page.getByText("No workflow yet").first().waitFor();
  await page.getByText("database: ").or(page.getByText("database")).first().waitFor();
  await shot("01-dashboard-empty");

  step = "create a workflow";
  await page.getByRole("link", { name: "Workflows" }).click();
  await page.getByPlaceholder("welcome-series").fill("e2e-welcome");
  await page.getByPlaceholder("Welcome series").fill("E2E welcome");
  await page.getByRole("button", { name: "New workflow" }).click();
  await page.waitForURL(/\/workflows\/e2e-welcome$/);
  const canvas = page.getByTestId("canvas");
  await canvas.locator('.react-flow__node[data-id="start"]').waitFor();
  await page.getByTestId("validity").getByText("valid").waitFor();

  step = "drag nodes from the palette";
  // Dropped below the start node, the exit pushed further down.
  const canvasBox = await canvas.boundingBox();
  const startBox = await canvas.locator('.react-flow__node[data-id="start"]').boundingBox();
  const below = (dy) => ({ x: startBox.x - canvasBox.x + startBox.width / 2, y: startBox.y - canvasBox.y + dy });
  await dragBy(page, canvas.locator('.react-flow__node[data-id="done"]'), 0, 230);
  await page.locator('[data-palette="delay"]').dragTo(canvas, { targetPosition: below(110) });
  await canvas.locator('.react-flow__node[data-id="delay"]').waitFor();
  // Undo takes the drop back; redo brings it again.
  await canvas.click({ position: { x: 20, y: 20 } });
  await page.keyboard.press("Control+z");
  await canvas.locator('.react-flow__node[data-id="delay"]').waitFor({ state: "detached" });
  await page.keyboard.press("Control+Shift+z");
  await canvas.locator('.react-flow__node[data-id="delay"]').waitFor();
  await page.locator('[data-palette="email.send"]').dragTo(canvas, { targetPosition: below(220) });
  const send = canvas.locator('.react-flow__node[data-id="send"]');
  await send.waitFor();

  step = "connect the nodes";
  const handle = (id, kind, branch) =>
    canvas.locator(`.react-flow__node[data-id="${id}"] .react-flow__handle.${kind}${branch ? `[data-handleid="${branch}"]` : ""}`);
  await drag(page, handle("start", "source", "next"), handle("delay", "target"));
  await drag(page, handle("delay", "source", "next"), handle("send", "target"));
  await drag(page, handle("send", "source", "success"), handle("done", "target"));
  await page.waitForFunction(() => document.querySelectorAll(".react-flow__edge").length === 3);

  step = "the server's validation on the node";
  await send.locator(".problem").first().waitFor();
  const problem = await send.locator(".problem").first().innerText();
  check(/inputs/.test(problem), `expected a problem with the email's inputs, got ${problem}`);
  await page.getByTestId("validity").getByText(/problem/).waitFor();
  await shot("02-builder-invalid");

  step = "set properties";
  await send.click();
  await page.locator("#root_inputs_to").fill("{{ input.email }}");
  await page.getByText(/Template: \{\{ input/).first().waitFor();
  await page.locator("#root_inputs_subject").fill("Welcome, {{ input.name }}");
  const body = page.locator("#root_inputs_text");
  if (await body.count()) await body.fill("Glad you are here.");
  await canvas.locator('.react-flow__node[data-id="delay"]').click();
  await page.locator("#root_duration").fill("1s");
  await page.getByTestId("validity").getByText("valid", { exact: true }).waitFor();
  check((await send.locator(".problem").count()) === 0, "the email node still shows a problem");

  step = "keyboard: add from the palette and delete";
  await page.locator('[data-palette="condition"]').focus();
  await page.keyboard.press("Enter");
  const cond = canvas.locator('.react-flow__node[data-id="condition"]');
  await cond.waitFor();
  await cond.click();
  await page.keyboard.press("Delete");
  await cond.waitFor({ state: "detached" });
  // The canvas followed the new node; show the whole journey again.
  await canvas.locator(".react-flow__controls-fitview").click();

  step = "preview";
  await page.getByLabel("Preview input").fill('{"email": "ada@example.com", "name": "Ada"}');
  await page.getByRole("button", { name: "Run preview" }).click();
  const preview = page.getByTestId("preview-result");
  await preview.waitFor();
  await preview.getByText("completed").first().waitFor();
  await preview.locator("summary").getByText("email.send from").waitFor();
  await preview.locator("summary").first().click();
  await preview.locator("pre").getByText("Welcome, Ada").waitFor();
  await canvas.locator('.react-flow__node[data-id="send"] .wf-node.visited').waitFor();
  await shot("03-builder-preview");

  step = "publish with a diff";
  await page.getByRole("button", { name: "Publish…" }).click();
  const dialog = page.getByRole("dialog", { name: "Publish" });
  await dialog.getByText("This is the first version").waitFor();
  await dialog.getByRole("button", { name: "Publish", exact: true }).click();
  await dialog.getByText("Published version 1").waitFor();
  await shot("04-publish");
  await dialog.getByRole("button", { name: "Close" }).click();
  // A second publish shows the change against version 1.
  await canvas.locator('.react-flow__node[data-id="delay"]').click();
  await page.locator("#root_duration").fill("2s");
  await page.getByRole("button", { name: "Publish…" }).click();
  await dialog.getByTestId("publish-diff").getByText('+     "duration": "2s"').waitFor();
  await dialog.getByRole("button", { name: "Publish", exact: true }).click();
  await dialog.getByText("Published version 2").waitFor();
  await dialog.getByRole("button", { name: "Close" }).click();
  await page.getByRole("region", { name: "Versions" }).getByText("v2").waitFor();

  step = "start an execution and follow it";
  await page.getByRole("button", { name: "Start…" }).click();
  await page.getByLabel("Execution input").fill('{"email": "grace@example.com", "name": "Grace"}');
  await page.getByLabel("Execution subject").fill("u-1");
  await page.getByRole("dialog", { name: "Start an execution" }).getByRole("button", { name: "Start", exact: true }).click();
  await page.waitForURL(/\/executions\/exe_/);
  const executionId = page.url().split("/").pop();
  const summary = page.getByTestId("execution-summary");
  await summary.getByText("completed").waitFor({ timeout: 30_000 });
  await summary.getByText("done", { exact: true }).waitFor();
  await page.getByLabel("Journal").getByText(/completed/).first().waitFor();
  await page.locator('.react-flow__node[data-id="send"] .wf-node.visited').waitFor();
  await page.getByRole("cell", { name: "email" }).first().waitFor();
  await shot("05-inspector");

  step = "the executions list";
  await page.getByRole("link", { name: "Executions" }).click();
  await page.getByLabel("Status").selectOption("completed");
  await page.getByRole("link", { name: executionId }).waitFor();
  await shot("06-executions");

  step = "analytics";
  await page.goto(`${node.url}/analytics/e2e-welcome`);
  const totals = page.getByLabel("Funnel totals");
  for (let i = 0; ; i++) {
    const entered = await totals.locator(".stat").first().locator(".n").innerText();
    if (entered === "1") break;
    check(i < 40, `the funnel did not count the execution (entered: ${entered})`);
    await page.waitForTimeout(500);
    if (i % 6 === 5) await page.reload();
  }
  await page.getByTestId("funnel-graph").getByText("1 entered").first().waitFor();
  await shot("07-analytics");

  step = "a trigger's lifecycle";
  await page.getByRole("link", { name: "Triggers" }).click();
  await page.getByText("No trigger yet").waitFor();
  await page.getByLabel("Trigger workflow").selectOption("e2e-welcome");
  await page.getByLabel("Trigger path").fill("e2e/welcome");
  await page.getByRole("button", { name: "Create trigger" }).click();
  const row = page.locator("tr[data-trigger]");
  await row.getByText("POST /trigger/e2e/welcome").waitFor();
  if (await row.getByRole("button", { name: "Activate" }).count()) await row.getByRole("button", { name: "Activate" }).click();
  await row.getByText("active").waitFor();
  await row.getByRole("button", { name: "Pause" }).click();
  await row.getByText("paused").waitFor();
  await shot("08-triggers-paused");
  await row.getByRole("button", { name: "Resume" }).click();
  await row.getByText("active").waitFor();

  step = "the other pages";
  await page.getByRole("link", { name: "Dashboard" }).click();
  await page.getByText("completed today").waitFor();
  await page.getByRole("link", { name: executionId }).waitFor();
  await shot("09-dashboard");
  await page.getByRole("link", { name: "Registry" }).click();
  await page.getByRole("button", { name: "email.send" }).click();
  await page.getByText("Inputs (JSON Schema)").waitFor();
  await shot("10-registry");
  await api(node.url, "POST", "/v1/profiles/u-1", { email: "ada@example.com", attributes: { plan: "pro" } });
  await page.getByRole("link", { name: "Audience" }).click();
  await page.getByLabel("Profile subject").fill("u-1");
  await page.getByRole("button", { name: "Find" }).click();
  await page.getByText('"plan": "pro"').waitFor();
  // The journey's email to u-1, among the subject's messages.
  await page.getByRole("table", { name: "Messages to this subject" }).getByText("send").waitFor();
  await shot("11-audience");
  await page.getByRole("link", { name: "Cluster" }).click();
  await page.getByText("taking work").waitFor();
  await shot("12-cluster");

  step = "sign in with a key";
  const key = await api(node.url, "POST", "/v1/keys", { scopes: ["admin"], name: "e2e" });
  expect401 = true;
  await page.evaluate(() => sessionStorage.setItem("sojourn.apiKey", "sk_not_a_real_key"));
  await page.reload();
  await page.getByRole("heading", { name: "Sign in to Sojourn" }).waitFor();
  await page.getByLabel("API key").fill("sk_still_wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").getByText("refused this key").waitFor();
  await shot("13-login-refused");
  await page.getByLabel("API key").fill(key.secret);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Cluster" }).waitFor();
  expect401 = false;
  check(
    (await page.evaluate(() => localStorage.length)) === 0,
    "the key must not be kept beyond the tab's session",
  );

  step = "200 nodes";
  await page.evaluate(() => sessionStorage.clear());
  // 201 nodes: a tree of 99 A/B splits whose 100 leaves wait a minute and
  // end at one exit.
  const big = { key: "e2e-big", nodes: [], edges: [] };
  const child = (j) => (j <= 99 ? `s${j}` : `d${j}`);
  big.nodes.push({ id: "start", type: "start", config: { triggers: [{ kind: "api" }] } });
  big.edges.push({ from: "start", to: "s1" });
  for (let i = 1; i <= 99; i++) {
    big.nodes.push({ id: `s${i}`, type: "split", config: { variants: [{ branch: "a", percent: 50 }, { branch: "b", percent: 50 }] } });
    big.edges.push({ from: `s${i}`, to: child(2 * i), branch: "a" }, { from: `s${i}`, to: child(2 * i + 1), branch: "b" });
  }
  for (let j = 100; j <= 199; j++) {
    big.nodes.push({ id: `d${j}`, type: "delay", config: { duration: "1m" } });
    big.edges.push({ from: `d${j}`, to: "end" });
  }
  big.nodes.push({ id: "end", type: "exit", config: { outcome: "done" } });
  // Placed as a tree, 240 px apart in a row, 120 between rows.
  const depth = (id) => (id === "start" ? 0 : id === "end" ? 9 : Math.floor(Math.log2(Number(id.slice(1)))) + 1);
  const rows = new Map();
  for (const n of big.nodes) {
    const d = depth(n.id);
    rows.set(d, (rows.get(d) ?? 0) + 1);
    n.position = { x: (rows.get(d) - 1) * 240, y: d * 120 };
  }
  await api(node.url, "POST", "/v1/workflows", { key: "e2e-big", definition: big });
  const t0 = Date.now();
  await page.goto(`${node.url}/workflows/e2e-big`);
  await page.getByTestId("validity").getByText("valid", { exact: true }).waitFor();
  await page.locator(".react-flow__node").first().waitFor();
  figures.time_to_interactive_ms = Date.now() - t0;
  figures.nodes_drawn = await page.locator(".react-flow__node").count();
  // A node well inside the canvas (the journey is wider than the screen).
  const area = await page.getByTestId("canvas").boundingBox();
  let target = null;
  let box = null;
  for (const n of await page.locator(".react-flow__node").all()) {
    const b = await n.boundingBox();
    const [x, y] = [b.x + b.width / 2, b.y + b.height / 2];
    if (x > area.x + 60 && x < area.x + area.width - 200 && y > area.y + 60 && y < area.y + area.height - 200) {
      [target, box] = [n, b];
      break;
    }
  }
  check(target, "no node of the 201 is inside the canvas");
  await page.evaluate(() => {
    window.__frames = [];
    let last = performance.now();
    const tick = (t) => {
      window.__frames.push(t - last);
      last = t;
      if (window.__frames.length < 2000) window.__raf = requestAnimationFrame(tick);
    };
    window.__raf = requestAnimationFrame(tick);
  });
  // At the zoom that fits 201 nodes a node is small: grab its middle.
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  await page.mouse.move(cx, cy);
  await page.mouse.down();
  for (let i = 0; i < 60; i++) {
    await page.mouse.move(cx + i * 4, cy + i * 2);
  }
  await page.mouse.up();
  const frames = await page.evaluate(() => {
    cancelAnimationFrame(window.__raf);
    return window.__frames.slice(2);
  });
  frames.sort((a, b) => a - b);
  figures.drag_frames = frames.length;
  figures.drag_frame_median_ms = Math.round(frames[Math.floor(frames.length / 2)] * 10) / 10;
  figures.drag_frame_p95_ms = Math.round(frames[Math.floor(frames.length * 0.95)] * 10) / 10;
  figures.drag_frame_max_ms = Math.round(frames[frames.length - 1] * 10) / 10;
  // The move is the draft's, on the server, once saved: that node moved
  // right and down, the others stayed.
  const moved = await target.getAttribute("data-id");
  const before = big.nodes.find((n) => n.id === moved).position;
  for (let i = 0; ; i++) {
    const draft = (await api(node.url, "GET", "/v1/workflows/e2e-big")).draft;
    const now = draft.nodes.find((n) => n.id === moved).position;
    if (now.x > before.x && now.y > before.y) {
      const others = draft.nodes.filter((n) => n.id !== moved);
      check(
        others.every((n) => JSON.stringify(n.position) === JSON.stringify(big.nodes.find((b) => b.id === n.id).position)),
        "a node that was not dragged moved",
      );
      break;
    }
    check(i < 50, `the drag of ${moved} was not saved (at ${JSON.stringify(now)}, was ${JSON.stringify(before)})`);
    await page.waitForTimeout(100);
  }
  await page.getByText("draft saved").waitFor();
  await shot("14-builder-200-nodes");

  check(pageErrors.length === 0, `the page reported errors:\n${pageErrors.join("\n")}`);
  console.log(`e2e: passed; screenshots in ${out}`);
  console.log(`e2e: 200-node workflow: ${JSON.stringify(figures)}`);
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(`e2e: failed at "${step}": ${e.message}`);
  if (pageErrors.length) console.error(`page errors:\n${pageErrors.join("\n")}`);
  console.error(`sojourn dev said:\n${node.log().slice(-4000)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  node.child.kill("SIGTERM");
  rmSync(node.data, { recursive: true, force: true });
}
