/**
 * gust.js: a small browser client for Gust, or any server speaking Centrifugo's client protocol v2 (JSON over
 * WebSocket). An ES module with no dependencies and no build step. The API mirrors the official centrifuge-js SDK
 * (v5), but this is an independent and much smaller implementation: WebSocket only, no deltas, no map subscriptions.
 *
 *   import { Client } from "/static/gust.js";
 *   const client = new Client("ws://localhost:8000/connection/websocket", { token });
 *   const sub = client.newSubscription("chat:lobby");
 *   sub.on("publication", (ctx) => console.log(ctx.data));
 *   sub.subscribe();
 *   client.connect();
 *
 * On the wire every command is one JSON object with an increasing integer `id`; a text frame carries one or more
 * of them, one per line. The server joins replies, pushes and pings (`{}`) into frames the same way.
 * @module gust
 */

/** Codes of errors made by this client itself (server errors keep the server's codes, 100 and up). */
export const errorCodes = Object.freeze({
  timeout: 1, transportClosed: 2, clientDisconnected: 3, connectToken: 5, refreshToken: 6, subscriptionUnsubscribed: 7,
  subscribeToken: 8, subRefreshToken: 9, transportWriteError: 10, connectionClosed: 11,
});
/** Codes of client `connecting` / `disconnected` events raised by the client (server codes are 3000 and up). */
export const connectingCodes = Object.freeze({
  connectCalled: 0, transportClosed: 1, noPing: 2, subscribeTimeout: 3, unsubscribeError: 4,
});
export const disconnectedCodes = Object.freeze({ disconnectCalled: 0, messageSizeLimit: 3, unauthorized: 3500 });
/** Codes of subscription `subscribing` / `unsubscribed` events raised by the client (server codes are 2000 and up). */
export const subscribingCodes = Object.freeze({ subscribeCalled: 0, transportClosed: 1 });
export const unsubscribedCodes = Object.freeze({ unsubscribeCalled: 0, unauthorized: 1 });

const DEFAULTS = {
  token: "", getToken: null, data: undefined, name: "gust-js", version: "",
  minReconnectDelay: 500, maxReconnectDelay: 20000, timeout: 10000, maxServerPingDelay: 10000, debug: false,
};
const { timeout: TIMEOUT, connectionClosed: CLOSED } = errorCodes;

/** What promises of this module reject with: an Error carrying the protocol's `{code, message, temporary}`. */
export class GustError extends Error {
  /** @param {number} code @param {string} message @param {boolean} [temporary] */
  constructor(code, message, temporary = false) {
    super(message);
    this.name = "GustError";
    // Enumerable, so that the error survives JSON.stringify like a plain protocol error object.
    Object.defineProperty(this, "message", { value: message, enumerable: true, writable: true });
    this.code = code;
    this.temporary = temporary;
  }
}

/** Full-jitter exponential backoff in ms: random(0, min(max, min * 2^attempt)), but at least 100. */
export function backoff(attempt, min, max) {
  return Math.max(100, Math.floor(Math.random() * Math.min(max, min * 2 ** Math.min(attempt, 31))));
}

/** Close and disconnect codes after which the client must not reconnect: 3500-3999 and 4500-4999. */
const isTerminal = (code) => (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);
const ttlMs = (ttl) => Math.min((ttl || 0) * 1000, 2147483647);
/** Whether an error is worth retrying: the client's own (codes below 100), 100 "internal", and temporary ones. */
const retryable = (err) => err.code <= 100 || !!err.temporary;

/** Call an app callback that returns a promise; one that throws becomes a rejected promise. */
function callAsync(fn) {
  try { return Promise.resolve(fn()); } catch (e) { return Promise.reject(e); }
}

/** A ClientInfo of the wire (`conn_info`, `chan_info`) in the SDK's camelCase shape. */
function infoContext(info) {
  if (!info) return undefined;
  const ctx = { client: info.client, user: info.user };
  if (info.conn_info !== undefined) ctx.connInfo = info.conn_info;
  if (info.chan_info !== undefined) ctx.chanInfo = info.chan_info;
  return ctx;
}

function publicationContext(channel, pub) {
  const ctx = { channel, data: pub.data };
  if (pub.info) ctx.info = infoContext(pub.info);
  if (pub.offset > 0) ctx.offset = pub.offset;
  if (pub.tags) ctx.tags = pub.tags;
  return ctx;
}

function subscribedContext(channel, r) {
  const ctx = { channel, recoverable: !!r.recoverable, positioned: !!r.positioned,
    wasRecovering: !!r.was_recovering, recovered: !!r.recovered };
  if (ctx.positioned || ctx.recoverable) ctx.streamPosition = { offset: r.offset || 0, epoch: r.epoch || "" };
  if (r.data !== undefined) ctx.data = r.data;
  return ctx;
}

