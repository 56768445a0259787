/**
 * wsd.js — the browser client of wsd, the WebSocket push server.
 *
 * One plain ES module, no dependencies, no build step (wsd serves it at `/wsd.js`).
 * It speaks the protocol of docs/protocol.md and adds what every app needs on top of it:
 * automatic reconnect with exponential backoff and full jitter, resubscription of every
 * channel with `since` so each message is handed to the app once and in order, a `gap`
 * event when the server could not replay what was missed, connection tokens (sent in the first
 * message, never in the URL, and refreshed before they expire), and a liveness check that
 * replaces a silent link.
 *
 *     import { connect } from "/wsd.js";
 *     const client = connect("/ws", { getToken: () => fetch("/wsd-token").then((r) => r.text()) });
 *     client.addEventListener("gap", (e) => refetch(e.detail.channel));
 *     await client.subscribe("news", (data, meta) => render(data, meta.off));
 *     const off = await client.publish("news", { title: "hi" });
 *
 * @module wsd
 */

/**
 * Close codes after which the client does not reconnect: 1008 (the server's policy refused us: a bad
 * token, an expired one, flooding) and 4000 (the server disconnected this client on purpose).
 */
export const STOP_CODES = Object.freeze([1008, 4000]);

/** Defaults of the options of {@link connect}. */
export const DEFAULTS = Object.freeze({
  /** Backoff base in ms: the first retry waits up to this long. */
  backoffBase: 500,
  /** Backoff cap in ms: no retry waits longer. */
  backoffCap: 20000,
  /** A connection open this long (ms) counts as healthy: the next retry starts from the base again. */
  stableAfter: 5000,
  /** Publishes queued while disconnected, at most; more are rejected with code `queue_full`. */
  maxQueuedPublishes: 1000,
  /** ms before the token's expiry at which `getToken()` is called to refresh it. */
  refreshBefore: 30000,
  /** ms between attempts when a refresh failed (while the current token is still valid). */
  refreshRetry: 5000,
  /** ms without any frame from the server after which a `ping` is sent (the server pings every 25 s). */
  pingAfter: 35000,
  /** ms to wait, after that ping, for any frame before the link is given up and replaced. */
  pingTimeout: 10000,
});

/** The longest delay setTimeout takes (2^31-1 ms, ~24.8 days); longer ones are re-armed. */
const MAX_TIMER_DELAY = 2147483647;

/**
 * The `exp` claim (seconds since the epoch) of a JWT, read without verifying anything (the server
 * does that); `undefined` when the token is not a JWT with a numeric `exp`.
 *
 * @param {string} token
 * @returns {number | undefined}
 */
export function tokenExpiry(token) {
  try {
    const payload = String(token).split(".")[1];
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const exp = JSON.parse(new TextDecoder().decode(bytes)).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The reconnect delay: "full jitter" exponential backoff, uniform in [0, min(cap, base·2^attempt)).
 *
 * @param {number} attempt  0 for the first retry after a healthy connection, then 1, 2, …
 * @param {number} [base]   ms
 * @param {number} [cap]    ms
 * @param {() => number} [random]  a source of uniform numbers in [0, 1)
 * @returns {number} ms to wait
 */
export function backoffDelay(attempt, base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 52));
  return ceiling * random();
}

/**
 * A failed request: `code` is the server's error code (`bad_channel`, `publish_failed`, …, see
 * docs/protocol.md) or one of the client's own: `connection_closed` (a publish was sent but the
 * connection closed before its reply: it may or may not have been published), `client_closed`
 * (`close()` was called), `queue_full`.
 */
export class WsdError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "WsdError";
    this.code = code;
  }
}

