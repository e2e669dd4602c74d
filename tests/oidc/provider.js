// A real OpenID provider for Berth's tests: oidc-provider 9 on loopback, with login and
// consent forms of its own (the built-in development screens are off: they accept anyone).
//
//   node provider.js        settings come from the environment:
//     PORT            loopback port to listen on
//     STATE_DIR       signing keys, registered clients and accounts: kept in files there, so a
//                     restart (the "provider is down" tests) keeps them
//     ADMIN_TOKEN     initial access token for client registration, and the bearer token of
//                     the /__test__/ endpoints below
//
// Tests drive it like a person would (the forms below) and configure it through:
//   POST /reg                        dynamic client registration (Bearer ADMIN_TOKEN)
//   POST /__test__/accounts          add an account: {sub, email, password, name, groups, ...}
//   POST /__test__/clock             {"token_endpoint_skew": seconds}: the token endpoint's clock
//                                    runs that far off, so it signs already-expired ID tokens
// It sends no request anywhere: every page is self-contained (no external fonts or scripts).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

import Provider from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const port = Number(process.env.PORT);
const adminToken = process.env.ADMIN_TOKEN;
const stateDir = process.env.STATE_DIR;
if (!port || !adminToken || !stateDir) {
  console.error('PORT, ADMIN_TOKEN and STATE_DIR are required');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const keysFile = `${stateDir}/jwks.json`;
const clientsFile = `${stateDir}/clients.json`;
const accountsFile = `${stateDir}/accounts.json`;

const load = (file) => (existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {});
const save = (file, value) => writeFileSync(file, JSON.stringify(value), { mode: 0o600 });

function signingKeys() {
  if (existsSync(keysFile)) return JSON.parse(readFileSync(keysFile, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwks = { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomBytes(6).toString('hex'), use: 'sig', alg: 'RS256' }] };
  save(keysFile, jwks);
  return jwks;
}

// Everything else lives in memory, as with the stock adapter; registered clients are also
// written to a file, and loaded again at start.
const clients = load(clientsFile);
class Adapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    await super.upsert(id, payload, expiresIn);
    if (this.model === 'Client') save(clientsFile, Object.assign(clients, { [id]: payload }));
  }

  async destroy(id) {
    await super.destroy(id);
    if (this.model === 'Client') { delete clients[id]; save(clientsFile, clients); }
  }
}
for (const [id, payload] of Object.entries(clients)) await new MemoryAdapter('Client').upsert(id, payload);

const accounts = new Map(Object.entries(load(accountsFile))); // sub -> {sub, email, password, ...}
let tokenEndpointSkew = 0; // seconds

const escape = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;color:#222}
label{display:block;margin:.6rem 0}input{display:block;width:100%;padding:.4rem}
button{margin:.8rem .4rem 0 0;padding:.4rem 1rem}.error{color:#b00}</style></head>
<body><p>Test Identity Provider</p><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, params, error) {
  return page('Sign in to the test provider', `
${error ? `<p class="error" role="alert">${escape(error)}</p>` : ''}
<p>Client: <code>${escape(params.client_id)}</code></p>
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <label>Username <input name="username" value="${escape(params.login_hint)}" autofocus></label>
  <label>Password <input name="password" type="password"></label>
  <button type="submit">Continue</button>
  <button type="submit" formaction="/interaction/${escape(uid)}/abort">Cancel</button>
</form>`);
}

function consentForm(uid, params, details) {
  const scopes = [...(details.missingOIDCScope || [])].join(' ');
  return page('Allow access?', `
<p><code>${escape(params.client_id)}</code> asks for: <code>${escape(scopes || 'nothing new')}</code></p>
<form method="post" action="/interaction/${escape(uid)}/confirm">
  <button type="submit">Allow</button>
  <button type="submit" formaction="/interaction/${escape(uid)}/abort">Deny</button>
</form>`);
}

async function readBody(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  if ((ctx.get('content-type') || '').includes('application/json')) return text ? JSON.parse(text) : {};
  return Object.fromEntries(new URLSearchParams(text));
}

function findAccount(sub) {
  const account = accounts.get(sub);
  if (!account) return undefined;
  return {
    accountId: sub,
    async claims() {
      const claims = { sub, email: account.email, email_verified: account.email_verified !== false };
      if (account.name !== undefined) claims.name = account.name;
      if (account.groups !== undefined) claims.groups = account.groups;
      return claims;
    },
  };
}

const provider = new Provider(issuer, {
  adapter: Adapter,
  jwks: signingKeys(),
  cookies: { keys: [randomBytes(16).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  findAccount: (ctx, sub) => findAccount(sub),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  ttl: {
    AccessToken: 3600, AuthorizationCode: 600, IdToken: 3600, Interaction: 3600,
    Session: 86400, Grant: 86400, RefreshToken: 86400,
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, initialAccessToken: adminToken },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out of the test provider?', `${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p>You are signed out of the test provider.</p>');
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Provider error', `<pre>${escape(JSON.stringify(out, null, 2))}</pre>`);
  },
});

// The interaction forms: login (username = the account's email or sub), then consent.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (!match) return next();
  const [, uid, action] = match;
  ctx.set('Cache-Control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
  const { prompt, params, session, grantId } = details;

  if (!action && ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = prompt.name === 'login' ? loginForm(uid, params) : consentForm(uid, params, prompt.details);
    return undefined;
  }
  if (ctx.method !== 'POST') ctx.throw(405);
  let result;
  if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'The user declined to sign in.' };
  } else if (action === 'login') {
    const form = await readBody(ctx);
    const account = [...accounts.values()].find((a) => a.email === form.username || a.sub === form.username);
    if (!account || account.password !== form.password) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginForm(uid, params, 'Unknown username or wrong password.');
      return undefined;
    }
    result = { login: { accountId: account.sub } };
  } else {
    const grant = grantId ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    result = { consent: { grantId: await grant.save() } };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: action === 'confirm',
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
  return undefined;
});

// Test controls, and the token endpoint's clock.
provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test__/')) {
    if (ctx.get('authorization') !== `Bearer ${adminToken}`) ctx.throw(401);
    const body = await readBody(ctx);
    if (ctx.path === '/__test__/accounts' && ctx.method === 'POST') {
      if (!body.sub || !body.password) ctx.throw(400, 'sub and password are required');
      accounts.set(body.sub, body);
      save(accountsFile, Object.fromEntries(accounts));
      ctx.body = { sub: body.sub };
      return undefined;
    }
    if (ctx.path === '/__test__/clock' && ctx.method === 'POST') {
      tokenEndpointSkew = Number(body.token_endpoint_skew || 0);
      ctx.body = { token_endpoint_skew: tokenEndpointSkew };
      return undefined;
    }
    ctx.throw(404);
  }
  if (tokenEndpointSkew && ctx.path === '/token') {
    const realNow = Date.now;
    Date.now = () => realNow() + tokenEndpointSkew * 1000;
    try {
      return await next();
    } finally {
      Date.now = realNow;
    }
  }
  return next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
