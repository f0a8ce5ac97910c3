// Token refresh interoperability: drives the official centrifuge-js SDK (over the `ws` package) against Gust.
//
//   GUST_SECRET=... GUST_API_URL=http://127.0.0.1:PORT/api GUST_API_KEY=... \
//     node tests/js/auth.mjs ws://127.0.0.1:PORT/connection/websocket <scenario> [channel]
//
// Scenarios:
//   connection-refresh    connect with a 2 s token and a getToken minting fresh 2 s tokens, subscribe to `channel`
//                         (a chat: channel), hold the connection 5 s; a publication is sent through the HTTP API
//                         4 s after connect.
//   subscription-refresh  connect with a long-lived token, subscribe to `channel` (a $-channel) with a 2 s
//                         subscription token and a getToken minting fresh 2 s tokens, hold 5 s while publications
//                         are sent through the HTTP API.
//   expired-connect       connect with an already expired token and a getToken returning a valid one.
//
// The script only drives the SDK and reports: every SDK event (and every getToken call, API publish, ...) is
// printed to stdout as one JSON line {"t": ms since start, "event": ..., ...}; the last line is
// {"event": "done", ...} with a summary. The checks are made by tests/test_sdk_auth.py. The exit code is 0 unless
// the script itself failed (exception, hard timeout).

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { createHmac } from 'node:crypto';

const HARD_TIMEOUT_MS = Number(process.env.AUTH_TIMEOUT_MS || 20000);
const TOKEN_TTL_S = Number(process.env.AUTH_TOKEN_TTL_S || 2);
const HOLD_MS = Number(process.env.AUTH_HOLD_MS || 5000);
const WAIT_MS = 5000;
const USER = process.env.AUTH_USER || 'js-alice';

const started = Date.now();
let finished = false;
let quiet = false;

function emit(event, fields = {}) {
  if (quiet) {
    return;
  }
  process.stdout.write(JSON.stringify({ t: Date.now() - started, event, ...fields }) + '\n');
}

function fail(error) {
  if (finished) {
    return;
  }
  finished = true;
  process.stderr.write(`[auth] ERROR: ${error && error.stack ? error.stack : error}\n`);
  emit('failed', { error: String(error) });
  process.exit(1);
}

const hardTimer = setTimeout(
  () => fail(new Error(`hard timeout: not done after ${HARD_TIMEOUT_MS} ms`)),
  HARD_TIMEOUT_MS,
);
process.on('unhandledRejection', (reason) => fail(reason));
process.on('uncaughtException', (error) => fail(error));

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves true once `condition()` is truthy (polled every 10 ms), false after `timeoutMs` (reported). */
async function until(condition, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      emit('wait_timeout', { what, timeoutMs });
      return false;
    }
    await sleep(10);
  }
  return true;
}

// --- a tiny HS256 JWT signer -------------------------------------------------------------------------------