/**
 * Connect to a wsd server. Returns at once: the client connects, and reconnects, on its own;
 * `subscribe` and `publish` may be called straight away (they are queued until the socket opens).
 *
 * @param {string} url  `ws://host:port/ws`; relative (`/ws`) and `http(s)://` URLs are resolved
 *   against the page's location.
 * @param {object} [options]
 * @param {string} [options.token]  a connection token (JWT), sent in the `auth` message right after
 *   the socket opens (never in the URL); used for the first connection, and for every one when there
 *   is no `getToken`
 * @param {() => (string | Promise<string>)} [options.getToken]  fetches a fresh token: awaited before
 *   every connection (but the first when `token` is given) and `refreshBefore` ms before the current
 *   token expires; a rejection counts as a failed connection attempt (retried with backoff), an empty
 *   result means "not allowed" (the client stops with an `unauthorized` event)
 * @param {number} [options.refreshBefore]  ms, default 30000
 * @param {number} [options.refreshRetry]  ms, default 5000
 * @param {number} [options.pingAfter]  ms of silence before a ping, default 35000
 * @param {number} [options.pingTimeout]  ms to wait for any frame after the ping, default 10000
 * @param {number} [options.backoffBase]  ms, default 500
 * @param {number} [options.backoffCap]   ms, default 20000
 * @param {number} [options.stableAfter]  ms, default 5000
 * @param {number} [options.maxQueuedPublishes]  default 1000
 * @param {typeof WebSocket} [options.WebSocket]  a WebSocket implementation (for tests; default the global)
 * @returns {WsdClient}
 */
export function connect(url, options = {}) {
  return new WsdClient(url, options);
}

/**
 * @typedef {object} MessageMeta
 * @property {string} channel
 * @property {number} off    the message's offset in its channel
 * @property {number} epoch  the channel's epoch (changes when the server lost the channel's history)
 * @property {string} [from]  the user (token `sub`) who published it, for a client's publish with
 *   auth on; absent for messages from the app's backend (the publish API)
 */

/**
 * @callback MessageHandler
 * @param {*} data  the published JSON value
 * @param {MessageMeta} meta
 */

/**
 * The client. An `EventTarget`; every event is a `CustomEvent` whose `detail` is described here:
 *
 * - `connecting` `{attempt, delay, url}` — a connection attempt is scheduled in `delay` ms
 *   (`attempt` 0 is the first connection).
 * - `open` `{reconnect}` — the socket is open; `reconnect` is false for the very first one.
 * - `closed` `{code, reason, wasClean, reconnect}` — the socket closed; `reconnect` says whether the
 *   client will try again (false after close code 1008 or `close()`).
 * - `subscribed` `{channel, off, epoch, recovered, worker}` — the server answered a (re)subscription;
 *   `worker` is the server's worker slot when the server says it, else `undefined`.
 * - `resumed` `{channels, worker}` — after a reconnect, every channel has been resubscribed
 *   (`channels`: the `subscribed` details); messages missed meanwhile follow, then live ones.
 * - `gap` `{channel, reason, from, to, epoch, previousOff, previousEpoch}` — messages `from`…`to`
 *   (inclusive, in epoch `epoch`) are lost for good; refetch the channel's state from the app.
 *   `reason`: `"history"` (the server no longer has them), `"epoch"` (the server lost the channel's
 *   history, offsets restarted; also anything after `previousOff` in `previousEpoch` is lost),
 *   `"hole"` (a delivery skipped offsets). Also raised for the server's `{"op":"gap",...}` (with
 *   `--cluster`, Redis lost the channel's messages): `from`…`to` are lost, deliveries continue after `to`.
 * - `authenticated` `{sub, exp, ttl, refresh}` — the server accepted the token (`refresh`: a
 *   refreshed one on the open connection).
 * - `unauthorized` `{code, msg, id}` — the server refused a token (the first one: it then closes
 *   with 1008 and the client stops; a refresh: the connection keeps its current token), or
 *   `getToken()` gave no token.
 * - `forbidden` `{code, msg, id, op, channel}` — a `sub` or `pub` was refused for lack of permission
 *   (the request's promise is rejected too; the connection stays open).
 * - `error` `{code, msg, id}` — an `err` reply that belongs to no pending request, or `token_failed`
 *   (`getToken()` threw; `msg` says what).
 * - `unsubscribed` `{channel}` — the server ended the subscription (its API's `unsubscribe`): no
 *   more messages of `channel`, and it is not resubscribed after a reconnect.
 *
 * `state` is one of `"connecting"`, `"open"`, `"closed"` (waiting to reconnect), `"stopped"`; while
 * `"open"`, `authenticated` says whether the server accepted the token (always true without one).
 */
