// Every action of a credential's page, clicked and confirmed as an admin
// would: cooldown set and cleared, the current token rejected, a refresh
// that fails upstream (its error shown), a handle revoked, a credential
// deleted; and a page for an id that does not exist.
// TW_EXPECT: {"target": ID, "doomed": ID, "handle": HANDLE_ROW_ID}
import { env, ask, check, newContext, run, signIn, snapshot } from './lib.mjs';

const { target, doomed, handle } = env.expect;
const pageOf = (id) => `${env.url}/ui/credentials/${encodeURIComponent(id)}`;
let admin;
let page;

/** Clicks the submit button of `form` (a selector), confirms, and returns the flash. */
async function act(form, fill = {}) {
  for (const [name, value] of Object.entries(fill)) await page.fill(`${form} input[name="${name}"]`, value);
  const dialogs = admin.dialogsSeen.length;
  await Promise.all([page.waitForNavigation(), page.click(`${form} button[type="submit"]`)]);
  check(admin.dialogsSeen.length === dialogs + 1, `${form}: no confirmation asked`);
  const flash = await page.$eval('#flash', (f) => ({ text: f.textContent.trim(), error: f.classList.contains('error') })).catch(() => null);
  check(flash && flash.text, `${form}: no #flash on ${page.url()}`);
  await snapshot(page, 'admin');
  return flash;
}

const action = (name) => `form.action[data-action="${name}"]`;

await run([
  [
    'signs_in',
    async (browser) => {
      admin = await newContext(browser, 'admin');
      page = await signIn(admin, env.adminKey);
    },
    { gate: true },
  ],
  [
    'a_cooldown_set_then_cleared',
    async () => {
      await page.goto(pageOf(target));
      const set = await act(action('cooldown'), { seconds: '600' });
      check(!set.error, `setting a cooldown: ${set.text}`);
      const during = await ask('cooldown', { id: target });
      const cleared = await act(action('clear-cooldown'));
      check(!cleared.error, `clearing the cooldown: ${cleared.text}`);
      const after = await ask('cooldown', { id: target });
      return { set: set.text, cleared: cleared.text, during: during.cooldown, after: after.cooldown };
    },
  ],
  [
    'the_current_token_rejected',
    async () => {
      await ask('mark', { name: 'reject_before' });
      const flash = await act(action('reject'));
      await ask('mark', { name: 'reject_after' });
      check(!flash.error, `rejecting: ${flash.text}`);
      check(new URL(page.url()).pathname === `/ui/credentials/${target}`, `landed on ${page.url()}`);
      return { flash: flash.text };
    },
  ],
  [
    'a_refresh_refused_upstream_shows_its_error',
    async () => {
      await ask('fail_next_refresh');
      await ask('mark', { name: 'failed_before' });
      const flash = await act(action('refresh'));
      await ask('mark', { name: 'failed_after' });
      check(flash.error, `a failed refresh flashed no error: ${flash.text}`);
      return { flash: flash.text };
    },
  ],
  [
    'a_handle_revoked',
    async () => {
      await page.goto(pageOf(target));
      const row = `#handles tr.handle[data-handle-id="${handle}"]`;
      const flash = await act(`${row} ${action('revoke-handle')}`);
      check(!flash.error, `revoking: ${flash.text}`);
      await page.goto(pageOf(target));
      const revoked = await page.$eval(row, (r) => ({ cls: r.className, forms: r.querySelectorAll('form').length }));
      check(revoked.cls.split(/\s+/).includes('revoked') && revoked.forms === 0, `the revoked row: ${JSON.stringify(revoked)}`);
      const facade = await ask('use_handle');
      return { flash: flash.text, facadeStatus: facade.status };
    },
  ],
  [
    'a_credential_deleted',
    async () => {
      await page.goto(pageOf(doomed));
      const flash = await act(action('delete'));
      check(!flash.error, `deleting: ${flash.text}`);
      check(new URL(page.url()).pathname === '/ui', `a delete landed on ${page.url()}`);
      const ids = await page.$$eval('#credential-rows tr.credential', (t) => t.map((r) => r.dataset.id));
      check(!ids.includes(doomed) && ids.includes(target), `rows after the delete: ${ids}`);
      return { flash: flash.text };
    },
  ],
  [
    'an_unknown_credential_is_a_404_page',
    async () => {
      const answer = await page.goto(pageOf(doomed));
      check(answer.status() === 404, `${doomed}'s page after its delete answered ${answer.status()}`);
      const said = await page.$eval('.error', (e) => e.textContent.trim()).catch(() => '');
      check(said.length > 0, 'no error message on the 404 page');
      return { said };
    },
  ],
]);