/** A minimal event emitter. A listener that throws is reported with console.error and never stops the others. */
class Emitter {
  constructor() { this._listeners = new Map(); }

  /** Add a listener. @param {string} event @param {(ctx: object) => void} fn */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, []);
    this._listeners.get(event).push(fn);
    return this;
  }

  /** Remove one listener; or all of `event` (no `fn`); or all (no arguments). */
  off(event, fn) {
    if (event === undefined) this._listeners.clear();
    else if (fn === undefined) this._listeners.delete(event);
    else {
      const list = this._listeners.get(event) || [];
      const i = list.findIndex((l) => l === fn || l._once === fn);
      if (i >= 0) list.splice(i, 1);
    }
    return this;
  }

  /** Add a listener removed after its first call. */
  once(event, fn) {
    const wrapper = (ctx) => { this.off(event, wrapper); fn(ctx); };
    wrapper._once = fn;
    return this.on(event, wrapper);
  }

  _emit(event, ctx) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try { fn(ctx); } catch (e) { console.error(`gust: a "${event}" listener threw`, e); }
    }
  }

  /** Set the `state` property, emitting a `state` event; false when it was that state already. */
  _setState(state, extra) {
    const oldState = this.state;
    if (oldState === state) return false;
    this.state = state;
    this._emit("state", { ...extra, newState: state, oldState });
    return true;
  }
}

/** Promises waiting for a state (connected, subscribed), settled all together. */
class Waiters {
  constructor() { this._all = new Set(); }

  wait(timeout) {
    return new Promise((resolve, reject) => {
      const w = { resolve, reject, timer: null };
      if (timeout > 0) {
        w.timer = setTimeout(() => this._all.delete(w) && reject(new GustError(TIMEOUT, "timeout")), timeout);
      }
      this._all.add(w);
    });
  }

  /** Resolve every waiter, or reject them all with `error`. */
  settle(error) {
    const all = [...this._all];
    this._all.clear();
    for (const w of all) {
      clearTimeout(w.timer);
      if (error) w.reject(error); else w.resolve();
    }
  }
}

/**
 * A connection to the server that reconnects with backoff until `disconnect()` or a terminal close code.
 * Events: state, connecting, connected, disconnected, error, message; and for server-side subscriptions
 * subscribing, subscribed, unsubscribed, publication, join, leave (their ctx has `channel`).
 */
export class Client extends Emitter {
  /**
   * @param {string} endpoint a ws:// or wss:// URL such as "ws://localhost:8000/connection/websocket"
   * @param {object} [options]
   * @param {string} [options.token] the connection token (JWT)
   * @param {(ctx: object) => Promise<string>} [options.getToken] a new token when needed (expired, refresh due);
   *   "" means unauthorized (terminal disconnect 3500), a rejection is retried with backoff
   * @param {*} [options.data] connect data
   * @param {string} [options.name] client name sent in connect ("gust-js")
   * @param {string} [options.version] client version sent in connect
   * @param {number} [options.minReconnectDelay] ms (500), the backoff's base
   * @param {number} [options.maxReconnectDelay] ms (20000), the backoff's cap
   * @param {number} [options.timeout] ms to wait for a reply (10000); a timeout reconnects
   * @param {number} [options.maxServerPingDelay] ms (10000) of silence tolerated after a ping interval
   * @param {boolean} [options.debug] log to console.debug
   */
  constructor(endpoint, options = {}) {
    super();
    if (!/^wss?:\/\//.test(endpoint)) throw new Error("gust: the endpoint must be a ws:// or wss:// URL");
    this._endpoint = endpoint;
    this._opts = { ...DEFAULTS, ...options };
    /** @type {"disconnected" | "connecting" | "connected"} */
    this.state = "disconnected";
    /** The ID the server gave the current connection (null while not connected). */
    this.clientId = null;
    this._token = this._opts.token || "";
    this._refreshRequired = false; // the token expired: get a new one before connecting
    this._ws = null;
    this._open = false; // the socket is open: commands can be written
    this._batch = null; // commands collected while the socket opens, written as one frame
    this._lastId = 0;
    this._calls = new Map(); // command id -> {method, ok, fail, timer}
    this._connected = new Waiters();
    this._subs = new Map();
    this._serverSubs = new Map(); // channel -> {offset, epoch, recoverable}
    this._attempts = 0;
    this._refreshAttempts = 0;
    this._gen = 0; // bumped by every teardown: continuations of an earlier connection check it
    this._timers = {}; // reconnect, connect, ping, refresh
    this._ping = 0;
    this._pong = false;
  }

  /** Start connecting (does nothing unless disconnected). */
  connect() {
    if (this.state !== "disconnected") return;
    this._attempts = 0;
    const gen = this._gen;
    this._setState("connecting");
    this._emit("connecting", { code: connectingCodes.connectCalled, reason: "connect called" });
    if (gen === this._gen && this.state === "connecting") this._startAttempt();
  }

  /** Disconnect for good: no reconnects until `connect()` is called again. */
  disconnect() { this._disconnect(disconnectedCodes.disconnectCalled, "disconnect called", false); }

  /** Resolves once connected; rejects when disconnected for good, or after `timeout` ms if given. */
  ready(timeout) {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "disconnected") {
      return Promise.reject(new GustError(errorCodes.clientDisconnected, "client disconnected"));
    }
    return this._connected.wait(timeout);
  }

