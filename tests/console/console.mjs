// Drives Debian's headless chromium through the Gatehouse console; started by
// tests/console.rs, which owns the gateway, PostgreSQL and psql. Talks to it on stdout:
//   READY           the DBA lead watches an empty approvals page: start the psql now
//   APPROVED <id>   the lead approved: psql should finish
//   SCREENSHOT <p>  a screenshot was saved
//   OK              every check passed (exit status 0)
// Any failed check throws: the message goes to stderr and the exit status is 1.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";

const base = need("BASE_URL");
const shots = need("SHOTS_DIR");
const statement = need("STATEMENT");
const sshSession = need("SSH_SESSION");
const sshMarker = need("SSH_MARKER");
const timeout = 20_000;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

const say = (line) => process.stdout.write(line + "\n");

// Lines from the Rust test (it answers READY with STARTED once psql runs).
const input = readline.createInterface({ input: process.stdin });
const lines = [];
let wake = null;
input.on("line", (l) => { lines.push(l); if (wake) wake(); });
async function expectLine(want) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const i = lines.indexOf(want);
    if (i >= 0) { lines.splice(i, 1); return; }
    await new Promise((r) => { wake = r; setTimeout(r, 200); });
  }
  throw new Error(`the test never sent ${want}`);
}

// A fresh profile directory per run; playwright's own launch() would make one too, but the
// brief for this suite wants it explicit and the path printed on failure.
const profile = mkdtempSync(path.join(tmpdir(), "gatehouse-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 420, height: 900 }, // a narrow screen: the console must work on it
});
// The persistent context is the lead's; the owner gets a separate browser profile so the
// two sessions never share cookies.
const ownerProfile = mkdtempSync(path.join(tmpdir(), "gatehouse-chromium-owner-"));
const ownerBrowser = await chromium.launchPersistentContext(ownerProfile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1200, height: 900 },
});

function cleanUp() {
  for (const dir of [profile, ownerProfile]) rmSync(dir, { recursive: true, force: true });
}

const errors = [];
function watch(page, who) {
  page.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  // Script errors and CSP violations count; refused requests (the forged POSTs, 401 after
  // sign-out, no favicon) are expected and checked on their own.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(`${who} console: ${m.text()}`);
  });
}

async function signIn(context, subject, groups) {
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(timeout);
  watch(page, subject);
  await page.goto(base + "/");
  await page.click("#signin");
  // The development issuer's authorization endpoint: clearly labelled, then a form.
  await page.waitForSelector("#subject");
  check((await page.textContent("body")).includes("not for production"), "the dev sign-in page is not labelled");
  await page.fill("#subject", subject);
  await page.fill("#groups", groups);
  await page.click("#dev-signin");
  await page.waitForURL(base + "/approvals");
  check((await page.textContent("#who")).trim() === subject, `signed in as ${subject}`);
  return page;
}

