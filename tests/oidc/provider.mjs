// A real OpenID provider for tests/login.rs: panva's oidc-provider on
// 127.0.0.1, on a free port it prints as "READY <port>" once listening.
// Development interactions (a login form that takes any name, a consent
// form) are on, so a test can sign in over plain HTTP; the device flow
// (RFC 8628) and refresh-token rotation are on. Clients:
// - tw-cli: a public native client (RFC 8252: any loopback port), PKCE;
//   redirects /callback (tokenwarden login) and /oauth/callback (serve).
// - tw-short: the same, whose device codes live 2 seconds.
// Stops on SIGTERM or when its stdin closes (the test process died).
import http from 'node:http';
import Provider from 'oidc-provider';

const native = (clientId) => ({
  client_id: clientId,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/oauth/callback'],
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
});

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [native('tw-cli'), native('tw-short')],
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
    },
    scopes: ['openid', 'offline_access', 'email', 'profile'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    conformIdTokenClaims: false,
    findAccount: (_ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
    }),
    pkce: { required: () => true },
    // Every refresh rotates the refresh token and spends the old one.
    rotateRefreshToken: true,
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      DeviceCode: (_ctx, _token, client) => (client && client.clientId === 'tw-short' ? 2 : 600),
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
    cookies: { keys: ['tokenwarden-test-cookie-key'] },
  });
  server.on('request', provider.callback());
  process.stdout.write(`READY ${port}\n`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
