// A dead oauth2 credential signed in again from the console, all in the
// browser: its row's "sign in again" button, the link to the provider
// (a real OpenID provider, oidc-provider's development login and consent
// pages), the way back to serve's /oauth/callback, and the overview showing
// it valid again without a reload.
// TW_EXPECT: {"dead": ID, "issuer": URL}
import { env, check, newContext, run, sameDocument, signIn, snapshot } from './lib.mjs';

const { dead, issuer } = env.expect;
const row = (state) => `#credential-rows tr.credential[data-id="${dead}"][data-state="${state}"]`;
let admin;
let page;
let overview;

await run([
  [
    'signs_in',
    async (browser) => {
      admin = await newContext(browser, 'admin');
      overview = await signIn(admin, env.adminKey);
    },
    { gate: true },
  ],
  [
    'the_dead_row_offers_to_sign_in_again',
    async () => {
      await overview.waitForSelector(row('dead'));
      const button = `${row('dead')} .fix form[data-action="relogin"] [type="submit"]`;
      check((await overview.$$(button)).length === 1, 'no sign-in-again button in the dead row');
      // In a second tab, so the overview stays open to be watched.
      page = await admin.newPage();
      await page.goto(env.url + '/ui');
      await Promise.all([page.waitForNavigation(), page.click(button)]);
      check(await page.isVisible('#relogin-link'), `no #relogin-link on ${page.url()}`);
      const href = await page.getAttribute('#relogin-link', 'href');
      check(href.startsWith(issuer + '/'), `the link goes to ${href}, not ${issuer}`);
      await snapshot(page, 'admin');
      return { confirmations: admin.dialogsSeen.length };
    },
  ],
  [
    'signs_in_at_the_provider_and_comes_back',
    async () => {
      const still = await sameDocument(overview);
      await Promise.all([page.waitForNavigation(), page.click('#relogin-link')]);
      // The provider's own pages: a login form, then a consent form.
      const steps = [];
      for (let i = 0; i < 6 && page.url().startsWith(issuer); i++) {
        steps.push(new URL(page.url()).pathname);
        if (await page.$('input[name="login"]')) {
          await page.fill('input[name="login"]', 'gwen');
          await page.fill('input[name="password"]', 'any');
        }
        await Promise.all([page.waitForNavigation(), page.click('[type="submit"]')]);
      }
      const back = new URL(page.url());
      check(page.url().startsWith(env.url + '/oauth/callback'), `ended on ${page.url()} after ${steps}`);
      const said = await page.textContent('body');
      await snapshot(page, 'admin');
      // The overview, left open, turns valid by itself.
      await overview.waitForSelector(row('valid'), { timeout: 15000 });
      check(await still(), 'the overview was loaded again');
      return { steps, back: back.pathname, said: said.replace(/\s+/g, ' ').trim().slice(0, 200) };
    },
  ],
]);