export class WsdClient extends EventTarget {
  /**
   * @param {string} url
   * @param {object} [options]  see {@link connect}
   */
  constructor(url, options = {}) {
    super();
    this.url = buildUrl(url);
    this.options = { ...DEFAULTS, ...options };
    /** @type {"connecting"|"open"|"closed"|"stopped"} */
    this.state = "connecting";
    /** The server's worker slot serving this connection, when the server reports it. */
    this.worker = undefined;
    /** Whether the server accepted this connection's token (true without a token once open). */
    this.authenticated = false;
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._initialTokenUsed = false;
    this._authenticating = false;
    this._expiresAt = null;
    this._refreshTimer = null;
    this._livenessTimer = null;
    this._lastReceived = 0;
    this._pingSentAt = null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._socket = null;
    this._attempt = 0;
    this._connections = 0;
    this._timer = null;
    this._stableTimer = null;
    this._nextId = 1;
    /** @type {Map<string, Subscription>} */
    this._subscriptions = new Map();
    /** id → {resolve, reject, kind, channel} of requests sent on the current socket */
    this._pending = new Map();
    /** publishes waiting for an open socket: {channel, data, resolve, reject} */
    this._queue = [];
    /** channels whose resubscription after a reconnect is not answered yet */
    this._resuming = null;
    this.state = "connecting";
    // Start after the caller's synchronous code, so its listeners see the first `connecting`.
    queueMicrotask(() => {
      if (this.state !== "stopped") this._schedule(0, 0);
    });
  }

  /**
   * Subscribe to `channel`; `onMessage(data, meta)` gets each message once, in offset order.
   * The subscription lasts until `unsubscribe`: it survives reconnects (resubscribed with `since`).
   * Several handlers may share a channel.
   *
   * @param {string} channel
   * @param {MessageHandler} onMessage
   * @returns {Promise<{channel: string, off: number, epoch: number}>} the channel's position when the
   *   server first answered; rejected with a {@link WsdError} if the server refused the subscription.
   */
  subscribe(channel, onMessage) {
    let subscription = this._subscriptions.get(channel);
    if (subscription) {
      subscription.handlers.add(onMessage);
      return subscription.ready;
    }
    subscription = new Subscription(channel, onMessage);
    this._subscriptions.set(channel, subscription);
    if (this._ready()) this._sendSubscribe(subscription);
    return subscription.ready;
  }

  /**
   * Stop `onMessage` (or, without it, every handler) receiving `channel`; the last one gone, the
   * server is told. Resolves when the server confirmed, or at once when not connected (a closed
   * connection holds no subscriptions).
   *
   * @param {string} channel
   * @param {MessageHandler} [onMessage]
   * @returns {Promise<void>}
   */
  unsubscribe(channel, onMessage) {
    const subscription = this._subscriptions.get(channel);
    if (!subscription) return Promise.resolve();
    if (onMessage) subscription.handlers.delete(onMessage);
    else subscription.handlers.clear();
    if (subscription.handlers.size > 0) return Promise.resolve();
    this._subscriptions.delete(channel);
    this._resuming?.delete(channel);
    if (!subscription.settled) {
      subscription.settled = true;
      subscription.reject(new WsdError("unsubscribed", `unsubscribed from ${channel} before the server answered`));
    }
    if (!this._ready()) return Promise.resolve();
    return new Promise((resolve) => {
      // A connection that closes meanwhile drops the subscription anyway: resolve either way.
      this._request({ op: "unsub", ch: channel }, { kind: "unsub", resolve, reject: () => resolve() });
    });
  }

