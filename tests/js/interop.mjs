// Interoperability check: drives the official centrifuge-js SDK (over the `ws` package) against a Gust server.
//
//   node tests/js/interop.mjs ws://127.0.0.1:PORT/connection/websocket chat:js-<hex>
//
// Steps are logged to stderr; on success a single JSON summary is printed to stdout and the exit code is 0.
// Any failed check, SDK error, unexpected disconnect or the overall hard timeout exits non-zero.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { isDeepStrictEqual } from 'node:util';

const HARD_TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS || 20000);
const STEP_TIMEOUT_MS = 5000;
// The first reconnect happens between min and 2*min ms after the drop (full jitter backoff, see `backoff` in the
// SDK): long enough for B to publish the messages A must recover, short enough to keep the test quick.
const MIN_RECONNECT_DELAY_MS = 1000;
const MAX_RECONNECT_DELAY_MS = 2000;
const MISSED_COUNT = 5;

const started = Date.now();

function log(message) {
  const elapsed = String(Date.now() - started).padStart(5, ' ');
  process.stderr.write(`[interop +${elapsed}ms] ${message}\n`);
}

class CheckError extends Error {}

function check(condition, message, details) {
  if (!condition) {
    const extra = details === undefined ? '' : `: ${JSON.stringify(details)}`;
    throw new CheckError(`${message}${extra}`);
  }
}

let finished = false;

function fail(error) {
  if (finished) {
    return;
  }
  finished = true;
  const kind = error instanceof CheckError ? 'CHECK FAILED' : 'ERROR';
  log(`${kind}: ${error && error.stack ? error.stack : error}`);
  process.exit(1);
}

const hardTimer = setTimeout(() => fail(new Error(`hard timeout: not done after ${HARD_TIMEOUT_MS} ms`)), HARD_TIMEOUT_MS);
process.on('unhandledRejection', (reason) => fail(reason));
process.on('uncaughtException', (error) => fail(error));

/** Resolves once `condition()` is truthy (polled every 10 ms); rejects after `timeoutMs`. */
async function until(condition, what, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new CheckError(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A WebSocket class for the SDK's `websocket` option: the real `ws` socket, plus a record of every socket the SDK
 * opens and every frame it sends on each, so the script can inspect the wire and drop a socket abruptly.
 */
function recordingWebSocket(label) {
  const sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols);
      this.sentFrames = [];
      this.createdAt = Date.now();
      sockets.push(this);
      log(`${label}: socket #${sockets.length} created (subprotocols: ${JSON.stringify(protocols ?? null)})`);
    }

    send(data, ...rest) {
      this.sentFrames.push(typeof data === 'string' ? data : Buffer.from(data).toString('utf8'));
      return super.send(data, ...rest);
    }
  }
  return { WebSocketClass: RecordingWebSocket, sockets };
}

function parseFrame(frame) {
  return frame
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line));
}

function commandName(command) {
  return Object.keys(command).find((key) => key !== 'id') ?? '';
}

/** A Centrifuge client whose lifecycle events are logged and kept for later checks. */
function makeClient(label, url) {
  const transport = recordingWebSocket(label);
  const client = new Centrifuge(url, {
    websocket: transport.WebSocketClass,
    minReconnectDelay: MIN_RECONNECT_DELAY_MS,
    maxReconnectDelay: MAX_RECONNECT_DELAY_MS,
  });
  const record = { label, client, sockets: transport.sockets, connected: [], connecting: [], errors: [] };
  client.on('connecting', (ctx) => {
    record.connecting.push(ctx);
    log(`${label}: connecting (code ${ctx.code}, ${ctx.reason})`);
  });
  client.on('connected', (ctx) => {
    record.connected.push(ctx);
    log(`${label}: connected as client ${ctx.client} over ${ctx.transport}`);
  });
  client.on('disconnected', (ctx) => {
    log(`${label}: disconnected (code ${ctx.code}, ${ctx.reason})`);
    if (!finished && !record.closing) {
      fail(new CheckError(`${label} was disconnected unexpectedly: code ${ctx.code} ${ctx.reason}`));
    }
  });
  client.on('error', (ctx) => {
    record.errors.push(ctx);
    log(`${label}: client error ${JSON.stringify(ctx)}`);
  });
  return record;
}