  /**
   * A new client-side subscription (call its `subscribe()`). Options: recover (default true: positioned and
   * recoverable, recovering on resubscribe), joinLeave, data, token, getToken(ctx {channel}), since {offset, epoch},
   * minResubscribeDelay, maxResubscribeDelay.
   * @returns {Subscription}
   */
  newSubscription(channel, options = {}) {
    if (this._subs.has(channel)) throw new Error(`gust: a subscription to ${channel} already exists`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    return sub;
  }

  /** @returns {Subscription | null} */
  getSubscription(channel) { return this._subs.get(channel) || null; }

  /** Unsubscribe `sub` and forget it: it can't be subscribed again. */
  removeSubscription(sub) {
    if (!sub) return;
    sub.unsubscribe();
    sub._removed = true;
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
  }

  /** Every client-side subscription, by channel. */
  subscriptions() { return Object.fromEntries(this._subs); }

  /** Publish `data` to `channel`: resolves to `{}`. */
  publish(channel, data) {
    return this._request("publish", { channel, data }, () => ({}));
  }

  /** Call an RPC method of the server: resolves to `{data}`. */
  rpc(method, data) {
    return this._request("rpc", { method, data }, (r) => ({ data: r.data }));
  }

  /** Online presence: `{clients: {clientId: {client, user, connInfo?, chanInfo?}}}`. */
  presence(channel) {
    return this._request("presence", { channel }, (r) => ({
      clients: Object.fromEntries(Object.entries(r.presence || {}).map(([id, info]) => [id, infoContext(info)])),
    }));
  }

  /** `{numClients, numUsers}` of a channel. */
  presenceStats(channel) {
    return this._request("presence_stats", { channel }, (r) => ({
      numClients: r.num_clients || 0, numUsers: r.num_users || 0 }));
  }

  /**
   * History of a channel: `{publications, epoch, offset}`; without a `limit` only the stream position.
   * @param {string} channel
   * @param {{limit?: number, since?: {offset: number, epoch: string}, reverse?: boolean}} [opts]
   */
  history(channel, opts = {}) {
    const req = { channel };
    if (opts.limit !== undefined) req.limit = opts.limit;
    if (opts.since) req.since = { offset: opts.since.offset || 0, epoch: opts.since.epoch || "" };
    if (opts.reverse) req.reverse = true;
    return this._request("history", req, (r) => ({
      publications: (r.publications || []).map((p) => publicationContext(channel, p)),
      epoch: r.epoch || "", offset: r.offset || 0,
    }));
  }

  /** Send asynchronous data to the server (no reply). */
  async send(data) {
    await this._whenConnected();
    if (!this._write([{ send: { data } }])) {
      throw new GustError(errorCodes.transportWriteError, "transport write error");
    }
  }

  // --- connection lifecycle -----------------------------------------------------------------------------------

  _debug(...args) { if (this._opts.debug) console.debug("gust:", ...args); }

  _setTimer(name, ms, fn) {
    this._clearTimer(name);
    this._timers[name] = setTimeout(() => { delete this._timers[name]; fn(); }, ms);
  }

  _clearTimer(name) {
    clearTimeout(this._timers[name]);
    delete this._timers[name];
  }

  /** One connection attempt: get a token when one is needed, then open the socket. */
  _startAttempt() {
    const gen = this._gen;
    const getToken = this._opts.getToken;
    if (!this._refreshRequired && (this._token || !getToken)) return this._openTransport();
    if (!getToken) return this._disconnect(disconnectedCodes.unauthorized, "unauthorized", false);
    callAsync(() => getToken({})).then((token) => {
      if (gen !== this._gen || this.state !== "connecting") return;
      if (!token) return this._disconnect(disconnectedCodes.unauthorized, "unauthorized", false);
      [this._token, this._refreshRequired] = [token, false];
      this._openTransport();
    }, (e) => {
      if (gen !== this._gen || this.state !== "connecting") return;
      this._emit("error", { type: "connectToken", error: new GustError(errorCodes.connectToken, String(e)) });
      if (gen === this._gen && this.state === "connecting") this._scheduleReconnect();
    });
  }

  _scheduleReconnect() {
    const delay = backoff(this._attempts++, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
    this._debug("reconnect in", delay, "ms");
    this._setTimer("reconnect", delay, () => this._startAttempt());
  }

  _openTransport() {
    let ws;
    try {
      ws = new WebSocket(this._endpoint);
    } catch (e) {
      return this._transportFailed(String(e));
    }
    this._ws = ws;
    let opened = false;
    this._setTimer("connect", this._opts.timeout, () => this._transportFailed("connect timeout"));
    ws.onopen = () => { opened = true; this._onOpen(); };
    ws.onmessage = (ev) => this._onData(ev.data);
    ws.onclose = (ev) => this._onClose(ev, opened);
  }

  /** Detach and close the socket: none of its later events is seen. */
  _closeTransport() {
    const ws = this._ws;
    [this._ws, this._open, this._batch] = [null, false, null];
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(); } catch (e) { this._debug("closing the socket failed", e); }
  }

  _transportFailed(message) {
    this._disconnect(connectingCodes.transportClosed, "transport closed", true);
    this._emit("error", { type: "transport", error: new GustError(errorCodes.transportClosed, message) });
  }

  /** The socket is open: connect, and subscribe every pending subscription, in one frame. */
  _onOpen() {
    [this._open, this._batch] = [true, []];
    const req = {};
    if (this._token) req.token = this._token;
    if (this._opts.data !== undefined) req.data = this._opts.data;
    if (this._opts.name) req.name = this._opts.name;
    if (this._opts.version) req.version = this._opts.version;
    const subs = {}; // recovery positions of server-side subscriptions
    for (const [channel, s] of this._serverSubs) {
      if (!s.recoverable) continue;
      subs[channel] = { recover: true };
      if (s.offset) subs[channel].offset = s.offset;
      if (s.epoch) subs[channel].epoch = s.epoch;
    }
    if (Object.keys(subs).length) req.subs = subs;
    const token = this._token;
    this._call("connect", req, (r) => this._onConnected(r), (e) => this._onConnectError(e, token));
    for (const sub of this._subs.values()) if (sub._resubTimer === null) sub._trySubscribe();
    const batch = this._batch;
    this._batch = null;
    this._write(batch);
  }

  _onConnected(result) {
    if (this.state !== "connecting") return;
    this._clearTimer("connect");
    [this._attempts, this._refreshAttempts, this._refreshRequired] = [0, 0, false];
    [this.clientId, this._ping, this._pong] = [result.client, result.ping || 0, result.pong === true];
    const gen = this._gen;
    this._setState("connected");
    if (gen !== this._gen) return;
    if (result.expires) this._setTimer("refresh", ttlMs(result.ttl), () => this._refresh());
    this._armPingWatchdog();
    this._emit("connected", { client: result.client, version: result.version || "", data: result.data,
      transport: "websocket" });
    if (gen !== this._gen) return;
    this._connected.settle();
    // Server-side subscriptions: subscribed events, then recovered publications, then the ones that are gone.
    const subs = result.subs || {};
    for (const [channel, r] of Object.entries(subs)) this._addServerSub(channel, r);
    for (const [channel, r] of Object.entries(subs)) {
      for (const pub of r.publications || []) if (gen === this._gen) this._onServerPublication(channel, pub);
    }
    for (const channel of [...this._serverSubs.keys()]) {
      if (!(channel in subs) && this._serverSubs.delete(channel)) this._emit("unsubscribed", { channel });
    }
  }

  _onConnectError(err, token) {
    // A closed transport or a timeout has been dealt with by the teardown.
    if (this.state !== "connecting" || err.code === CLOSED || err.code === TIMEOUT) return;
    if (err.code === 109 && token === this._token) this._refreshRequired = true;
    if (err.code !== 109 && !retryable(err)) return this._disconnect(err.code, err.message, false);
    this._disconnect(err.code, err.message, true);
    this._emit("error", { type: "connect", error: err });
  }

  _onClose(ev, opened) {
    let [code, reason, reconnect] = [ev.code || 0, ev.reason || "", !isTerminal(ev.code)];
    if (code === 1009) [code, reason, reconnect] = [disconnectedCodes.messageSizeLimit, "message size limit", false];
    else if (code < 3000) [code, reason] = [connectingCodes.transportClosed, "transport closed"];
    this._debug("socket closed", ev.code, ev.reason);
    const failedAttempt = this.state === "connecting" && !opened;
    this._disconnect(code, reason, reconnect);
    if (failedAttempt) {
      this._emit("error", { type: "transport", error: new GustError(errorCodes.transportClosed, "transport closed") });
    }
  }

  /**
   * Tear the connection down, then reconnect with backoff (state connecting) or stay disconnected. Pending
   * commands fail with code 11 "connection closed"; subscribed subscriptions go back to subscribing.
   */
  _disconnect(code, reason, reconnect) {
    if (code === 3014) this._invalidateState();
    if (this.state === "disconnected") return;
    const [prev, next] = [this.state, reconnect ? "connecting" : "disconnected"];
    const gen = ++this._gen;
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
    this._closeTransport();
    this.clientId = null;
    const calls = [...this._calls.values()];
    this._calls.clear();
    for (const call of calls) {
      clearTimeout(call.timer);
      call.fail(new GustError(CLOSED, "connection closed"));
    }
    this._setState(next);
    if (prev === "connected") {
      for (const sub of this._subs.values()) {
        if (sub.state === "subscribed") sub._setSubscribing(subscribingCodes.transportClosed, "transport closed");
      }
      for (const channel of this._serverSubs.keys()) this._emit("subscribing", { channel });
    }
    if (!reconnect) this._connected.settle(new GustError(errorCodes.clientDisconnected, "client disconnected"));
    if (gen !== this._gen) return; // a listener has moved on: disconnect() or connect() again
    if (prev !== next) this._emit(reconnect ? "connecting" : "disconnected", { code, reason });
    if (reconnect && gen === this._gen && this.state === "connecting") this._scheduleReconnect();
  }

  /** Close code 3014 "state invalidated": drop the token and every recovery position. */
  _invalidateState() {
    if (this._opts.getToken) [this._token, this._refreshRequired] = ["", true];
    for (const sub of this._subs.values()) sub._invalidate();
    for (const s of this._serverSubs.values()) [s.offset, s.epoch] = [0, "_"];
  }

  /** Nothing heard for the ping interval plus maxServerPingDelay: the connection is dead, reconnect. */
  _armPingWatchdog() {
    if (this.state !== "connected" || !this._ping || !this._opts.maxServerPingDelay) return;
    this._setTimer("ping", this._ping * 1000 + this._opts.maxServerPingDelay, () => {
      this._disconnect(connectingCodes.noPing, "no ping", true);
    });
  }

  /** Refresh the connection token before it expires (scheduled from a connect or refresh result's ttl). */
  _refresh() {
    const gen = this._gen;
    const retry = () => gen === this._gen && this._setTimer("refresh", backoff(this._refreshAttempts++,
      this._opts.minReconnectDelay, this._opts.maxReconnectDelay), () => this._refresh());
    if (!this._opts.getToken) return; // the server will close with 3005, and the reconnect ends unauthorized
    callAsync(() => this._opts.getToken({})).then((token) => {
      if (gen !== this._gen) return;
      if (!token) return this._disconnect(disconnectedCodes.unauthorized, "unauthorized", false);
      this._token = token;
      this._call("refresh", { token }, (r) => {
        this._refreshAttempts = 0;
        if (r.expires) this._setTimer("refresh", ttlMs(r.ttl), () => this._refresh());
      }, (e) => {
        if (gen !== this._gen || e.code === CLOSED || e.code === TIMEOUT) return;
        if (!retryable(e)) return this._disconnect(e.code, e.message, false);
        this._emit("error", { type: "refresh", error: e });
        retry();
      });
    }, (e) => {
      if (gen !== this._gen) return;
      this._emit("error", { type: "refreshToken", error: new GustError(errorCodes.refreshToken, String(e)) });
      retry();
    });
  }

  // --- commands and incoming data -------------------------------------------------------------------------

  /** Write commands as one frame, one per line (or add them to the frame being collected). */
  _write(cmds) {
    if (!cmds.length) return true;
    if (this._batch) return this._batch.push(...cmds) > 0;
    if (!this._open) return false;
    try {
      const frame = cmds.map((c) => JSON.stringify(c)).join("\n");
      this._debug("send", frame);
      this._ws.send(frame);
      return true;
    } catch (e) {
      this._debug("write failed", e);
      return false;
    }
  }

  /**
   * Send one command: then exactly one of `ok(result)` and `fail(GustError)` is called. Without a reply within
   * `timeout` it fails with code 1 "timeout", and the connection is re-established.
   */
  _call(method, params, ok, fail) {
    if (!this._open) return fail(new GustError(CLOSED, "connection closed"));
    const id = ++this._lastId;
    const timer = setTimeout(() => {
      if (!this._calls.delete(id)) return;
      fail(new GustError(TIMEOUT, "timeout"));
      const code = method === "subscribe" ? connectingCodes.subscribeTimeout : connectingCodes.transportClosed;
      this._disconnect(code, `${method} timeout`, true);
    }, this._opts.timeout);
    this._calls.set(id, { method, ok, fail, timer });
    if (!this._write([{ id, [method]: params }])) {
      this._calls.delete(id);
      clearTimeout(timer);
      fail(new GustError(errorCodes.transportWriteError, "transport write error"));
    }
  }

  /** Wait until connected (at most `timeout`): calls made while connecting are queued, like centrifuge-js. */
  _whenConnected() {
    return this.state === "connected" ? Promise.resolve() : this._connected.wait(this._opts.timeout);
  }

  /** A public call: a promise of `map(result)`, rejected with a GustError. */
  async _request(method, params, map) {
    await this._whenConnected();
    return new Promise((resolve, reject) => this._call(method, params, (r) => resolve(map(r)), reject));
  }

  /** One text frame: one or more replies, pushes and pings, a JSON object per line. */
  _onData(data) {
    if (typeof data !== "string") return; // the JSON protocol uses text frames only
    this._debug("received", data);
    this._armPingWatchdog();
    const ws = this._ws;
    for (const line of data.split("\n")) {
      if (this._ws !== ws) return; // a reply or a listener closed this connection: the rest is stale
      if (!line.trim()) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (e) {
        this._debug("undecodable line", line, e);
        return this._disconnect(connectingCodes.transportClosed, "bad data", true);
      }
      if (msg.id) this._onReply(msg);
      else if (msg.push) this._onPush(msg.push);
      else if (this._pong) this._write([{}]); // a ping: answer with a pong
    }
  }

  _onReply(msg) {
    const call = this._calls.get(msg.id);
    if (!call) return;
    this._calls.delete(msg.id);
    clearTimeout(call.timer);
    if (msg.error) call.fail(new GustError(msg.error.code, msg.error.message || "", !!msg.error.temporary));
    else call.ok(msg[call.method] || {});
  }

  _onPush(push) {
    const channel = push.channel;
    const sub = channel === undefined ? undefined : this._subs.get(channel);
    const live = sub !== undefined && sub.state === "subscribed";
    const serverSide = sub === undefined && this._serverSubs.has(channel);
    if (push.pub) {
      if (live) sub._onPublication(push.pub);
      else if (serverSide) this._onServerPublication(channel, push.pub);
    } else if (push.join || push.leave) {
      const kind = push.join ? "join" : "leave";
      const ctx = { channel, info: infoContext(push[kind].info) };
      (live ? sub : serverSide ? this : null)?._emit(kind, ctx);
    } else if (push.unsubscribe) {
      const { code, reason } = push.unsubscribe;
      if (live) sub._onUnsubscribePush(code, reason);
      else if (serverSide && this._serverSubs.delete(channel)) this._emit("unsubscribed", { channel, code, reason });
    } else if (push.subscribe) {
      this._addServerSub(channel, push.subscribe);
    } else if (push.message) {
      this._emit("message", { data: push.message.data });
    } else if (push.disconnect) {
      const { code, reason } = push.disconnect;
      this._disconnect(code, reason || "", !isTerminal(code));
    } // `connect` and `refresh` pushes belong to unidirectional transports: ignored.
  }

  _addServerSub(channel, r) {
    this._serverSubs.set(channel, { offset: r.offset || 0, epoch: r.epoch || "", recoverable: !!r.recoverable });
    this._emit("subscribed", subscribedContext(channel, r));
  }

  _onServerPublication(channel, pub) {
    this._emit("publication", publicationContext(channel, pub));
    const s = this._serverSubs.get(channel);
    if (s && pub.offset > 0) s.offset = pub.offset;
  }
}

/**
 * A client-side subscription to one channel, made by `client.newSubscription(channel, options)`.
 * Events: state, subscribing, subscribed, unsubscribed, error, publication, join, leave.
 */
export class Subscription extends Emitter {
  /** @param {Client} client @param {string} channel @param {object} options see Client.newSubscription */
  constructor(client, channel, options = {}) {
    super();
    this.channel = channel;
    /** @type {"unsubscribed" | "subscribing" | "subscribed"} */
    this.state = "unsubscribed";
    this._client = client;
    this._opts = { recover: true, joinLeave: false, data: undefined, token: "", getToken: null,
      minResubscribeDelay: 500, maxResubscribeDelay: 20000, ...options };
    this._token = this._opts.token || "";
    // The stream position; recovered from on resubscribe when the last subscribe result said `recoverable`.
    [this._recoverable, this._offset, this._epoch] = [false, 0, ""];
    const since = options.since;
    if (since) [this._recoverable, this._offset, this._epoch] = [true, since.offset || 0, since.epoch || ""];
    this._inflight = false; // a subscribe command (or the token for it) is under way
    this._flow = 0; // bumped by every unsubscribe: replies to an earlier subscribe are ignored
    [this._attempts, this._refreshAttempts] = [0, 0];
    [this._resubTimer, this._refreshTimer] = [null, null];
    this._subscribed = new Waiters();
    this._removed = false;
  }