  /**
   * Publish `data` (any JSON value) to `channel`. Resolves with the offset it got.
   *
   * While disconnected, publishes are queued (up to `maxQueuedPublishes`) and sent, in order, once
   * the client is connected again and has resubscribed. A publish already sent when the connection
   * closes is rejected with code `connection_closed` and not resent: the server may have sequenced
   * it, and resending could publish it twice.
   *
   * @param {string} channel
   * @param {*} data
   * @returns {Promise<number>}
   */
  publish(channel, data) {
    return new Promise((resolve, reject) => {
      if (this.state === "stopped") {
        reject(new WsdError("client_closed", "the client is closed; connect() again"));
      } else if (this._ready() && this._resuming === null) {
        this._sendPublish(channel, data, resolve, reject);
      } else if (this._queue.length >= this.options.maxQueuedPublishes) {
        reject(new WsdError("queue_full", `${this._queue.length} publishes already wait for a connection`));
      } else {
        this._queue.push({ channel, data, resolve, reject });
      }
    });
  }

  /**
   * Close for good: no reconnect; queued and pending publishes are rejected (`client_closed`).
   *
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (this.state === "stopped") return;
    clearTimeout(this._timer);
    clearTimeout(this._stableTimer);
    this._clearConnectionTimers();
    const socket = this._socket;
    this._stop();
    if (socket) {
      this._detach(socket);
      socket.close(code, reason);
    }
    this._dispatch("closed", { code, reason, wasClean: true, reconnect: false });
  }

  /**
   * Listen to a state event (`connecting`, `open`, `closed`, `resumed`, `gap`, `subscribed`,
   * `error`) with a plain callback that gets the event's detail: a shorthand for
   * `addEventListener(type, (e) => handler(e.detail))`.
   *
   * @param {string} type
   * @param {(detail: object) => void} handler
   * @returns {() => void} a function that removes the listener
   */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** The subscribed channels. */
  get channels() {
    return [...this._subscriptions.keys()];
  }

  /** Open and past authentication: requests may be sent. */
  _ready() {
    return this.state === "open" && !this._authenticating;
  }

  // ---- connection life -------------------------------------------------------------------

  _schedule(attempt, delay) {
    this.state = "connecting";
    this._dispatch("connecting", { attempt, delay, url: this.url });
    this._timer = setTimeout(() => this._open(), delay);
  }

  _open() {
    this._timer = null;
    // The first connection may use the `token` option; every other one asks getToken() afresh.
    const fetchToken = this._getToken !== null && (this._initialTokenUsed || this._token === null);
    if (!fetchToken) {
      this._openSocket();
      return;
    }
    Promise.resolve()
      .then(() => this._getToken())
      .then(
        (token) => {
          if (this.state === "stopped") return;
          if (!token) {
            this._stopUnauthorized("getToken() gave no token");
            return;
          }
          this._token = token;
          this._openSocket();
        },
        (error) => {
          if (this.state === "stopped") return;
          this._dispatch("error", { code: "token_failed", msg: `getToken() failed: ${error?.message ?? error}` });
          this._reconnectLater();
        },
      );
  }

  _openSocket() {
    let socket;
    try {
      socket = new this._WebSocket(this.url);
    } catch (error) {
      // A malformed URL: retrying cannot help.
      this._stop();
      this._dispatch("closed", { code: 1006, reason: String(error), wasClean: false, reconnect: false });
      return;
    }
    this._socket = socket;
    socket.onopen = () => this._onOpen(socket);
    socket.onmessage = (event) => this._onMessage(event.data);
    socket.onclose = (event) => this._onClose(socket, event);
  }

