// An admin at the console: a wrong key refused, signing in, the overview's
// badges, a rejected token shown live (no reload) and then valid again, a
// forced refresh cancelled and then confirmed, signing out.
// TW_EXPECT: {"live": ID, "states": {ID: STATE, …}}
import { env, ask, check, newContext, rows, run, sameDocument, settle, signIn, snapshot, until } from './lib.mjs';

const { live, states } = env.expect;
let admin;
let page;

const path = (p) => new URL(p.url()).pathname;
const rowSel = (id, state) => `#credential-rows tr.credential[data-id="${id}"][data-state="${state}"]`;

await run([
  [
    'a_wrong_key_is_refused',
    async (browser) => {
      admin = await newContext(browser, 'admin');
      const p = await admin.newPage();
      const first = await p.goto(env.url + '/');
      check(path(p) === '/ui/login', `GET / landed on ${p.url()}`);
      check(first.status() === 200, `the sign-in page answered ${first.status()}`);
      await p.fill('#key', 'wrong-key-00000000');
      const [answer] = await Promise.all([p.waitForNavigation(), p.click('#signin-submit')]);
      const said = await p.$eval('.error', (e) => e.textContent.trim()).catch(() => '');
      check(answer.status() === 401, `a wrong key answered ${answer.status()}: ${said}`);
      check(await p.isVisible('#signin-error'), 'no #signin-error after a wrong key');
      const cookies = (await admin.cookies()).map((c) => c.name);
      check(!cookies.includes('tw_session'), `a wrong key got a session cookie: ${cookies}`);
      const error = await p.textContent('#signin-error');
      await p.close();
      return { error };
    },
  ],
  [
    'signs_in_with_an_httponly_strict_session_cookie',
    async () => {
      page = await signIn(admin, env.adminKey);
      const session = (await admin.cookies()).find((c) => c.name === 'tw_session');
      check(session, 'no tw_session cookie after signing in');
      check(session.httpOnly, 'tw_session is not HttpOnly');
      check(session.sameSite === 'Strict', `tw_session is SameSite=${session.sameSite}`);
      check(session.path === '/', `tw_session has Path=${session.path}`);
      check(!session.value.includes(env.adminKey), 'the session cookie holds the API key');
      check(session.value.length >= 16, `a session id of ${session.value.length} characters`);
      const seen = await page.evaluate(() => document.cookie);
      check(!seen.includes('tw_session'), `the page's script can read the session: ${seen}`);
      return { cookieLength: session.value.length };
    },
    { gate: true },
  ],
  [
    'the_overview_shows_each_credential_with_its_badge',
    async () => {
      const got = await rows(page);
      for (const [id, state] of Object.entries(states)) {
        const row = got.find((r) => r.id === id);
        check(row, `no row for ${id}: ${JSON.stringify(got)}`);
        check(row.state === state, `${id} is data-state=${row.state}, expected ${state}`);
        check(row.badge === state, `${id}'s badge says ${row.badge}, expected ${state}`);
        check(row.badgeClass.split(/\s+/).includes(`state-${state}`), `${id}'s badge class is ${row.badgeClass}`);
      }
      check(got.length === Object.keys(states).length, `${got.length} rows: ${JSON.stringify(got)}`);
      // Dead ones first.
      const firstHealthy = got.findIndex((r) => r.state !== 'dead');
      check(got.slice(firstHealthy).every((r) => r.state !== 'dead'), `a dead row after a live one: ${got.map((r) => r.id)}`);
      for (const r of got.filter((r) => r.state === 'dead')) check(r.fix, `dead ${r.id} has no .fix`);
      await snapshot(page, 'admin');
      return { order: got.map((r) => `${r.id}:${r.state}`), fixes: got.filter((r) => r.fix).map((r) => r.fix) };
    },
  ],
  [
    'a_rejected_token_shows_without_a_reload_then_valid_again',
    async () => {
      await page.waitForSelector(rowSel(live, 'valid'));
      const fetched = [];
      const onRequest = (r) => {
        if (new URL(r.url()).pathname === '/ui/overview') fetched.push(r.resourceType());
      };
      page.on('request', onRequest);
      const same = await sameDocument(page);
      await ask('reject', { id: live });
      const t0 = Date.now();
      await page.waitForSelector(rowSel(live, 'rejected'), { timeout: 15000 });
      const rejectedAfter = Date.now() - t0;
      const badge = await page.textContent(`${rowSel(live, 'rejected')} td.state .badge`);
      check(badge.trim() === 'rejected', `the badge says ${badge}`);
      await snapshot(page, 'admin');
      await ask('refresh', { id: live });
      await page.waitForSelector(rowSel(live, 'valid'), { timeout: 15000 });
      page.off('request', onRequest);
      check(await same(), 'the page was loaded again');
      check(path(page) === '/ui', `the page moved to ${page.url()}`);
      check(fetched.length >= 2, `the fragment was fetched ${fetched.length} times`);
      check(fetched.every((t) => t === 'fetch' || t === 'xhr'), `the fragment loaded as ${fetched}`);
      return { rejectedAfterMs: rejectedAfter, fragmentFetches: fetched.length };
    },
  ],
  [
    'a_forced_refresh_cancelled_at_the_confirmation_does_nothing',
    async () => {
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(live)}`);
      check((await page.textContent('#credential-id')).trim() === live, 'wrong #credential-id');
      const same = await sameDocument(page);
      const dialogs = admin.dialogsSeen.length;
      await ask('mark', { name: 'cancel_before' });
      admin.dialogAnswer = false;
      try {
        await page.click('form.action[data-action="refresh"] button[type="submit"]');
        await until(async () => admin.dialogsSeen.length > dialogs, 5000, 'the confirmation');
        await page.waitForTimeout(1000);
      } finally {
        admin.dialogAnswer = true;
      }
      check(admin.dialogsSeen.at(-1).type === 'confirm', `a ${admin.dialogsSeen.at(-1).type} dialog`);
      check(await same(), 'the form was sent although the confirmation was cancelled');
      await ask('mark', { name: 'cancel_after' });
      return { confirm: admin.dialogsSeen.at(-1).message };
    },
  ],
  [
    'a_forced_refresh_from_the_credential_page',
    async () => {
      const events = () =>
        page.$$eval('#events li.event', (l) => l.map((e) => ({ seq: e.dataset.seq, text: e.textContent.replace(/\s+/g, ' ').trim() })));
      const before = await events();
      const dialogs = admin.dialogsSeen.length;
      await ask('mark', { name: 'force_before' });
      await Promise.all([
        page.waitForNavigation(),
        page.click('form.action[data-action="refresh"] button[type="submit"]'),
      ]);
      await ask('mark', { name: 'force_after' });
      check(admin.dialogsSeen.length === dialogs + 1, 'no confirmation asked');
      check(path(page) === `/ui/credentials/${live}`, `the action landed on ${page.url()}`);
      const flash = await page.$eval('#flash', (f) => ({ text: f.textContent.trim(), cls: f.className }));
      check(!flash.cls.split(/\s+/).includes('error'), `an error flash: ${flash.text}`);
      const after = await events();
      const old = new Set(before.map((e) => e.seq));
      const added = after.filter((e) => !old.has(e.seq)).map((e) => e.text);
      check(after.length > before.length && added.length === after.length - before.length, `${before.length} events before, ${after.length} after`);
      check(added.some((e) => /forced refresh/i.test(e)), `no forced refresh among the new events: ${JSON.stringify(added)}`);
      const state = await page.$eval('#credential-state', (s) => s.textContent.trim());
      check(state === 'valid', `the credential is ${state} after the refresh`);
      await snapshot(page, 'admin');
      return { flash: flash.text, added };
    },
  ],
  [
    'signing_out_ends_the_session',
    async (browser) => {
      const session = (await admin.cookies()).find((c) => c.name === 'tw_session');
      // A second tab on the overview, left open.
      const other = await admin.newPage();
      await other.goto(env.url + '/ui');
      check(path(other) === '/ui', `the second tab opened ${other.url()}`);
      await page.goto(env.url + '/ui');
      await Promise.all([page.waitForNavigation(), page.click('#signout [type="submit"]')]);
      check(path(page) === '/ui/login', `signing out landed on ${page.url()}`);
      // Its next poll finds the session gone and goes to the sign-in page.
      await other.waitForURL((u) => u.pathname === '/ui/login', { timeout: 10000 });
      await other.close();
      await page.goto(env.url + '/ui');
      check(path(page) === '/ui/login', `/ui after signing out is ${page.url()}`);
      // The old cookie, replayed in a fresh browser, is no session either.
      const replay = await newContext(browser, 'replay');
      await replay.addCookies([session]);
      const p = await replay.newPage();
      await p.goto(env.url + '/ui');
      check(path(p) === '/ui/login', `the old session cookie still opens ${p.url()}`);
      const fragment = await p.evaluate(async () => {
        const r = await fetch('/ui/overview', { redirect: 'manual' });
        return { status: r.status, type: r.type, rows: r.type === 'basic' ? (await r.text()).includes('credential-link') : false };
      });
      check(!fragment.rows && fragment.status !== 200, `the old cookie still reads the overview: ${JSON.stringify(fragment)}`);
      await settle();
      await replay.close();
      return { fragment };
    },
  ],
]);