  /** Start subscribing; resubscribes by itself after reconnects until `unsubscribe()`. */
  subscribe() {
    if (this._removed) throw new Error(`gust: the subscription to ${this.channel} was removed`);
    if (this.state !== "unsubscribed") return;
    this._attempts = 0;
    this._setSubscribing(subscribingCodes.subscribeCalled, "subscribe called");
  }

  /** Unsubscribe, keeping the stream position: a later `subscribe()` recovers from it. */
  unsubscribe() { this._setUnsubscribed(unsubscribedCodes.unsubscribeCalled, "unsubscribe called", true); }

  /** Resolves once subscribed; rejects when unsubscribed, or after `timeout` ms if given. */
  ready(timeout) {
    if (this.state === "subscribed") return Promise.resolve();
    if (this.state === "unsubscribed") {
      return Promise.reject(new GustError(errorCodes.subscriptionUnsubscribed, "unsubscribed"));
    }
    return this._subscribed.wait(timeout);
  }

  /** Publish `data` to this channel once subscribed. */
  async publish(data) {
    await this.ready(this._client._opts.timeout);
    return this._client.publish(this.channel, data);
  }

  /** Online presence of this channel, see Client.presence. */
  async presence() {
    await this.ready(this._client._opts.timeout);
    return this._client.presence(this.channel);
  }