function base64url(input) {
  return Buffer.from(input).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function signHS256(claims, secret) {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = base64url(JSON.stringify(claims));
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64')
    .replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${header}.${payload}.${signature}`;
}

/** Unix seconds `seconds` from now, rounded up: the token is valid for at least `seconds`. */
function expIn(seconds) {
  return Math.ceil(Date.now() / 1000 + seconds);
}

/** `exp` of a refreshable token, minted as apps usually do (int(now) + ttl): the server answers ttl = TOKEN_TTL_S. */
function refreshableExp() {
  return Math.floor(Date.now() / 1000) + TOKEN_TTL_S;
}

function connectionToken(secret, exp) {
  return signHS256({ sub: USER, exp }, secret);
}

function subscriptionToken(secret, channel, exp) {
  return signHS256({ sub: USER, channel, exp }, secret);
}

// --- the server's HTTP API -----------------------------------------------------------------------------------

async function apiPublish(channel, data) {
  const apiUrl = process.env.GUST_API_URL;
  const response = await fetch(`${apiUrl}/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': process.env.GUST_API_KEY || '' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await response.text();
  emit('api_publish', { channel, data, status: response.status, body });
}

// --- SDK objects whose events are all reported -------------------------------------------------------------

function makeClient(url, options) {
  const client = new Centrifuge(url, {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  const record = { client, connected: [], connecting: [], disconnected: [], errors: [] };
  client.on('connecting', (ctx) => {
    record.connecting.push(ctx);
    emit('connecting', { code: ctx.code, reason: ctx.reason });
  });
  client.on('connected', (ctx) => {
    record.connected.push(ctx);
    emit('connected', { client: ctx.client, transport: ctx.transport });
  });
  client.on('disconnected', (ctx) => {
    record.disconnected.push(ctx);
    emit('disconnected', { code: ctx.code, reason: ctx.reason });
  });
  client.on('error', (ctx) => {
    record.errors.push(ctx);
    emit('error', { type: ctx.type, error: ctx.error });
  });
  return record;
}

function makeSubscription(owner, channel, options) {
  const sub = owner.client.newSubscription(channel, {
    minResubscribeDelay: 100,
    maxResubscribeDelay: 1000,
    ...options,
  });
  const record = { sub, channel, subscribed: [], subscribing: [], unsubscribed: [], publications: [], errors: [] };
  sub.on('subscribing', (ctx) => {
    record.subscribing.push(ctx);
    emit('subscribing', { channel: ctx.channel, code: ctx.code, reason: ctx.reason });
  });
  sub.on('subscribed', (ctx) => {
    record.subscribed.push(ctx);
    emit('subscribed', {
      channel: ctx.channel,
      recoverable: ctx.recoverable,
      positioned: ctx.positioned,
      streamPosition: ctx.streamPosition ?? null,
    });
  });
  sub.on('unsubscribed', (ctx) => {
    record.unsubscribed.push(ctx);
    emit('unsubscribed', { channel: ctx.channel, code: ctx.code, reason: ctx.reason });
  });
  sub.on('publication', (ctx) => {
    record.publications.push(ctx);
    emit('publication', { channel: ctx.channel, offset: ctx.offset, data: ctx.data });
  });
  sub.on('error', (ctx) => {
    record.errors.push(ctx);
    emit('sub_error', { channel: ctx.channel, type: ctx.type, error: ctx.error });
  });
  return record;
}

async function finish(record, summary) {
  finished = true;
  clearTimeout(hardTimer);
  emit('done', { state: record.client.state, ...summary });
  quiet = true; // the events of the script's own disconnect() are not reported
  record.client.disconnect();
  // Let the close frame go out before exiting.
  await sleep(50);
  process.exit(0);
}

// --- scenarios -----------------------------------------------------------------------------------------------

async function connectionRefresh(url, secret, channel) {
  let getTokenCalls = 0;
  const firstExp = refreshableExp();
  const record = makeClient(url, {
    token: connectionToken(secret, firstExp),
    getToken: async (ctx) => {
      getTokenCalls += 1;
      const exp = refreshableExp();
      emit('get_token', { n: getTokenCalls, ctx, exp });
      return connectionToken(secret, exp);
    },
  });
  emit('start', { scenario: 'connection-refresh', firstExp, user: USER, channel });
  const subRecord = makeSubscription(record, channel, {});
  subRecord.sub.subscribe();
  record.client.connect();
  const ready = () => record.connected.length > 0 && subRecord.subscribed.length > 0;
  if (!(await until(ready, 'connected and subscribed'))) {
    return finish(record, { getTokenCalls, publications: subRecord.publications.length });
  }
  const connectedAt = Date.now();
  await sleep(Math.max(0, 4000 - (Date.now() - connectedAt)));
  emit('checkpoint', {
    wall: Date.now() / 1000,
    name: 'publish after 4 s',
    state: record.client.state,
    getTokenCalls,
  });
  await apiPublish(channel, { n: 1, after: '4s' });
  await until(() => subRecord.publications.length > 0, 'publication sent after 4 s');
  await sleep(Math.max(0, HOLD_MS - (Date.now() - connectedAt)));
  await until(() => getTokenCalls >= 2, 'a second getToken call');
  return finish(record, {
    getTokenCalls,
    publications: subRecord.publications.length,
    subState: subRecord.sub.state,
    heldMs: Date.now() - connectedAt,
  });
}

async function subscriptionRefresh(url, secret, channel) {
  let getTokenCalls = 0;
  const record = makeClient(url, { token: connectionToken(secret, expIn(3600)) });
  const firstExp = refreshableExp();
  emit('start', { scenario: 'subscription-refresh', firstExp, user: USER, channel });
  const subRecord = makeSubscription(record, channel, {
    token: subscriptionToken(secret, channel, firstExp),
    getToken: async (ctx) => {
      getTokenCalls += 1;
      const exp = refreshableExp();
      emit('sub_get_token', { n: getTokenCalls, ctx, exp });
      return subscriptionToken(secret, ctx.channel, exp);
    },
  });
  subRecord.sub.subscribe();
  record.client.connect();
  if (!(await until(() => subRecord.subscribed.length > 0, 'subscribed'))) {
    return finish(record, { getTokenCalls, publications: subRecord.publications.length });
  }
  const subscribedAt = Date.now();
  // Publications at about 1 s, 3 s and 5 s after subscribing: before, between and after token refreshes.
  for (const [i, at] of [1000, 3000, HOLD_MS].entries()) {
    await sleep(Math.max(0, at - (Date.now() - subscribedAt)));
    emit('checkpoint', {
      wall: Date.now() / 1000,
      name: `publish ${i + 1}`,
      subState: subRecord.sub.state,
      getTokenCalls,
    });
    await apiPublish(channel, { n: i + 1 });
    await until(() => subRecord.publications.length > i, `publication ${i + 1}`);
  }
  await until(() => getTokenCalls >= 2, 'a second getToken call');
  return finish(record, {
    getTokenCalls,
    publications: subRecord.publications.length,
    subState: subRecord.sub.state,
    heldMs: Date.now() - subscribedAt,
  });
}

async function expiredConnect(url, secret) {
  let getTokenCalls = 0;
  const expiredAt = Math.floor(Date.now() / 1000) - 10;
  const record = makeClient(url, {
    token: connectionToken(secret, expiredAt),
    getToken: async (ctx) => {
      getTokenCalls += 1;
      const exp = expIn(3600);
      emit('get_token', { n: getTokenCalls, ctx, exp });
      return connectionToken(secret, exp);
    },
  });
  emit('start', { scenario: 'expired-connect', expiredAt, user: USER });
  record.client.connect();
  await until(() => record.connected.length > 0 || record.disconnected.length > 0, 'connected (or disconnected)');
  return finish(record, { getTokenCalls });
}

async function main() {
  const [url, scenario, channel] = process.argv.slice(2);
  const secret = process.env.GUST_SECRET;
  if (!url || !scenario || !secret) {
    process.stderr.write('usage: GUST_SECRET=... node auth.mjs <ws-url> <scenario> [channel]\n');
    process.exit(2);
  }
  if (scenario === 'connection-refresh') {
    await connectionRefresh(url, secret, channel);
  } else if (scenario === 'subscription-refresh') {
    await subscriptionRefresh(url, secret, channel);
  } else if (scenario === 'expired-connect') {
    await expiredConnect(url, secret);
  } else {
    process.stderr.write(`unknown scenario ${scenario}\n`);
    process.exit(2);
  }
}

main().catch(fail);
