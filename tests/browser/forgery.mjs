// Forged POSTs against an admin's session: without a CSRF token, with a
// wrong one, with another session's, from a page of another origin (a
// second loopback server, same site: the session cookie IS sent, so only
// the Origin check stands), a foreign page framing the console, and a
// form posted without a session.
// TW_EXPECT: {"target": ID}
import { createServer } from 'node:http';
import { env, ask, check, csrfOf, newContext, postFrom, run, settle, signIn } from './lib.mjs';

const { target } = env.expect;
const action = (name) => `/ui/credentials/${encodeURIComponent(target)}/${name}`;
let admin;
let page;
let csrf;

/**
 * A loopback server serving, at /?to=PATH&csrf=T, a form that posts itself
 * to the console's PATH (and a blank page at /).
 */
async function foreignSite() {
  const server = createServer((req, res) => {
    const q = new URL(req.url, 'http://x').searchParams;
    if (q.get('frame')) {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(`<!doctype html><title>framed</title><iframe id="f" src="${env.url}/ui" width="800" height="600"></iframe>`);
      return;
    }
    if (!q.get('to')) {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<!doctype html><title>a blank page</title>');
      return;
    }
    const to = env.url + q.get('to');
    const esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><title>win a prize</title>
<form id="f" method="post" action="${esc(to)}">
<input name="csrf" value="${esc(q.get('csrf') ?? '')}">${q.get('seconds') ? `<input name="seconds" value="${esc(q.get('seconds'))}">` : ''}
</form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

await run([
  [
    'signs_in',
    async (browser) => {
      admin = await newContext(browser, 'admin');
      page = await signIn(admin, env.adminKey);
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(target)}`);
      csrf = await csrfOf(page);
      check(csrf && csrf.length >= 16, `no CSRF token on the page: ${csrf}`);
      await ask('mark', { name: 'forgery_before' });
    },
    { gate: true },
  ],
  [
    'a_post_without_a_csrf_token_is_refused_403',
    async () => {
      const answers = {};
      for (const [name, fields] of [['refresh', {}], ['delete', {}], ['cooldown', { seconds: '60' }]]) {
        answers[name] = (await postFrom(page, action(name), fields)).status;
      }
      check(Object.values(answers).every((s) => s === 403), JSON.stringify(answers));
      return { answers };
    },
  ],
  [
    'a_post_with_a_wrong_csrf_token_is_refused_403',
    async () => {
      const flipped = csrf.slice(0, -1) + (csrf.endsWith('A') ? 'B' : 'A');
      const answers = {};
      for (const [label, token] of [
        ['flipped', flipped],
        ['empty', ''],
        ['garbage', 'x'.repeat(csrf.length)],
        ['doubled', csrf + csrf],
      ]) {
        answers[label] = (await postFrom(page, action('refresh'), { csrf: token })).status;
      }
      check(Object.values(answers).every((s) => s === 403), JSON.stringify(answers));
      return { answers };
    },
  ],
  [
    'another_sessions_csrf_token_is_refused_403',
    async (browser) => {
      const other = await newContext(browser, 'admin2');
      const p = await signIn(other, env.adminKey);
      const theirs = await csrfOf(p);
      check(theirs !== csrf, 'two sessions got the same CSRF token');
      const status = (await postFrom(page, action('refresh'), { csrf: theirs })).status;
      check(status === 403, `another session's token answered ${status}`);
      await settle();
      await other.close();
      return { status };
    },
  ],
  [
    'a_post_from_a_foreign_origin_is_refused',
    async () => {
      const server = await foreignSite();
      const foreign = `http://127.0.0.1:${server.address().port}`;
      const answers = {};
      try {
        for (const name of ['delete', 'refresh', 'cooldown']) {
          const landed = page.waitForResponse((r) => r.url() === env.url + action(name), { timeout: 10000 });
          const seconds = name === 'cooldown' ? '&seconds=60' : '';
          await page.goto(`${foreign}/?to=${encodeURIComponent(action(name))}&csrf=${encodeURIComponent(csrf)}${seconds}`);
          const r = await landed;
          const sent = await r.request().allHeaders();
          answers[name] = { status: r.status(), origin: sent.origin ?? null, cookie: /tw_session=/.test(sent.cookie ?? '') };
        }
        // A script of the foreign page, fetching with the cookie (no-cors).
        const landed = page.waitForResponse((r) => r.url() === env.url + action('refresh'), { timeout: 10000 });
        await page.goto(`${foreign}/`);
        await page.evaluate(
          ({ url, csrf }) =>
            fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include', body: new URLSearchParams({ csrf }) }).catch(() => null),
          { url: env.url + action('refresh'), csrf },
        );
        const r = await landed;
        answers.fetch = { status: r.status(), origin: (await r.request().allHeaders()).origin ?? null };
      } finally {
        server.close();
      }
      for (const [name, a] of Object.entries(answers)) {
        // (The no-cors fetch's Origin is added below what the driver sees.)
        check(a.origin === foreign || name === 'fetch', `${name}: the browser sent Origin ${a.origin}: ${JSON.stringify(answers)}`);
        check(a.status === 403, `${name} from ${foreign} answered ${a.status}`);
      }
      // The cookie went along (same site: only the Origin check refused it).
      check(answers.delete.cookie, 'the session cookie was not sent: the test proves less than it claims');
      return { answers };
    },
  ],
  [
    'the_console_cannot_be_framed_by_another_origin',
    async () => {
      const server = await foreignSite();
      try {
        const framed = page.waitForResponse((r) => r.url() === env.url + '/ui', { timeout: 10000 });
        await page.goto(`http://127.0.0.1:${server.address().port}/?frame=1`);
        const answer = await framed;
        await page.waitForTimeout(500);
        const frame = page.frames().find((f) => f !== page.mainFrame());
        const rows = frame ? await frame.$$('#credential-rows').then((r) => r.length).catch(() => 0) : 0;
        check(answer.status() === 200, `the framed /ui answered ${answer.status()}`);
        check(rows === 0, `the console rendered inside a foreign page's frame (${frame?.url()})`);
        // Blocked: the frame holds the browser's error page, not the console.
        check(frame && !frame.url().startsWith(env.url), `the frame shows ${frame?.url()}`);
        return { frameUrl: frame?.url() ?? null };
      } finally {
        server.close();
      }
    },
  ],
  [
    'a_form_post_without_a_session_goes_to_sign_in',
    async (browser) => {
      const stranger = await newContext(browser, 'stranger');
      const p = await stranger.newPage();
      await p.goto(env.url + '/ui/login');
      const [answer] = await Promise.all([
        p.waitForNavigation(),
        p.evaluate(
          ({ to, csrf }) => {
            const f = document.createElement('form');
            f.method = 'post';
            f.action = to;
            const i = document.createElement('input');
            i.name = 'csrf';
            i.value = csrf;
            f.append(i);
            document.body.append(f);
            f.submit();
          },
          { to: action('delete'), csrf },
        ),
      ]);
      const posted = answer.request().redirectedFrom();
      check(posted && posted.method() === 'POST' && posted.url() === env.url + action('delete'), 'the form was not answered with a redirect');
      const landed = new URL(p.url()).pathname;
      check(landed === '/ui/login', `a form without a session landed on ${p.url()}`);
      await settle();
      await stranger.close();
      return { landed };
    },
  ],
  [
    'nothing_was_changed',
    async () => {
      await ask('mark', { name: 'forgery_after' });
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(target)}`);
      check((await page.textContent('#credential-id')).trim() === target, `${target} is gone`);
    },
  ],
]);
