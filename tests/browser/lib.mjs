// The harness shared by the console's browser scripts (tests/browser.rs
// runs them): one headless Chromium per script, the line protocol with the
// Rust test, the traffic recorder, and the scenario runner.
//
// Inputs (environment, set by tests/browser.rs):
//   TW_URL            the console's origin, e.g. http://127.0.0.1:41234
//   TW_ADMIN_KEY      an admin API key      TW_READ_KEY   a read-only key
//   TW_EXPECT         JSON: what the Rust side set up (ids, states, …)
//   TW_TRAFFIC        a file: every request and response is appended (JSONL)
//   TW_SHOTS          a directory: screenshots are saved there when set
//   TOKENWARDEN_CHROMIUM  the browser (default /usr/bin/chromium)
//
// Protocol on stdout (one JSON object a line, nothing else is printed):
//   {"ask":"NAME",…}        the Rust side does NAME (reject a token, count
//                           the fake's requests, …) and answers one JSON
//                           line on stdin: {"ok":true,…} or {"ok":false,"error"}
//   {"scenario":"NAME","ok":true,"ms":N,"facts":{…}}   one per scenario
//   {"scenario":"NAME","ok":false,"ms":N,"error":"…"}
//   {"done":true}           after the browser closed and the traffic is written
// Diagnostics go to stderr.

import { appendFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

/** What the Rust side passed. */
export const env = {
  url: need('TW_URL').replace(/\/$/, ''),
  adminKey: process.env.TW_ADMIN_KEY || '',
  readKey: process.env.TW_READ_KEY || '',
  expect: JSON.parse(process.env.TW_EXPECT || '{}'),
  traffic: process.env.TW_TRAFFIC || '',
  shots: process.env.TW_SHOTS || '',
};

function need(name) {
  const v = process.env[name];
  if (!v) {
    process.stderr.write(`${name} is not set\n`);
    process.exit(2);
  }
  return v;
}

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Answers from the Rust side, in order: one per ask.
const waiting = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  const resolve = waiting.shift();
  if (resolve) resolve(JSON.parse(line));
});

/** Asks the Rust side to do `what` (with `args`); its answer, or a throw. */
export async function ask(what, args = {}) {
  const answer = await new Promise((resolve) => {
    waiting.push(resolve);
    send({ ask: what, ...args });
  });
  if (!answer.ok) throw new Error(`the test side could not ${what}: ${answer.error}`);
  return answer;
}

/** A failed expectation, with what was seen. */
export function check(cond, message) {
  if (!cond) throw new Error(message);
}

// Response bodies are read asynchronously; all are awaited before `done`.
const recording = new Set();

/**
 * A fresh browser context (its own cookie jar) whose every request and
 * response is appended to TW_TRAFFIC, labelled `label`; confirm dialogs are
 * answered by `context.dialogs` (accept by default) and recorded.
 */
export async function newContext(browser, label) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    // An https console has a certificate of the tests' own CA.
    ignoreHTTPSErrors: env.url.startsWith('https:'),
  });
  context.dialogAnswer = true;
  context.dialogsSeen = [];
  context.on('page', (page) => watch(context, page));
  context.on('response', (response) => {
    const p = record(label, response).finally(() => recording.delete(p));
    recording.add(p);
  });
  context.on('requestfailed', (request) => {
    write({
      label,
      url: request.url(),
      method: request.method(),
      postData: request.postData(),
      failed: request.failure()?.errorText ?? 'failed',
    });
  });
  return context;
}

function watch(context, page) {
  page.on('dialog', async (dialog) => {
    context.dialogsSeen.push({ type: dialog.type(), message: dialog.message() });
    if (context.dialogAnswer) await dialog.accept();
    else await dialog.dismiss();
  });
  page.on('pageerror', (e) => process.stderr.write(`page error: ${e}\n`));
}

/**
 * Marks the document now in `page`; the returned function tells whether
 * the same document is still there (no load, no reload: a history
 * change by the page's script is not one).
 */
export async function sameDocument(page) {
  const mark = `m${Math.random()}`;
  await page.evaluate((m) => {
    window.twMarker = m;
  }, mark);
  return async () => (await page.evaluate(() => window.twMarker).catch(() => null)) === mark;
}