  /** `{numClients, numUsers}` of this channel. */
  async presenceStats() {
    await this.ready(this._client._opts.timeout);
    return this._client.presenceStats(this.channel);
  }

  /** History of this channel, see Client.history. */
  async history(opts = {}) {
    await this.ready(this._client._opts.timeout);
    return this._client.history(this.channel, opts);
  }

  _setState(state) { return super._setState(state, { channel: this.channel }); }

  _clearTimers() {
    clearTimeout(this._resubTimer);
    clearTimeout(this._refreshTimer);
    [this._resubTimer, this._refreshTimer] = [null, null];
  }

  _setSubscribing(code, reason) {
    if (this.state === "subscribing") return;
    this._clearTimers();
    if (!this._setState("subscribing") || this.state !== "subscribing") return;
    this._emit("subscribing", { channel: this.channel, code, reason });
    this._trySubscribe();
  }

  _setUnsubscribed(code, reason, sendUnsubscribe) {
    if (this.state === "unsubscribed") return;
    const client = this._client;
    if (sendUnsubscribe && (this.state === "subscribed" || this._inflight) && client._open) {
      client._call("unsubscribe", { channel: this.channel }, () => {}, (e) => {
        // The server may still hold the subscription: only a new connection makes sure it doesn't.
        if (e.code >= 100 && client.state === "connected") {
          client._disconnect(connectingCodes.unsubscribeError, "unsubscribe error", true);
        }
      });
    }
    this._flow++;
    this._inflight = false;
    this._clearTimers();
    this._subscribed.settle(new GustError(errorCodes.subscriptionUnsubscribed, "unsubscribed"));
    if (this._setState("unsubscribed") && this.state === "unsubscribed") {
      this._emit("unsubscribed", { channel: this.channel, code, reason });
    }
  }

