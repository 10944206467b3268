// Hostile review of issue 17 (tests/attack17.rs drives this): strings an
// operator or a lying upstream planted (account e-mail, plan, error
// messages, cooldown reasons, handle labels, quota window names) never run
// as script — on the overview after the page's script swapped its rows in,
// and on every credential page — and the Content-Security-Policy the
// browser enforces blocks script injected into a live console page.
// TW_EXPECT: {"part": "xss", "ids": [ID…], "tags": [TAG…]} or
//            {"part": "cookies"}
//
// Part "cookies": a page on another port of the same loopback address
// (cookies are not kept apart by port, and the two are the same site, so
// SameSite does not apply) plants `tw_session` and `tw_pre` cookies with a
// longer Path; the console reads the first cookie of a name, which the
// browser sends first — the planted one.
//
// Each payload calls twpwn(TAG) if parsed as markup; an init script (run
// by the driver, outside the page's CSP) defines twpwn to record the call,
// and records every securitypolicyviolation event.
import { createServer } from 'node:http';
import { env, check, newContext, run, settle, signIn, snapshot, until } from './lib.mjs';

const { ids } = env.expect;
let admin;
let page;

function watchdog() {
  window.__pwned = [];
  window.__csp = [];
  window.twpwn = (tag) => window.__pwned.push(String(tag));
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
}

async function seen(p) {
  return p.evaluate(() => ({ pwned: window.__pwned ?? null, csp: window.__csp ?? null }));
}

const xss = [
  [
    'signs_in',
    async (browser) => {
      admin = await newContext(browser, 'admin');
      await admin.addInitScript(watchdog);
      page = await signIn(admin, env.adminKey);
    },
    { gate: true },
  ],
  [
    'no_planted_string_runs_on_any_page',
    async () => {
      const report = {};
      // The overview, then its rows swapped in by app.js (innerHTML of a
      // template): the fragment's path to the DOM.
      await page.goto(env.url + '/ui');
      const first = await page.getAttribute('body', 'data-refreshed-at');
      await until(async () => {
        const now = await page.getAttribute('body', 'data-refreshed-at');
        return now && now !== first;
      }, 15000, 'the overview rows to be fetched and swapped in');
      const rows = await page.$$eval('#credential-rows tr.credential', (t) => t.map((r) => r.dataset.id));
      check(ids.every((id) => rows.includes(id)), `rows ${rows} lack some of ${ids}`);
      const text = await page.textContent('#credential-rows');
      check(text.includes("onerror=twpwn('email')"), 'the e-mail payload is not shown as text: the test proves less than it claims');
      report['/ui'] = await seen(page);
      await snapshot(page, 'admin');
      for (const id of ids) {
        await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(id)}`);
        await page.waitForTimeout(300);
        report[id] = await seen(page);
        await snapshot(page, 'admin');
      }
      for (const [where, r] of Object.entries(report)) {
        check(r.pwned !== null, `${where}: the watchdog did not run`);
        check(r.pwned.length === 0, `${where}: planted script ran: ${r.pwned}`);
        check(r.csp.length === 0, `${where}: the page tripped the CSP: ${r.csp}`);
      }
      return { report };
    },
  ],
  [
    'the_csp_blocks_injected_inline_script',
    async () => {
      await page.goto(env.url + '/ui');
      await page.evaluate(() => {
        const s = document.createElement('script');
        s.textContent = "twpwn('inline-script')";
        document.body.append(s);
        const d = document.createElement('div');
        d.innerHTML = `<img src="data:," onload="twpwn('inline-handler')"><img src="x:" onerror="twpwn('inline-onerror')">`;
        document.body.append(d);
        const a = document.createElement('a');
        a.id = 'tw-js-link';
        a.href = "javascript:twpwn('javascript-url')";
        a.textContent = 'x';
        document.body.append(a);
      });
      await page.click('#tw-js-link').catch(() => {});
      await page.waitForTimeout(500);
      const r = await seen(page);
      check(r.pwned.length === 0, `injected script ran: ${r.pwned}`);
      check(r.csp.some((v) => v.startsWith('script-src')), `no CSP violation was reported for the injected script: ${r.csp}`);
      await settle();
      return r;
    },
  ],
];

/** A loopback server on another port whose page sets `cookies` (name=value; path=…). */
async function plantingSite(cookies) {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><title>a local dev server</title><script>
${cookies.map((c) => `document.cookie = ${JSON.stringify(c)};`).join('\n')}
</script>`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

const cookies = [
  [
    'a_cookie_planted_from_another_port_does_not_sign_the_admin_out',
    async (browser) => {
      const ctx = await newContext(browser, 'victim');
      const p = await signIn(ctx, env.adminKey);
      const server = await plantingSite(['tw_session=planted-elsewhere; path=/ui', 'tw_pre=planted-elsewhere; path=/ui/login']);
      try {
        await p.goto(`http://127.0.0.1:${server.address().port}/`);
      } finally {
        server.close();
      }
      await p.goto(env.url + '/ui');
      const landed = new URL(p.url()).pathname;
      let again = null;
      if (landed !== '/ui') {
        // Signing in again does not help either when the form's cookie is planted too.
        await p.fill('#signin #key', env.adminKey);
        const [answer] = await Promise.all([p.waitForNavigation(), p.click('#signin-submit')]);
        again = { status: answer?.status() ?? null, path: new URL(p.url()).pathname };
      }
      await settle();
      await ctx.close();
      check(landed === '/ui', `after a page on another port planted cookies, the signed-in admin's /ui landed on ${landed}; signing in again: ${JSON.stringify(again)}`);
      return { landed, again };
    },
  ],
];

await run(env.expect.part === 'cookies' ? cookies : xss);
