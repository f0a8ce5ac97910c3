// The example embedded application (examples/embedded_app.py) from the official centrifuge-js SDK:
//
//   node tests/js/embed.mjs ws://127.0.0.1:PORT/rt/connection/websocket 'user=<signed cookie>'
//
// Connects with the application's session cookie (as a browser would send it), calls the `rpc` methods
// "whoami", "echo" and an unknown one, sends an asynchronous `send` message and waits for its echo on the
// server-side channel personal:<user>. Prints one JSON summary line; tests/test_embed.py checks it.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const [url, cookie] = process.argv.slice(2);
const hardTimer = setTimeout(() => {
  process.stderr.write('[embed] hard timeout\n');
  process.exit(1);
}, 20000);

class CookieWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { headers: { Cookie: cookie } });
  }
}

const client = new Centrifuge(url, { websocket: CookieWebSocket });
const summary = {};
const echoed = new Promise((resolve) => {
  client.on('publication', (ctx) => resolve({ channel: ctx.channel, data: ctx.data }));
});
const connected = new Promise((resolve, reject) => {
  client.on('connected', resolve);
  client.on('disconnected', (ctx) => reject(new Error(`disconnected ${ctx.code} ${ctx.reason}`)));
});
client.connect();
try {
  const ctx = await connected;
  summary.client = ctx.client;
  summary.connectedData = ctx.data;
  process.stderr.write(`[embed] connected as ${ctx.client}\n`);
  summary.whoami = (await client.rpc('whoami', {})).data;
  summary.echo = (await client.rpc('echo', { n: 42 })).data;
  try {
    await client.rpc('no-such-method', {});
    summary.unknown = null;
  } catch (err) {
    summary.unknown = { code: err.code, message: err.message };
  }
  await client.send({ ping: 1 });
  summary.sendEcho = await echoed;
  process.stdout.write(JSON.stringify(summary) + '\n');
  client.disconnect();
  clearTimeout(hardTimer);
  process.exit(0);
} catch (err) {
  process.stderr.write(`[embed] ERROR: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
}
