// A script's POST (fetch) without a session: the contract answers 401, so
// a page whose session ended can tell (a form is sent to the sign-in page
// instead: forgery.mjs).
// TW_EXPECT: {"target": ID}
import { env, check, newContext, postFrom, run, settle } from './lib.mjs';

const { target } = env.expect;

await run([
  [
    'a_fetch_post_without_a_session_is_401',
    async (browser) => {
      const stranger = await newContext(browser, 'stranger');
      const p = await stranger.newPage();
      await p.goto(env.url + '/ui/login');
      const answers = {};
      for (const name of ['refresh', 'delete']) {
        const a = await postFrom(p, `/ui/credentials/${encodeURIComponent(target)}/${name}`, { csrf: 'x'.repeat(43) });
        answers[name] = `${a.status} (${a.type})`;
      }
      await settle();
      await stranger.close();
      check(Object.values(answers).every((a) => a.startsWith('401 ')), `fetch POSTs without a session answered ${JSON.stringify(answers)}: the contract says 401`);
      return { answers };
    },
  ],
]);