/** A subscription whose events are logged and kept: publications, joins, leaves, subscribed contexts. */
function makeSubscription(owner, channel) {
  const sub = owner.client.newSubscription(channel);
  const record = { channel, sub, publications: [], joins: [], leaves: [], subscribed: [], errors: [] };
  const tag = `${owner.label}[${channel}]`;
  sub.on('subscribing', (ctx) => log(`${tag}: subscribing (code ${ctx.code}, ${ctx.reason})`));
  sub.on('subscribed', (ctx) => {
    record.subscribed.push(ctx);
    log(
      `${tag}: subscribed recoverable=${ctx.recoverable} wasRecovering=${ctx.wasRecovering} ` +
        `recovered=${ctx.recovered} position=${JSON.stringify(ctx.streamPosition ?? null)}`,
    );
  });
  sub.on('unsubscribed', (ctx) => {
    log(`${tag}: unsubscribed (code ${ctx.code}, ${ctx.reason})`);
    if (!finished && !owner.closing) {
      fail(new CheckError(`${tag} was unsubscribed unexpectedly: code ${ctx.code} ${ctx.reason}`));
    }
  });
  sub.on('publication', (ctx) => {
    record.publications.push(ctx);
    log(`${tag}: publication offset=${ctx.offset} data=${JSON.stringify(ctx.data)} from=${ctx.info?.client}`);
  });
  sub.on('join', (ctx) => {
    record.joins.push(ctx);
    log(`${tag}: join of client ${ctx.info.client}`);
  });
  sub.on('leave', (ctx) => {
    record.leaves.push(ctx);
    log(`${tag}: leave of client ${ctx.info.client}`);
  });
  sub.on('error', (ctx) => {
    record.errors.push(ctx);
    log(`${tag}: subscription error ${JSON.stringify(ctx)}`);
  });
  return record;
}