  _onOpen(socket) {
    if (socket !== this._socket) return;
    const reconnect = this._connections > 0;
    this._connections += 1;
    this.state = "open";
    this._stableTimer = setTimeout(() => {
      this._attempt = 0;
    }, this.options.stableAfter);
    this._lastReceived = Date.now();
    this._pingSentAt = null;
    this._armLiveness(socket);
    this._dispatch("open", { reconnect });
    if (socket !== this._socket) return; // a listener closed the client
    if (this._token === null) {
      this.authenticated = true;
      this._startSession(reconnect);
    } else {
      this._authenticate(reconnect);
    }
  }

  /** The `auth` message goes first; everything else waits for its `ok`. */
  _authenticate(reconnect) {
    const token = this._token;
    this._initialTokenUsed = true;
    this._authenticating = true;
    this.authenticated = false;
    this._request(
      { op: "auth", token },
      {
        kind: "auth",
        resolve: (reply) => {
          this._authenticating = false;
          this.authenticated = true;
          this._onAuthenticated(reply, token, false);
          this._startSession(reconnect);
        },
        reject: (error) => {
          this._authenticating = false;
          if (error.code === "connection_closed" || error.code === "client_closed") return;
          if (error.code === "unknown_op") {
            // A server from before connection tokens: it has no auth to pass.
            this.authenticated = true;
            this._startSession(reconnect);
          } else if (error.code === "unauthorized") {
            this._dispatch("unauthorized", { code: error.code, msg: error.message, id: error.id });
            // The server closes with 1008 next, and the client stops.
          } else {
            this._dispatch("error", { code: error.code, msg: error.message, id: error.id });
          }
        },
      },
    );
  }

  /** After the socket opened and the token (if any) was accepted: (re)subscribe, then publish. */
  _startSession(reconnect) {
    this._resuming = reconnect ? new Map() : null;
    for (const subscription of this._subscriptions.values()) {
      if (reconnect) this._resuming.set(subscription.channel, null);
      this._sendSubscribe(subscription);
    }
    if (reconnect) this._maybeResumed();
    else this._flushQueue();
  }

  _onAuthenticated(reply, token, refresh) {
    this._dispatch("authenticated", { sub: reply.sub, exp: reply.exp, ttl: reply.ttl, refresh });
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    // Seconds left by the server's clock when it says (immune to a wrong clock here), else the
    // token's own exp against this clock.
    let expiresIn;
    if (typeof reply.ttl === "number") expiresIn = reply.ttl * 1000;
    else {
      const exp = typeof reply.exp === "number" ? reply.exp : tokenExpiry(token);
      if (exp === undefined) return;
      expiresIn = exp * 1000 - Date.now();
    }
    this._expiresAt = Date.now() + expiresIn;
    if (this._getToken !== null) this._armRefresh(this._socket, Math.max(0, expiresIn - this.options.refreshBefore));
  }

