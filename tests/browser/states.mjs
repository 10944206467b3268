// Every state the overview can show, as an admin sees it: badges, the
// order (dead, then failing, then the rest), each dead/failing row's fix,
// cooldowns, pools, expiry countdowns, quota gauges, the filters (in the
// form and as query parameters), and a credential's page with its events,
// handles, quota history and notifications. With TW_SHOTS set, saves
// ui-overview.png and ui-credential.png there.
// TW_EXPECT: {"states": {ID: STATE}, "dead": [ID], "failing": [ID],
//   "cooling": [ID], "pools": {POOL: [ID]}, "providers": {P: [ID]},
//   "quota": [ID], "detail": ID, "handles": N}
import { env, check, newContext, rows, run, sameDocument, signIn, snapshot, until } from './lib.mjs';

const x = env.expect;
let admin;
let page;

const ids = async () => (await rows(page)).map((r) => r.id).sort();
const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

/** Sets the filter `name` to `value` and waits for the rows to become `want`. */
async function filter(name, value, want) {
  const still = await sameDocument(page);
  await page.selectOption(`#filters select[name="${name}"]`, value);
  await until(async () => same(await ids(), want), 10000, `rows ${want} for ${name}=${value} (have ${await ids()})`);
  check(await still(), `filtering by ${name} loaded the page again`);
}

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
    'every_state_has_its_badge',
    async () => {
      const got = await rows(page);
      check(same(got.map((r) => r.id), Object.keys(x.states)), `rows ${got.map((r) => r.id)}`);
      for (const r of got) {
        const want = x.states[r.id];
        check(r.state === want && r.badge === want, `${r.id}: ${JSON.stringify(r)}, expected ${want}`);
      }
      return { order: got.map((r) => `${r.id}:${r.state}`) };
    },
  ],
  [
    'dead_then_failing_first_each_with_its_fix',
    async () => {
      const got = await rows(page);
      const order = got.map((r) => r.id);
      const n = x.dead.length;
      const m = x.failing.length;
      check(same(order.slice(0, n), x.dead), `the first ${n} rows are ${order.slice(0, n)}, not the dead ${x.dead}`);
      check(same(order.slice(n, n + m), x.failing), `rows ${n}.. are ${order.slice(n, n + m)}, not the failing ${x.failing}`);
      const fixes = {};
      for (const r of got.filter((r) => x.dead.includes(r.id) || x.failing.includes(r.id))) {
        check(r.fix, `${r.id} has no .fix`);
        fixes[r.id] = r.fix;
      }
      for (const id of x.dead) {
        check(/tokenwarden\s+\S+/.test(fixes[id]) || /log ?in/i.test(fixes[id]), `${id}'s fix names no command: ${fixes[id]}`);
      }
      for (const r of got.filter((r) => !x.dead.includes(r.id) && !x.failing.includes(r.id))) {
        check(!r.fix, `healthy ${r.id} shows a fix: ${r.fix}`);
      }
      return { fixes };
    },
  ],
  [
    'the_cells_show_cooldowns_pools_countdowns_and_failures',
    async () => {
      const cells = await page.$$eval('#credential-rows tr.credential', (trs) =>
        Object.fromEntries(
          trs.map((tr) => {
            const t = (c) => tr.querySelector(`td.${c}`)?.textContent.replace(/\s+/g, ' ').trim() ?? null;
            return [
              tr.dataset.id,
              {
                provider: t('provider'),
                account: t('account'),
                expires: t('expires'),
                expiresMs: tr.querySelector('td.expires')?.getAttribute('data-expires-ms') ?? null,
                lastRefresh: t('last-refresh'),
                failures: t('failures'),
                pools: t('pools'),
                cooldown: t('cooldown'),
                link: tr.querySelector('td.id a.credential-link')?.getAttribute('href') ?? null,
              },
            ];
          }),
        ),
      );
      for (const [id, c] of Object.entries(cells)) {
        check(c.link === `/ui/credentials/${encodeURIComponent(id)}`, `${id}'s link is ${c.link}`);
        for (const k of ['provider', 'account', 'expires', 'last-refresh', 'failures', 'pools', 'cooldown']) {
          check(c[k.replace('-r', 'R')] !== null, `${id} has no td.${k}`);
        }
        check(c.cooldown === '' || c.cooldown === '—' || c.cooldown === '-' || x.cooling.includes(id), `${id} shows a cooldown: ${c.cooldown}`);
      }
      for (const id of x.cooling) check(/\d/.test(cells[id].cooldown), `${id}'s cooldown cell: ${cells[id].cooldown}`);
      for (const [pool, members] of Object.entries(x.pools)) {
        for (const id of members) check(cells[id].pools.includes(pool), `${id}'s pools cell: ${cells[id].pools}`);
      }
      for (const [provider, members] of Object.entries(x.providers)) {
        for (const id of members) check(cells[id].provider.includes(provider), `${id}'s provider cell: ${cells[id].provider}`);
      }
      for (const id of x.failing) check(/[1-9]/.test(cells[id].failures), `${id}'s failures cell: ${cells[id].failures}`);
      const soon = Object.keys(x.states).filter((id) => x.states[id] === 'expiring');
      for (const id of soon) {
        const ms = Number(cells[id].expiresMs);
        check(ms > Date.now() && ms < Date.now() + 600000, `${id}'s data-expires-ms is ${cells[id].expiresMs}`);
        check(/\d/.test(cells[id].expires), `${id}'s countdown: ${cells[id].expires}`);
      }
      // The countdowns tick in the page between fetches of the rows.
      const cell = `#credential-rows tr.credential[data-id="${soon[0]}"] td.expires`;
      const before = (await page.textContent(cell)).trim();
      await until(async () => (await page.textContent(cell)).trim() !== before, 3000, `${soon[0]}'s countdown to tick from ${before}`);
      return { cells };
    },
  ],
  [
    'quota_gauges_per_window',
    async () => {
      const gauges = await page.$$eval('div.quota[data-id]', (qs) =>
        Object.fromEntries(qs.map((q) => [q.dataset.id, [...q.querySelectorAll('svg.gauge')].map((g) => g.dataset.window)])),
      );
      for (const id of x.quota) {
        check(gauges[id] && gauges[id].length >= 2, `${id}'s gauges: ${JSON.stringify(gauges[id])}`);
        check(gauges[id].every((w) => w), `${id} has a gauge without data-window`);
      }
      for (const id of Object.keys(gauges)) check(x.quota.includes(id), `${id} has gauges but no snapshot`);
      return { gauges };
    },
  ],
  [
    'filters_swap_the_rows_in_place',
    async () => {
      if (env.shots) await page.screenshot({ path: `${env.shots}/ui-overview.png`, fullPage: true });
      const all = Object.keys(x.states);
      await filter('state', 'dead', x.dead);
      await filter('state', '', all);
      for (const [provider, members] of Object.entries(x.providers)) {
        await filter('provider', provider, members);
        await filter('provider', '', all);
      }
      for (const [pool, members] of Object.entries(x.pools)) {
        await filter('pool', pool, members);
        await filter('pool', '', all);
      }
      // The same filters as query parameters of the page.
      const [pool, members] = Object.entries(x.pools)[0];
      await page.goto(`${env.url}/ui?pool=${encodeURIComponent(pool)}`);
      check(same(await ids(), members), `/ui?pool=${pool} shows ${await ids()}`);
      const selected = await page.$eval('#filters select[name="pool"]', (s) => s.value);
      check(selected === pool, `the pool filter shows ${selected} on /ui?pool=${pool}`);
      await page.goto(`${env.url}/ui?state=dead`);
      check(same(await ids(), x.dead), `/ui?state=dead shows ${await ids()}`);
    },
  ],
  [
    'a_credential_page_shows_events_handles_quota_history_and_notifications',
    async () => {
      const id = x.detail;
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(id)}`);
      check((await page.textContent('#credential-id')).trim() === id, 'wrong #credential-id');
      const state = await page.$eval('#credential-state', (s) => ({ text: s.textContent.trim(), cls: s.className }));
      check(state.text === x.states[id] && state.cls.includes(`state-${x.states[id]}`), `#credential-state: ${JSON.stringify(state)}`);
      const events = await page.$$eval('#events li.event', (l) => l.map((e) => e.textContent.replace(/\s+/g, ' ').trim()));
      check(events.length >= x.events, `${events.length} events shown, ${x.events} expected at least`);
      check(await page.isVisible('#refresh-latency'), 'no #refresh-latency');
      const handles = await page.$$eval('#handles tr.handle', (t) => t.map((r) => r.dataset.handleId));
      check(handles.length === x.handles && handles.every((h) => h), `handles shown: ${handles}`);
      const revokeForms = await page.$$eval('#handles form.action[data-action="revoke-handle"] input[name="handle"]', (i) => i.map((e) => e.value));
      check(revokeForms.length >= 1 && revokeForms.every((h) => handles.includes(h)), `revoke forms for ${revokeForms}, rows ${handles}`);
      check((await page.$$('svg.quota-history')).length >= 1, 'no svg.quota-history');
      check((await page.$$('#notifications')).length === 1, 'no #notifications table');
      const actions = await page.$$eval('form.action', (f) => f.map((x) => x.dataset.action));
      for (const a of ['refresh', 'reject', 'cooldown', 'delete']) check(actions.includes(a), `no ${a} form: ${actions}`);
      check(actions.includes('cooldown') || actions.includes('clear-cooldown'), 'no cooldown form');
      await snapshot(page, 'admin');
      if (env.shots) await page.screenshot({ path: `${env.shots}/ui-credential.png`, fullPage: true });
      // The dead one's page says why, and its notification.
      const dead = x.dead[0];
      await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(dead)}`);
      const notes = await page.$$eval('#notifications tr', (t) => t.map((r) => r.textContent.replace(/\s+/g, ' ').trim()));
      check(notes.some((n) => /dead/.test(n)), `${dead}'s notifications: ${JSON.stringify(notes)}`);
      await snapshot(page, 'admin');
      return { events: events.length, handles, actions, notes };
    },
  ],
  [
    'the_static_files_and_every_page_load_clean',
    async () => {
      const errors = [];
      page.on('console', (m) => {
        if (m.type() === 'error') errors.push(`${m.text()} (${m.location().url})`);
      });
      page.on('pageerror', (e) => errors.push(String(e)));
      for (const id of Object.keys(x.states)) {
        await page.goto(`${env.url}/ui/credentials/${encodeURIComponent(id)}`);
        check((await page.textContent('#credential-id')).trim() === id, `${id}'s page`);
        await snapshot(page, 'admin');
      }
      await page.goto(`${env.url}/ui`);
      await page.waitForTimeout(3500);
      check(errors.length === 0, `console errors (CSP violations, script errors, failed loads): ${errors.join(' | ')}`);
      const css = await page.evaluate(() => [...document.styleSheets].map((s) => s.href));
      check(css.some((h) => h && h.endsWith('/ui/static/app.css')), `stylesheets: ${css}`);
      const scripts = await page.$$eval('script', (s) => s.map((e) => e.getAttribute('src')));
      check(scripts.length >= 1 && scripts.every((s) => s === '/ui/static/app.js'), `scripts: ${scripts}`);
    },
  ],
]);