  /** Send the subscribe command when the socket is open, getting a token first if needed. */
  _trySubscribe() {
    if (this.state !== "subscribing" || this._inflight || !this._client._open) return;
    this._inflight = true;
    const [flow, getToken] = [this._flow, this._opts.getToken];
    if (this._token || !getToken) return this._sendSubscribe();
    callAsync(() => getToken({ channel: this.channel })).then((token) => {
      if (flow !== this._flow) return;
      this._inflight = false;
      if (!token) return this._setUnsubscribed(unsubscribedCodes.unauthorized, "unauthorized", false);
      this._token = token;
      this._trySubscribe();
    }, (e) => {
      if (flow !== this._flow) return;
      this._inflight = false;
      const error = new GustError(errorCodes.subscribeToken, String(e));
      this._emit("error", { channel: this.channel, type: "subscribeToken", error });
      this._scheduleResubscribe();
    });
  }

  _sendSubscribe() {
    const req = { channel: this.channel };
    if (this._token) req.token = this._token;
    if (this._opts.data !== undefined) req.data = this._opts.data;
    if (this._opts.recover) {
      [req.positioned, req.recoverable] = [true, true];
      if (this._recoverable) {
        req.recover = true;
        if (this._offset) req.offset = this._offset;
        if (this._epoch) req.epoch = this._epoch;
      }
    }
    if (this._opts.joinLeave) req.join_leave = true;
    const flow = this._flow;
    this._client._call("subscribe", req, (r) => this._onSubscribed(r, flow), (e) => this._onSubscribeError(e, flow));
  }