try {
  // The DBA lead watches the (empty) approvals page.
  const lead = await signIn(browser, "dora", "dba-leads auditors");
  await lead.waitForSelector("#none-pending");
  const cookies = await browser.cookies(base);
  const session = cookies.find((c) => c.name === "gh_session");
  check(session && session.httpOnly && session.sameSite === "Strict", `session cookie flags: ${JSON.stringify(session)}`);
  say("READY");
  await expectLine("STARTED");

  // The agent's statement appears without a reload.
  const card = lead.locator("article.approval", { hasText: statement });
  await card.waitFor();
  const id = await card.getAttribute("data-id");
  const cardText = await card.textContent();
  for (const want of ["ci-bot", "agent", "owned by carol", "orders", "Postgres::write", "dba-leads"]) {
    check(cardText.includes(want), `the pending card shows ${want}: ${cardText}`);
  }
  check(/\d+m \d\ds/.test(await card.locator("time.countdown").textContent()), "time left is shown");
  const sessionId = (await card.locator("a[href^='/sessions/']").textContent()).trim();

  // The agent's owner sees the request, but no approve button, and a forged POST with
  // their own valid CSRF token is refused by the broker.
  const owner = await signIn(ownerBrowser, "carol", "dba-leads");
  await owner.goto(`${base}/approvals/${id}`);
  const ownerCard = owner.locator(`#approval-${id}`);
  await ownerCard.waitFor();
  check(await owner.locator("button.approve").count() === 0, "the owner is offered an approve button");
  check(await owner.locator("button.deny").count() === 0, "the owner is offered a deny button");
  check((await ownerCard.textContent()).includes("You own the agent"), "the owner is told why");
  const forged = await owner.evaluate(async (id) => {
    const csrf = document.querySelector("form[action='/auth/logout'] input[name=csrf]").value;
    const r = await fetch(`/approvals/${id}/approve`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ csrf, reason: "forged" }).toString(),
    });
    return { status: r.status, text: await r.text() };
  }, id);
  check(forged.status === 403 && forged.text.includes("you own the agent"), `forged approve: ${forged.status} ${forged.text.slice(0, 300)}`);
  const noCsrf = await owner.evaluate(async (id) => {
    const r = await fetch(`/approvals/${id}/approve`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "reason=no-token",
    });
    return { status: r.status, text: await r.text() };
  }, id);
  check(noCsrf.status === 403 && noCsrf.text.includes("CSRF"), `approve without CSRF token: ${noCsrf.status}`);

  // Screenshot of the pending approvals page, then the lead approves with a reason.
  const approvalsShot = path.join(shots, "approvals.png");
  await lead.screenshot({ path: approvalsShot, fullPage: true });
  say(`SCREENSHOT ${approvalsShot}`);
  await card.locator("form[action$='/approve'] input[name=reason]").fill("ticket OPS-7, checked the row");
  await card.locator("button.approve").click();
  await lead.waitForSelector("#notice");
  check((await lead.textContent("#notice")).includes("approval is recorded"), "the approval is confirmed");
  say(`APPROVED ${id}`);
  await expectLine("PSQL-DONE");

  // The session page: the statement with its decision, deciding policy and the approval.
  await lead.goto(`${base}/sessions/${sessionId}`);
  const row = lead.locator("table.requests tr", { hasText: statement });
  await row.waitFor();
  const rowText = await row.textContent();
  check(rowText.includes("needs_approval"), `the decision is shown: ${rowText}`);
  check(rowText.includes("agent-prod-write-needs-approval"), `the deciding policy is shown: ${rowText}`);
  check(rowText.includes("approved by dora") && rowText.includes("ticket OPS-7"), `the approval is shown: ${rowText}`);
  check(rowText.includes("executed"), `the execution is shown: ${rowText}`);
  const sessionShot = path.join(shots, "session.png");
  await lead.screenshot({ path: sessionShot, fullPage: true });
  say(`SCREENSHOT ${sessionShot}`);

  // The sessions list filters by protocol and identity.
  await lead.goto(`${base}/sessions?protocol=ssh`);
  const list = await lead.textContent("table.sessions");
  check(list.includes(sshSession) && !list.includes(sessionId), "the protocol filter keeps only ssh sessions");
  await lead.goto(`${base}/sessions?identity=ci-bot&protocol=postgres`);
  check((await lead.textContent("table.sessions")).includes(sessionId), "the identity filter finds the agent's session");

  // The SSH recording plays in the page.
  await lead.goto(`${base}/sessions?protocol=ssh`);
  await lead.click(`a[href='/sessions/${sshSession}']`);
  const player = lead.locator("figure.player");
  await player.waitFor();
  await player.locator("select.speed").selectOption("8");
  await player.locator("button.play").click();
  await lead.waitForFunction(
    (marker) => document.querySelector("figure.player .screen").textContent.includes(marker),
    sshMarker,
  );
  await lead.waitForFunction(() => document.querySelector("figure.player").dataset.state === "done");
  const replayShot = path.join(shots, "replay.png");
  await lead.screenshot({ path: replayShot, fullPage: true });
  say(`SCREENSHOT ${replayShot}`);

  // The owner may not browse sessions; signing out ends the lead's session on the server.
  await owner.goto(`${base}/sessions`);
  check((await owner.textContent("main")).includes("for members of auditors"), "non-auditors get no session list");
  await lead.goto(`${base}/approvals`);
  await lead.click("#signout");
  await lead.waitForSelector("#signin");
  const after = await lead.evaluate(async () => (await fetch("/approvals/pending")).status);
  check(after === 401, `after sign-out the session is gone (${after})`);

  check(errors.length === 0, `page errors: ${errors.join("; ")}`);
  say("OK");
  await browser.close();
  await ownerBrowser.close();
  cleanUp();
  process.exit(0);
} catch (e) {
  process.stderr.write(`console test failed: ${e.stack || e}\n`);
  for (const page of browser.pages()) {
    try { process.stderr.write(`--- ${page.url()}\n${(await page.textContent("body")).slice(0, 2000)}\n`); } catch (_) { /* closed */ }
  }
  await browser.close().catch(() => {});
  await ownerBrowser.close().catch(() => {});
  cleanUp();
  process.exit(1);
}