  _armRefresh(socket, delay) {
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      if (delay > MAX_TIMER_DELAY) this._armRefresh(socket, delay - MAX_TIMER_DELAY);
      else this._refresh(socket);
    }, Math.min(delay, MAX_TIMER_DELAY));
  }

  /** Send `auth` again with a fresh token on the open connection (the server keeps the sub). */
  _refresh(socket) {
    if (socket !== this._socket || this.state !== "open") return;
    Promise.resolve()
      .then(() => this._getToken())
      .then(
        (token) => {
          if (socket !== this._socket || this.state !== "open") return;
          if (!token) {
            // Nothing to refresh with: the server closes the connection at exp (1008, token expired).
            this._dispatch("unauthorized", { code: "unauthorized", msg: "getToken() gave no token", id: undefined });
            return;
          }
          this._token = token;
          this._request(
            { op: "auth", token },
            {
              kind: "auth",
              resolve: (reply) => this._onAuthenticated(reply, token, true),
              reject: (error) => {
                if (error.code === "connection_closed" || error.code === "client_closed") return;
                const type = error.code === "unauthorized" ? "unauthorized" : "error";
                this._dispatch(type, { code: error.code, msg: error.message, id: error.id });
                this._retryRefresh(socket);
              },
            },
          );
        },
        (error) => {
          if (socket !== this._socket || this.state !== "open") return;
          this._dispatch("error", { code: "token_failed", msg: `getToken() failed: ${error?.message ?? error}` });
          this._retryRefresh(socket);
        },
      );
  }

  _retryRefresh(socket) {
    if (this._expiresAt !== null && Date.now() + this.options.refreshRetry < this._expiresAt) {
      this._armRefresh(socket, this.options.refreshRetry);
    }
  }

  // ---- liveness: a link that stays silent gets a ping; no answer, and it is replaced ------

  _armLiveness(socket) {
    clearTimeout(this._livenessTimer);
    this._livenessTimer = null;
    if (!(this.options.pingAfter > 0)) return;
    const due =
      this._pingSentAt === null
        ? this._lastReceived + this.options.pingAfter
        : this._pingSentAt + this.options.pingTimeout;
    this._livenessTimer = setTimeout(() => this._checkLiveness(socket), Math.max(0, due - Date.now()));
  }

  _checkLiveness(socket) {
    this._livenessTimer = null;
    if (socket !== this._socket) return;
    const now = Date.now();
    if (this._pingSentAt !== null) {
      if (now - this._pingSentAt >= this.options.pingTimeout) {
        const silent = Math.round((now - this._lastReceived) / 1000);
        this._abandon(socket, `no frame from the server for ${silent} s, not even a reply to ping`);
        return;
      }
    } else if (now - this._lastReceived >= this.options.pingAfter) {
      this._pingSentAt = now;
      // Any frame proves the link alive, so the reply (ok, or err from an older server) needs no handling.
      this._request({ op: "ping" }, { kind: "ping", resolve: () => {}, reject: () => {} });
    }
    this._armLiveness(socket);
  }

  /** Give up a dead link at once (its close event may take minutes), then reconnect as after a drop. */
  _abandon(socket, reason) {
    this._onClose(socket, { code: 1006, reason, wasClean: false });
    try {
      socket.close();
    } catch {
      // Closing a dead socket may throw in some implementations; it is detached already.
    }
  }

  _clearConnectionTimers() {
    clearTimeout(this._refreshTimer);
    clearTimeout(this._livenessTimer);
    this._refreshTimer = this._livenessTimer = null;
    this._pingSentAt = null;
    this._authenticating = false;
    this.authenticated = false;
  }

  _onClose(socket, event) {
    if (socket !== this._socket) return;
    this._detach(socket);
    this._socket = null;
    clearTimeout(this._stableTimer);
    this._clearConnectionTimers();
    this._resuming = null;
    for (const subscription of this._subscriptions.values()) subscription.pending = false;
    this._failPending("connection_closed", `the connection closed (code ${event.code}) before the server answered`);
    const reconnect = !STOP_CODES.includes(event.code);
    if (!reconnect) this._stop();
    else this.state = "closed";
    this._dispatch("closed", { code: event.code, reason: event.reason, wasClean: event.wasClean, reconnect });
    if (reconnect) this._reconnectLater();
  }

  _reconnectLater() {
    const delay = backoffDelay(this._attempt, this.options.backoffBase, this.options.backoffCap);
    this._attempt += 1;
    this._schedule(this._attempt, delay);
  }

  _stopUnauthorized(msg) {
    this._dispatch("unauthorized", { code: "unauthorized", msg, id: undefined });
    if (this.state === "stopped") return; // a listener closed the client
    this._stop();
    this._dispatch("closed", { code: 1008, reason: msg, wasClean: false, reconnect: false });
  }

  _detach(socket) {
    socket.onopen = socket.onmessage = socket.onclose = null;
  }

  _stop() {
    this.state = "stopped";
    this._socket = null;
    this._clearConnectionTimers();
    this._resuming = null;
    this._failPending("client_closed", "the client is closed");
    for (const item of this._queue.splice(0)) item.reject(new WsdError("client_closed", "the client is closed"));
    for (const subscription of this._subscriptions.values()) {
      if (!subscription.settled) {
        subscription.settled = true;
        subscription.reject(new WsdError("client_closed", "the client is closed"));
      }
    }
  }

  _failPending(code, message) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const request of pending) request.reject(new WsdError(code, message));
  }

  // ---- requests ---------------------------------------------------------------------------

  _request(message, handlers) {
    const id = this._nextId++;
    this._pending.set(id, handlers);
    this._socket.send(JSON.stringify({ ...message, id }));
    return id;
  }

  _sendSubscribe(subscription) {
    const message = { op: "sub", ch: subscription.channel };
    if (subscription.epoch !== null) message.since = { off: subscription.last, epoch: subscription.epoch };
    subscription.pending = true;
    this._request(message, {
      kind: "sub",
      channel: subscription.channel,
      resolve: (reply) => this._onSubscribed(subscription, reply),
      reject: (error) => {
        subscription.pending = false;
        if (error.code === "connection_closed" || error.code === "client_closed") return; // retried on reconnect
        if (this._subscriptions.get(subscription.channel) !== subscription) return; // unsubscribed meanwhile
        this._subscriptions.delete(subscription.channel);
        this._resuming?.delete(subscription.channel);
        if (!subscription.settled) {
          subscription.settled = true;
          subscription.reject(error);
        }
        this._maybeResumed();
      },
    });
  }

  _sendPublish(channel, data, resolve, reject) {
    this._request({ op: "pub", ch: channel, data }, { kind: "pub", channel, resolve: (reply) => resolve(reply.off), reject });
  }

  _flushQueue() {
    for (const item of this._queue.splice(0)) this._sendPublish(item.channel, item.data, item.resolve, item.reject);
  }

  _maybeResumed() {
    if (this._resuming === null) return;
    for (const detail of this._resuming.values()) if (detail === null) return;
    const channels = [...this._resuming.values()];
    this._resuming = null;
    this._dispatch("resumed", { channels, worker: this.worker });
    this._flushQueue();
  }

  // ---- incoming ---------------------------------------------------------------------------

  _onMessage(text) {
    this._lastReceived = Date.now(); // any frame shows the link is alive
    this._pingSentAt = null;
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.op === "msg" || message.op === "gap") {
      const subscription = this._subscriptions.get(message.ch);
      if (!subscription) return;
      if (subscription.pending) subscription.early.push(message);
      else if (message.op === "gap") this._lost(subscription, message);
      else this._deliver(subscription, message);
    } else if (message.op === "ok" || message.op === "err") {
      const request = this._pending.get(message.id);
      if (!request) {
        if (message.op === "err") this._dispatch("error", { code: message.code, msg: message.msg, id: message.id });
        return;
      }
      this._pending.delete(message.id);
      if (message.op === "ok") {
        request.resolve(message);
        return;
      }
      const error = new WsdError(message.code, message.msg);
      error.id = message.id;
      const detail = { code: message.code, msg: message.msg, id: message.id };
      if (message.code === "forbidden") this._dispatch("forbidden", { ...detail, op: request.kind, channel: request.channel });
      else if (message.code === "unauthorized" && request.kind !== "auth") this._dispatch("unauthorized", detail);
      request.reject(error);
    } else if (message.op === "unsub") {
      // The server ended the subscription: forget it, so a reconnect does not resubscribe it.
      const subscription = this._subscriptions.get(message.ch);
      if (!subscription) return;
      this._subscriptions.delete(message.ch);
      this._resuming?.delete(message.ch);
      this._dispatch("unsubscribed", { channel: message.ch });
    }
  }

  _onSubscribed(subscription, reply) {
    if (this._subscriptions.get(subscription.channel) !== subscription) return; // unsubscribed meanwhile
    subscription.pending = false;
    if (reply.worker !== undefined) this.worker = reply.worker;
    const previousOff = subscription.last;
    const previousEpoch = subscription.epoch;
    let recovered;
    if (previousEpoch === null) {
      recovered = false; // a new subscription: everything after reply.off is delivered
      subscription.last = reply.off;
    } else if (reply.recovered === true) {
      recovered = true; // the server replays previousOff+1 … reply.off, then live messages
    } else if (reply.epoch === previousEpoch && reply.off === previousOff) {
      recovered = true; // nothing was published meanwhile
    } else {
      recovered = false;
      const epochChanged = reply.epoch !== previousEpoch;
      const from = epochChanged ? 1 : previousOff + 1;
      this._dispatch("gap", {
        channel: subscription.channel,
        reason: epochChanged ? "epoch" : "history",
        from,
        to: reply.off,
        epoch: reply.epoch,
        previousOff,
        previousEpoch,
      });
      subscription.last = reply.off;
    }
    subscription.epoch = reply.epoch;
    const detail = { channel: subscription.channel, off: reply.off, epoch: reply.epoch, recovered, worker: reply.worker };
    this._dispatch("subscribed", detail);
    if (!subscription.settled) {
      subscription.settled = true;
      subscription.resolve({ channel: subscription.channel, off: reply.off, epoch: reply.epoch });
    }
    for (const message of subscription.early.splice(0)) {
      if (message.op === "gap") this._lost(subscription, message);
      else this._deliver(subscription, message);
    }
    if (this._resuming?.has(subscription.channel)) {
      this._resuming.set(subscription.channel, detail);
      this._maybeResumed();
    }
  }

  /** The server says the channel's messages up to `off` of `epoch` are lost (its cross-host bus lost
   * them): a gap event, and deliveries continue after `off`. */
  _lost(subscription, message) {
    if (typeof message.off !== "number" || typeof message.epoch !== "number") return;
    const previousOff = subscription.last;
    const previousEpoch = subscription.epoch;
    const epochChanged = message.epoch !== previousEpoch;
    if (!epochChanged && message.off <= previousOff) return; // nothing this client had not seen
    this._dispatch("gap", {
      channel: subscription.channel,
      reason: epochChanged ? "epoch" : "history",
      from: epochChanged ? 1 : previousOff + 1,
      to: message.off,
      epoch: message.epoch,
      previousOff,
      previousEpoch,
    });
    subscription.epoch = message.epoch;
    subscription.last = message.off;
  }

  _deliver(subscription, message) {
    const off = message.off;
    if (typeof off !== "number" || off <= subscription.last) return; // already delivered
    if (off > subscription.last + 1) {
      this._dispatch("gap", {
        channel: subscription.channel,
        reason: "hole",
        from: subscription.last + 1,
        to: off - 1,
        epoch: subscription.epoch,
        previousOff: subscription.last,
        previousEpoch: subscription.epoch,
      });
    }
    subscription.last = off;
    const meta = { channel: subscription.channel, off, epoch: subscription.epoch };
    if (typeof message.from === "string") meta.from = message.from;
    for (const handler of [...subscription.handlers]) {
      try {
        handler(message.data, meta);
      } catch (error) {
        // One failing handler must not cost the others their message, nor break the client.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _dispatch(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** One channel's subscription: its handlers and the last offset handed to them. */
class Subscription {
  constructor(channel, handler) {
    this.channel = channel;
    this.handlers = new Set([handler]);
    /** epoch and offset of the last message delivered (or the position at subscription) */
    this.epoch = null;
    this.last = 0;
    /** a `sub` is in flight on the current socket; deliveries wait in `early` until its reply */
    this.pending = false;
    this.early = [];
    this.settled = false;
    this.ready = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.ready.catch(() => {}); // an unawaited refusal is not an unhandled rejection
  }
}

// The token never goes in the URL: URLs end up in access logs, proxies' logs and browser history.
function buildUrl(url) {
  const base = globalThis.location?.href;
  const resolved = base ? new URL(url, base) : new URL(url);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.toString();
}