  _onSubscribed(result, flow) {
    if (flow !== this._flow || this.state !== "subscribing") return;
    [this._inflight, this._attempts] = [false, 0];
    this._recoverable = !!result.recoverable;
    if (this._recoverable) [this._offset, this._epoch] = [result.offset || 0, result.epoch || ""];
    const live = () => flow === this._flow && this.state === "subscribed";
    this._setState("subscribed");
    if (live()) this._emit("subscribed", subscribedContext(this.channel, result));
    if (live()) this._subscribed.settle();
    for (const pub of result.publications || []) if (live()) this._onPublication(pub);
    if (result.expires && live()) this._refreshTimer = setTimeout(() => this._refresh(), ttlMs(result.ttl));
  }

  _onSubscribeError(err, flow) {
    if (flow !== this._flow) return;
    this._inflight = false;
    // The connection closed or timed out: the client reconnects and this subscribes again.
    if (this.state !== "subscribing" || err.code === CLOSED || err.code === TIMEOUT) return;
    if (err.code === 109) this._token = ""; // expired: the next attempt gets a new one from getToken
    if (err.code === 109 && !this._opts.getToken) {
      return this._setUnsubscribed(unsubscribedCodes.unauthorized, "unauthorized", false);
    }
    if (err.code !== 109 && !retryable(err)) return this._setUnsubscribed(err.code, err.message, false);
    this._emit("error", { channel: this.channel, type: "subscribe", error: err });
    this._scheduleResubscribe();
  }