async function main() {
  const [url, channel] = process.argv.slice(2);
  if (!url || !channel) {
    process.stderr.write('usage: node interop.mjs <ws-url> <channel, e.g. chat:js-1a2b3c>\n');
    process.exit(2);
  }
  log(`target ${url}, channel ${channel}`);
  const summary = { ok: false, channel };

  // --- a. A subscribes to three channels before connecting: connect + subscribes go out in one frame ---------
  const A = makeClient('A', url);
  const extraChannels = [`${channel}-aux1`, `${channel}-aux2`];
  const subA = makeSubscription(A, channel);
  const extraSubsA = extraChannels.map((ch) => makeSubscription(A, ch));
  for (const record of [subA, ...extraSubsA]) {
    record.sub.subscribe();
  }
  log('A: subscribe() called on 3 channels, now connect()');
  A.client.connect();
  await until(() => A.connected.length === 1, 'A connected');
  await until(() => [subA, ...extraSubsA].every((r) => r.subscribed.length === 1), 'A subscribed to all 3 channels');
  const aClientId = A.connected[0].client;
  check(typeof aClientId === 'string' && aClientId !== '', 'A connect result has a client id', A.connected[0]);
  check(A.sockets.length === 1, 'A used exactly one socket so far', A.sockets.length);

  const firstFrame = A.sockets[0].sentFrames[0];
  check(typeof firstFrame === 'string', 'A sent a first frame');
  const firstCommands = parseFrame(firstFrame);
  const firstNames = firstCommands.map(commandName);
  log(`A: first frame carried ${firstCommands.length} commands: ${firstNames.join(', ')}`);
  check(firstNames[0] === 'connect', 'first frame starts with connect', firstNames);
  const batchedSubscribes = firstCommands.slice(1).filter((cmd) => commandName(cmd) === 'subscribe');
  check(batchedSubscribes.length >= 2, 'first frame has >= 2 subscribe lines after connect', firstNames);
  check(
    isDeepStrictEqual(
      batchedSubscribes.map((cmd) => cmd.subscribe.channel).sort(),
      [channel, ...extraChannels].sort(),
    ),
    'the batched subscribes are for the 3 channels',
    batchedSubscribes,
  );
  const initial = subA.subscribed[0];
  check(initial.recoverable === true, 'A subscribe result is recoverable (force_recovery)', initial);
  check(initial.wasRecovering === false && initial.recovered === false, 'first subscribe is not a recovery', initial);
  check(typeof initial.streamPosition?.epoch === 'string', 'first subscribe has a stream position', initial);
  summary.batchedFirstFrame = { commands: firstNames, subscribeCount: batchedSubscribes.length };
  summary.initialPosition = initial.streamPosition;

  // --- b. B connects anonymously, subscribes and publishes; A gets the publication with B's info ---------------
  const B = makeClient('B', url);
  const subB = makeSubscription(B, channel);
  subB.sub.subscribe();
  B.client.connect();
  await until(() => B.connected.length === 1 && subB.subscribed.length === 1, 'B connected and subscribed');
  const bClientId = B.connected[0].client;
  check(typeof bClientId === 'string' && bClientId !== '' && bClientId !== aClientId, 'B has its own client id', {
    aClientId,
    bClientId,
  });

  // --- d. join of B reaches A (join/leave is forced on the namespace; A did not ask for it) --------------------
  await until(() => subA.joins.some((j) => j.info.client === bClientId), 'A receives the join of B');
  const join = subA.joins.find((j) => j.info.client === bClientId);
  check(join.channel === channel, 'join is for the channel', join);
  summary.join = { client: join.info.client, user: join.info.user };

  const liveData = { text: 'hello from B', n: 0 };
  await subB.sub.publish(liveData);
  log('B: published the live message');
  await until(() => subA.publications.length === 1, 'A receives B publication');
  const live = subA.publications[0];
  check(isDeepStrictEqual(live.data, liveData), 'A got the data B published', live);
  check(live.channel === channel, 'publication channel', live);
  check(live.info !== undefined && live.info.client === bClientId, 'publication info.client is B', live);
  check(Number.isInteger(live.offset) && live.offset > 0, 'publication has an offset', live);
  summary.live = { offset: live.offset, infoClient: live.info.client };

  // --- c. presence, presence stats, history ------------------------------------------------------------------
  const presence = await subA.sub.presence();
  const presentIds = Object.keys(presence.clients).sort();
  log(`A: presence ${JSON.stringify(presence.clients)}`);
  check(isDeepStrictEqual(presentIds, [aClientId, bClientId].sort()), 'presence lists exactly A and B', presentIds);
  for (const id of presentIds) {
    check(presence.clients[id].client === id, 'presence entry carries its client id', presence.clients[id]);
  }
  const stats = await subA.sub.presenceStats();
  log(`A: presence stats ${JSON.stringify(stats)}`);
  check(stats.numClients === 2, 'presence stats: 2 clients', stats);
  check(stats.numUsers === 1, 'presence stats: 1 user (both anonymous, user "")', stats);
  const history = await subA.sub.history({ limit: 10 });
  log(`A: history ${JSON.stringify(history)}`);
  check(history.publications.length === 1, 'history has the one publication', history);
  check(history.publications[0].offset === live.offset, 'history publication offset', history);
  check(isDeepStrictEqual(history.publications[0].data, liveData), 'history publication data', history);
  check(history.offset === live.offset, 'history top offset is the last publication', history);
  check(history.epoch === initial.streamPosition.epoch, 'history epoch matches the subscribe epoch', history);
  summary.presence = { clients: presentIds, numClients: stats.numClients, numUsers: stats.numUsers };
  summary.history = {
    offsets: history.publications.map((p) => p.offset),
    offset: history.offset,
    epoch: history.epoch,
  };

  // --- e. abrupt drop of A, B publishes while A is away, A reconnects and recovers ----------------------------
  const lastOffset = subA.publications.at(-1).offset;
  const pubsBefore = subA.publications.length;
  const subscribedBefore = subA.subscribed.length;
  const socketsBefore = A.sockets.length;
  log(`A: last offset ${lastOffset}; terminating A's socket (abrupt TCP drop)`);
  const droppedAt = Date.now();
  A.sockets.at(-1).terminate();
  await until(() => A.client.state === 'connecting', 'A notices the drop and starts reconnecting');
  check(subA.sub.state === 'subscribing', 'A subscription went back to subscribing', subA.sub.state);

  const missedData = [];
  for (let i = 1; i <= MISSED_COUNT; i++) {
    const data = { text: 'missed', n: i };
    await subB.sub.publish(data);
    missedData.push(data);
  }
  const publishedAt = Date.now();
  log(`B: published ${MISSED_COUNT} messages while A is away (${publishedAt - droppedAt} ms after the drop)`);
  check(
    A.sockets.length === socketsBefore,
    'A had not reconnected before B finished publishing (reconnect backoff too short?)',
    { socketsBefore, sockets: A.sockets.length },
  );

  await until(
    () => subA.subscribed.length > subscribedBefore,
    'A reconnects and resubscribes by itself',
    MAX_RECONNECT_DELAY_MS + STEP_TIMEOUT_MS,
  );
  const reconnectedAfterMs = A.sockets.at(-1).createdAt - droppedAt;
  const resubscribed = subA.subscribed.at(-1);
  check(A.sockets.length === socketsBefore + 1, 'A reconnected over exactly one new socket', A.sockets.length);
  check(A.connected.length === 2, 'A connected a second time', A.connected.length);
  const recoverFrame = parseFrame(A.sockets.at(-1).sentFrames[0]);
  const recoverCmd = recoverFrame.find((cmd) => cmd.subscribe && cmd.subscribe.channel === channel);
  log(`A: resubscribe command ${JSON.stringify(recoverCmd)}`);
  check(recoverCmd !== undefined, 'resubscribe sent in the first frame of the new socket', recoverFrame);
  check(
    recoverCmd.subscribe.recover === true &&
      recoverCmd.subscribe.offset === lastOffset &&
      recoverCmd.subscribe.epoch === initial.streamPosition.epoch,
    'resubscribe asks to recover from the last offset and epoch',
    recoverCmd,
  );
  check(resubscribed.wasRecovering === true, 'subscribed ctx has wasRecovering: true', resubscribed);
  check(resubscribed.recovered === true, 'subscribed ctx has recovered: true', resubscribed);

  await until(() => subA.publications.length >= pubsBefore + MISSED_COUNT, `A receives the ${MISSED_COUNT} missed`);
  const missed = subA.publications.slice(pubsBefore);
  const missedOffsets = missed.map((p) => p.offset);
  const expectedOffsets = Array.from({ length: MISSED_COUNT }, (_, i) => lastOffset + 1 + i);
  check(isDeepStrictEqual(missedOffsets, expectedOffsets), 'missed offsets are last+1..last+N in order', {
    missedOffsets,
    expectedOffsets,
  });
  check(
    isDeepStrictEqual(
      missed.map((p) => p.data),
      missedData,
    ),
    'missed publications carry the published data in order',
    missed.map((p) => p.data),
  );
  check(
    missed.every((p) => p.info?.client === bClientId),
    'recovered publications carry the publisher info',
    missed.map((p) => p.info),
  );

  const afterData = { text: 'live after recovery', n: MISSED_COUNT + 1 };
  await subB.sub.publish(afterData);
  await until(() => subA.publications.length >= pubsBefore + MISSED_COUNT + 1, 'A receives a live publication');
  await sleep(200); // any duplicate delivery would show up within this window
  const afterRecovery = subA.publications.slice(pubsBefore);
  const allOffsets = subA.publications.map((p) => p.offset);
  check(afterRecovery.length === MISSED_COUNT + 1, 'no duplicates: exactly missed + 1 live publication', allOffsets);
  check(new Set(allOffsets).size === allOffsets.length, 'no offset delivered twice', allOffsets);
  const liveAfter = afterRecovery.at(-1);
  check(liveAfter.offset === lastOffset + MISSED_COUNT + 1, 'live publication continues the offsets', liveAfter);
  check(isDeepStrictEqual(liveAfter.data, afterData), 'live publication data', liveAfter);
  for (const record of extraSubsA) {
    check(record.sub.state === 'subscribed', `A is subscribed again to ${record.channel}`, record.sub.state);
  }

  summary.recovery = {
    lastOffset,
    wasRecovering: resubscribed.wasRecovering,
    recovered: resubscribed.recovered,
    missedOffsets,
    liveOffsetAfter: liveAfter.offset,
    allOffsets,
    reconnectedAfterMs,
    clientIds: A.connected.map((c) => c.client),
  };
  summary.clients = { a: aClientId, b: bClientId };
  summary.counts = {
    publicationsA: subA.publications.length,
    publicationsB: subB.publications.length,
    socketsA: A.sockets.length,
    socketsB: B.sockets.length,
    errorsA: A.errors.length,
    errorsB: B.errors.length,
  };

  // --- f. done ----------------------------------------------------------------------------------------------
  A.closing = true;
  B.closing = true;
  A.client.disconnect();
  B.client.disconnect();
  summary.ok = true;
  summary.durationMs = Date.now() - started;
  finished = true;
  clearTimeout(hardTimer);
  log('all checks passed');
  process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(0));
}

main().catch(fail);
