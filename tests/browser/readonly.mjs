// A read-only key at the console: it sees every credential, every
// credential's page (events, handles), and no action form anywhere; each
// action it forges from the page, with the CSRF token the page holds, is
// refused 403.
// TW_EXPECT: {"states": {ID: STATE, …}, "target": ID, "handle": HANDLE_ROW_ID}
import { env, ask, check, csrfOf, newContext, postFrom, rows, run, signIn, snapshot } from './lib.mjs';

const { states, target, handle } = env.expect;
let reader;
let page;

await run([
  [
    'signs_in_with_the_read_only_key',
    async (browser) => {
      reader = await newContext(browser, 'reader');
      page = await signIn(reader, env.readKey);
    },
    { gate: true },
  ],
  [
    'sees_every_credential',
    async () => {
      const got = await rows(page);
      for (const [id, state] of Object.entries(states)) {
        const row = got.find((r) => r.id === id);
        check(row, `no row for ${id}: ${JSON.stringify(got)}`);
        check(row.state === state && row.badge === state, `${id}: ${JSON.stringify(row)}, expected ${state}`);
      }
      check(got.length === Object.keys(states).length, `${got.length} rows`);
      await snapshot(page, 'reader');
      return { rows: got.length };
    },
  ],
  [
    'no_action_form_on_any_page',
    async () => {
      const forms = async () =>
        page.$$eval('form.action, form[data-action], form[action*="/ui/credentials/"]', (f) =>
          f.map((x) => x.getAttribute('action')),
        );
      const onOverview = await forms();
      check(onOverview.length === 0, `action forms on the overview: ${onOverview}`);
      const seen = {};
      for (const id of Object.keys(states)) {
        await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(id)}`);
        check((await page.textContent('#credential-id')).trim() === id, `#credential-id is not ${id}`);
        const found = await forms();
        check(found.length === 0, `action forms on ${id}'s page: ${found}`);
        seen[id] = await page.$$eval('#events li.event', (l) => l.length);
        await snapshot(page, 'reader');
      }
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(target)}`);
      const handles = await page.$$eval('#handles tr.handle', (t) => t.map((r) => r.dataset.handleId));
      check(handles.includes(handle), `handle ${handle} not listed: ${handles}`);
      check(seen[target] >= 1, `no event shown for ${target}`);
      return { events: seen, handles };
    },
  ],
  [
    'every_forged_action_is_refused_403',
    async () => {
      // The page still holds a CSRF token (the sign-out form's): a forged
      // POST carries it, so only the session's scope can refuse it.
      const csrf = await csrfOf(page);
      check(csrf && csrf.length >= 16, `no usable CSRF token on the page: ${csrf}`);
      const base = `/ui/credentials/${encodeURIComponent(target)}`;
      const forged = [
        ['refresh', {}],
        ['reject', {}],
        ['cooldown', { seconds: '3600' }],
        ['clear-cooldown', {}],
        ['revoke-handle', { handle }],
        ['delete', {}],
      ];
      await ask('mark', { name: 'forged_before' });
      const answers = {};
      for (const [name, extra] of forged) {
        const a = await postFrom(page, `${base}/${name}`, { csrf, ...extra });
        answers[name] = a.status;
      }
      await ask('mark', { name: 'forged_after' });
      const wrong = Object.entries(answers).filter(([, s]) => s !== 403);
      check(wrong.length === 0, `forged actions not refused 403: ${JSON.stringify(answers)}`);
      // Still there, still readable.
      await page.goto(`${env.url}${base}`);
      check((await page.textContent('#credential-id')).trim() === target, `${target}'s page is gone`);
      return { answers };
    },
  ],
]);