  _scheduleResubscribe() {
    if (this.state !== "subscribing") return;
    clearTimeout(this._resubTimer);
    const delay = backoff(this._attempts++, this._opts.minResubscribeDelay, this._opts.maxResubscribeDelay);
    this._resubTimer = setTimeout(() => { this._resubTimer = null; this._trySubscribe(); }, delay);
  }

  _onPublication(pub) {
    this._emit("publication", publicationContext(this.channel, pub));
    if (pub.offset > 0) this._offset = pub.offset;
  }

  /** An unsubscribe push: codes below 2500 end the subscription, the others mean "subscribe again". */
  _onUnsubscribePush(code, reason) {
    if (code < 2500) return this._setUnsubscribed(code, reason, false);
    if (code === 2502) this._invalidate();
    this._setSubscribing(code, reason);
  }

  /** The server says our state is invalid: drop the token, and make the next recovery fail on purpose. */
  _invalidate() {
    if (this._opts.getToken) this._token = "";
    if (this._recoverable) [this._offset, this._epoch] = [0, "_"];
  }

  /** Refresh the subscription token before it expires (scheduled from a subscribe or sub_refresh result's ttl). */
  _refresh() {
    const [flow, client, gen, getToken] = [this._flow, this._client, this._client._gen, this._opts.getToken];
    const current = () => flow === this._flow && gen === client._gen && this.state === "subscribed";
    const retry = () => current() && (this._refreshTimer = setTimeout(() => this._refresh(),
      backoff(this._refreshAttempts++, this._opts.minResubscribeDelay, this._opts.maxResubscribeDelay)));
    const error = (type, err) => this._emit("error", { channel: this.channel, type, error: err });
    if (!getToken) return; // the server will unsubscribe (2501) and the resubscribe ends unauthorized
    callAsync(() => getToken({ channel: this.channel })).then((token) => {
      if (!current()) return;
      if (!token) return this._setUnsubscribed(unsubscribedCodes.unauthorized, "unauthorized", true);
      this._token = token;
      client._call("sub_refresh", { channel: this.channel, token }, (r) => {
        if (!current()) return;
        this._refreshAttempts = 0;
        if (r.expires) this._refreshTimer = setTimeout(() => this._refresh(), ttlMs(r.ttl));
      }, (e) => {
        if (!current() || e.code === CLOSED || e.code === TIMEOUT) return;
        if (!retryable(e)) return this._setUnsubscribed(e.code, e.message, true);
        error("refresh", e);
        retry();
      });
    }, (e) => {
      if (!current()) return;
      error("refreshToken", new GustError(errorCodes.subRefreshToken, String(e)));
      retry();
    });
  }
}