async function record(label, response) {
  const request = response.request();
  // Read at once: a context closed meanwhile could no longer answer. What
  // cannot be read (a redirect's body) is recorded as null.
  const [body, requestHeaders, responseHeaders] = (
    await Promise.allSettled([response.body(), request.allHeaders(), response.allHeaders()])
  ).map((r) => (r.status === 'fulfilled' ? r.value : null));
  write({
    label,
    url: response.url(),
    method: request.method(),
    resourceType: request.resourceType(),
    requestHeaders,
    postData: request.postData(),
    status: response.status(),
    responseHeaders,
    body: body === null ? null : body.toString('utf8'),
  });
}

/** Waits until every response seen so far is recorded (before a context closes). */
export async function settle() {
  await Promise.allSettled([...recording]);
}

function write(entry) {
  if (env.traffic) appendFileSync(env.traffic, JSON.stringify(entry) + '\n');
}

/** Appends the page's current DOM (after its scripts ran) to the traffic. */
export async function snapshot(page, label) {
  write({ label, url: page.url(), dom: await page.content() });
}

/** Signs in on a fresh page of `context` with `key`; the page, at /ui. */
export async function signIn(context, key) {
  const page = await context.newPage();
  await page.goto(env.url + '/ui');
  check(new URL(page.url()).pathname === '/ui/login', `GET /ui without a session landed on ${page.url()}`);
  await page.fill('#signin #key', key);
  const [answer] = await Promise.all([page.waitForNavigation(), page.click('#signin-submit')]);
  if (new URL(page.url()).pathname !== '/ui') {
    const said = await page.$eval('.error', (e) => e.textContent.trim()).catch(() => '');
    throw new Error(`signing in landed on ${page.url()} (${answer?.status()}): ${said}`);
  }
  return page;
}

/** The overview's rows as {id, state, badge, fix} in page order. */
export async function rows(page) {
  return page.$$eval('#credential-rows tr.credential', (trs) =>
    trs.map((tr) => ({
      id: tr.dataset.id,
      state: tr.dataset.state,
      badge: tr.querySelector('td.state .badge')?.textContent.trim() ?? null,
      badgeClass: tr.querySelector('td.state .badge')?.className ?? null,
      fix: tr.querySelector('.fix')?.textContent.replace(/\s+/g, ' ').trim() ?? null,
    })),
  );
}

/**
 * The page's CSRF token (the hidden `csrf` input of any form on it), for
 * requests a script forges from the page.
 */
export async function csrfOf(page) {
  return page.$eval('input[name="csrf"]', (i) => i.value);
}

/**
 * POSTs `form` (an object) to `path` with fetch from inside `page` (same
 * origin, the session's cookie), not following redirects: {status, location}.
 */
export async function postFrom(page, path, form) {
  return page.evaluate(
    async ({ path, form }) => {
      const r = await fetch(path, {
        method: 'POST',
        body: new URLSearchParams(form),
        redirect: 'manual',
        credentials: 'same-origin',
      });
      // An opaque redirect (status 0) is a 303 the page may not read.
      return { status: r.status, type: r.type, text: r.type === 'opaqueredirect' ? '' : await r.text() };
    },
    { path, form },
  );
}

/** Polls `fn` (async) until it returns a truthy value or `ms` pass. */
export async function until(fn, ms, what) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Runs `scenarios` ([name, async (browser) => facts, {gate}]) in order in
 * one headless Chromium, reporting each; a failed one does not stop the
 * next, except a failed gate (signing in): the rest are reported not run.
 */
export async function run(scenarios) {
  const browser = await chromium.launch({
    executablePath: process.env.TOKENWARDEN_CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    let blocked = null;
    for (const [name, fn, { gate = false } = {}] of scenarios) {
      if (blocked) {
        send({ scenario: name, ok: false, ms: 0, error: `not run: ${blocked} failed` });
        continue;
      }
      const t0 = Date.now();
      try {
        const facts = (await fn(browser)) ?? {};
        send({ scenario: name, ok: true, ms: Date.now() - t0, facts });
      } catch (e) {
        send({ scenario: name, ok: false, ms: Date.now() - t0, error: String(e?.stack ?? e) });
        if (gate) blocked = name;
      }
    }
  } finally {
    await Promise.allSettled([...recording]);
    await browser.close();
  }
  await Promise.allSettled([...recording]);
  send({ done: true });
  process.exit(0);
}
