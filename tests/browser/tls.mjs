// The console over HTTPS: the session cookie is Secure and works, the
// page's https:// origin passes the Origin check, the rows refresh, a
// forced refresh goes through, signing out ends the session.
// TW_EXPECT: {"target": ID, "rows": N}
import { env, ask, check, newContext, run, sameDocument, signIn } from './lib.mjs';

const { target, rows } = env.expect;
let admin;
let page;

await run([
  [
    'signs_in_with_a_secure_session_cookie',
    async (browser) => {
      check(env.url.startsWith('https://'), `the console is at ${env.url}`);
      admin = await newContext(browser, 'admin');
      page = await signIn(admin, env.adminKey);
      const session = (await admin.cookies()).find((c) => c.name === 'tw_session');
      check(session && session.secure && session.httpOnly && session.sameSite === 'Strict', `the session cookie: ${JSON.stringify({ ...session, value: undefined })}`);
      const n = await page.$$eval('#credential-rows tr.credential', (t) => t.length);
      check(n === rows, `${n} rows`);
    },
    { gate: true },
  ],
  [
    'the_rows_refresh_themselves',
    async () => {
      const still = await sameDocument(page);
      const fetched = page.waitForResponse((r) => new URL(r.url()).pathname === '/ui/overview', { timeout: 10000 });
      const answer = await fetched;
      check(answer.status() === 200, `the rows answered ${answer.status()} over https`);
      check(await still(), 'the page was loaded again');
    },
  ],
  [
    'a_forced_refresh_over_https',
    async () => {
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(target)}`);
      await ask('mark', { name: 'force_before' });
      const [answer] = await Promise.all([
        page.waitForNavigation(),
        page.click('form.action[data-action="refresh"] button[type="submit"]'),
      ]);
      await ask('mark', { name: 'force_after' });
      const posted = answer.request().redirectedFrom();
      const origin = posted ? (await posted.allHeaders()).origin : null;
      check(origin === env.url, `the form was sent with Origin ${origin}`);
      const flash = await page.$eval('#flash', (f) => ({ text: f.textContent.trim(), error: f.classList.contains('error') }));
      check(!flash.error, `the refresh: ${flash.text}`);
      return { flash: flash.text };
    },
  ],
  [
    'signs_out',
    async () => {
      await Promise.all([page.waitForNavigation(), page.click('#signout [type="submit"]')]);
      await page.goto(env.url + '/ui');
      check(new URL(page.url()).pathname === '/ui/login', `after signing out /ui is ${page.url()}`);
    },
  ],
]);
