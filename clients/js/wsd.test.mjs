// Unit tests of wsd.js against a scripted fake WebSocket: `node --test clients/js/`.
// The browser tests (tests/browser/) run the same client against a real wsd in Chromium.
import assert from "node:assert/strict";
import { mock, test } from "node:test";

import { backoffDelay, connect, DEFAULTS, STOP_CODES, tokenExpiry } from "../../server/static/wsd.js";

/** A WebSocket stand-in: records what the client sends; the test plays the server. */
class FakeSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.instances.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "", wasClean: true });
  }
  // --- the test's side ---
  serverOpen() {
    this.readyState = 1;
    this.onopen?.({});
  }
  serverSend(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  serverClose(code) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "", wasClean: code !== 1006 });
  }
  lastSent(op) {
    return this.sent.filter((m) => m.op === op).at(-1);
  }
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** A JWT-shaped token (the client reads `exp`, never the signature). */
function jwt(payload) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${encode({ alg: "HS256", typ: "JWT" })}.${encode(payload)}.c2lnbmF0dXJl`;
}

const EVENT_TYPES = ["connecting", "open", "closed", "subscribed", "resumed", "gap", "error", "authenticated",
  "unauthorized", "forbidden", "unsubscribed"];

async function newClient(options = {}) {
  FakeSocket.instances = [];
  const events = [];
  const client = connect("ws://wsd.test/ws", { WebSocket: FakeSocket, backoffBase: 1, backoffCap: 2, ...options });
  for (const type of EVENT_TYPES) {
    client.addEventListener(type, (event) => events.push({ type, ...event.detail }));
  }
  while (FakeSocket.instances.length === 0) await tick(1);
  return { client, events, socket: () => FakeSocket.instances.at(-1) };
}

test("backoff is full jitter below min(cap, base * 2**attempt)", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(20000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 500, 20000, () => 0), 0);
    assert.ok(backoffDelay(attempt, 500, 20000, () => 0.999999) < ceiling);
    assert.ok(backoffDelay(attempt, 500, 20000, () => 0.999999) > ceiling * 0.99);
    const sample = backoffDelay(attempt);
    assert.ok(sample >= 0 && sample < ceiling, `${sample} outside [0, ${ceiling})`);
  }
  assert.equal(backoffDelay(1e6, 500, 20000, () => 0.5), 10000);
  assert.equal(DEFAULTS.backoffBase, 500);
  assert.equal(DEFAULTS.backoffCap, 20000);
});

test("the token goes in the auth message, never in the URL, and requests wait for its ok", async () => {
  const token = jwt({ sub: "user:1", exp: 2e9 });
  const { socket, client, events } = await newClient({ token });
  assert.equal(socket().url, "ws://wsd.test/ws");
  const ready = client.subscribe("news", () => {});
  const published = client.publish("news", 1);
  socket().serverOpen();
  assert.deepEqual(socket().sent, [{ op: "auth", token, id: socket().sent[0].id }]);
  assert.equal(client.authenticated, false);
  socket().serverSend({ op: "ok", id: socket().sent[0].id, sub: "user:1", exp: 2e9, ttl: 600 });
  assert.equal(client.authenticated, true);
  assert.deepEqual(events.find((e) => e.type === "authenticated"), {
    type: "authenticated", sub: "user:1", exp: 2e9, ttl: 600, refresh: false,
  });
  const sub = socket().lastSent("sub");
  socket().serverSend({ op: "ok", id: sub.id, off: 0, epoch: 1 });
  await ready;
  socket().serverSend({ op: "ok", id: socket().lastSent("pub").id, off: 1 });
  assert.equal(await published, 1);
  client.close();
});

test("subscribe before open is queued and resolves with the position", async () => {
  const { client, socket } = await newClient();
  const ready = client.subscribe("news", () => {});
  assert.equal(socket().sent.length, 0);
  socket().serverOpen();
  const sub = socket().lastSent("sub");
  assert.deepEqual(sub, { op: "sub", ch: "news", id: sub.id });
  socket().serverSend({ op: "ok", id: sub.id, off: 7, epoch: 3, worker: 1 });
  assert.deepEqual(await ready, { channel: "news", off: 7, epoch: 3 });
  assert.equal(client.worker, 1);
  client.close();
});

test("duplicates and old offsets are dropped; a hole is a gap event", async () => {
  const { client, socket, events } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push([data, meta.off]));
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 2, epoch: 1 });
  for (const off of [1, 2, 3, 3, 4, 2, 6, 6, 7]) socket().serverSend({ op: "msg", ch: "c", off, data: `m${off}` });
  assert.deepEqual(seen.map(([, off]) => off), [3, 4, 6, 7]);
  const gaps = events.filter((e) => e.type === "gap");
  assert.deepEqual(gaps, [{ type: "gap", channel: "c", reason: "hole", from: 5, to: 5, epoch: 1, previousOff: 4, previousEpoch: 1 }]);
  client.close();
});

test("a message a user published carries from in its meta; the backend's do not", async () => {
  const { client, socket } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push(meta));
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 0, epoch: 1 });
  socket().serverSend({ op: "msg", ch: "c", off: 1, data: "hi", from: "42" });
  socket().serverSend({ op: "msg", ch: "c", off: 2, data: "news" });
  assert.deepEqual(seen, [{ channel: "c", off: 1, epoch: 1, from: "42" }, { channel: "c", off: 2, epoch: 1 }]);
  client.close();
});

test("reconnect resubscribes with since, replays once, in order, then flushes queued publishes", async () => {
  const { client, socket, events } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push(meta.off));
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 0, epoch: 9 });
  for (const off of [1, 2]) socket().serverSend({ op: "msg", ch: "c", off, data: off });
  const first = socket();
  first.serverClose(1012);
  assert.equal(client.state, "connecting");
  const published = client.publish("c", "while away");
  await tick(10);
  const second = socket();
  assert.notEqual(second, first);
  second.serverOpen();
  assert.equal(second.lastSent("pub"), undefined, "publish waits for the resubscription");
  const sub = second.lastSent("sub");
  assert.deepEqual(sub.since, { off: 2, epoch: 9 });
  // A delivery racing ahead of the reply is held back until the reply, then deduplicated.
  second.serverSend({ op: "msg", ch: "c", off: 2, data: 2 });
  second.serverSend({ op: "ok", id: sub.id, off: 4, epoch: 9, recovered: true });
  for (const off of [3, 4, 5]) second.serverSend({ op: "msg", ch: "c", off, data: off });
  const pub = second.lastSent("pub");
  assert.equal(pub.data, "while away");
  second.serverSend({ op: "ok", id: pub.id, off: 6 });
  assert.equal(await published, 6);
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  const types = events.map((e) => e.type);
  assert.deepEqual(types.slice(types.indexOf("closed")), ["closed", "connecting", "open", "subscribed", "resumed"]);
  assert.equal(events.find((e) => e.type === "resumed").channels[0].recovered, true);
  assert.equal(events.filter((e) => e.type === "gap").length, 0);
  client.close();
});

test("a new epoch on resubscription is a gap, and delivery continues from the new offset", async () => {
  const { client, socket, events } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push([meta.epoch, meta.off]));
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 10, epoch: 1 });
  socket().serverSend({ op: "msg", ch: "c", off: 11, data: null });
  socket().serverClose(1001);
  await tick(10);
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 3, epoch: 2, recovered: false });
  socket().serverSend({ op: "msg", ch: "c", off: 3, data: null });
  socket().serverSend({ op: "msg", ch: "c", off: 4, data: null });
  assert.deepEqual(seen, [[1, 11], [2, 4]]);
  const gap = events.find((e) => e.type === "gap");
  assert.deepEqual(gap, { type: "gap", channel: "c", reason: "epoch", from: 1, to: 3, epoch: 2, previousOff: 11, previousEpoch: 1 });
  client.close();
});

test("history gone in the same epoch is a gap over the missed offsets", async () => {
  const { client, socket, events } = await newClient();
  client.subscribe("c", () => {});
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 5, epoch: 1 });
  socket().serverClose(1006);
  await tick(10);
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 90, epoch: 1, recovered: false });
  const gap = events.find((e) => e.type === "gap");
  assert.equal(gap.reason, "history");
  assert.equal(gap.from, 6);
  assert.equal(gap.to, 90);
  client.close();
});

test("the server's gap message is a gap event, and deliveries continue after its offset", async () => {
  const { client, socket, events } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push([meta.epoch, meta.off]));
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 4, epoch: 7 });
  socket().serverSend({ op: "msg", ch: "c", off: 5, data: "a" });
  socket().serverSend({ op: "gap", ch: "c", off: 2, epoch: 9 }); // Redis restarted empty: a new epoch
  socket().serverSend({ op: "msg", ch: "c", off: 2, data: "old" }); // up to the gap's offset: not delivered
  socket().serverSend({ op: "msg", ch: "c", off: 3, data: "b" });
  socket().serverSend({ op: "gap", ch: "c", off: 10, epoch: 9 }); // the same epoch, messages 4..10 lost
  socket().serverSend({ op: "msg", ch: "c", off: 11, data: "c" });
  assert.deepEqual(seen, [[7, 5], [9, 3], [9, 11]]);
  assert.deepEqual(events.filter((e) => e.type === "gap"), [
    { type: "gap", channel: "c", reason: "epoch", from: 1, to: 2, epoch: 9, previousOff: 5, previousEpoch: 7 },
    { type: "gap", channel: "c", reason: "history", from: 4, to: 10, epoch: 9, previousOff: 3, previousEpoch: 9 },
  ]);
  client.close();
});

test("a gap message that arrives while the subscription is being answered waits its turn", async () => {
  const { client, socket, events } = await newClient();
  const seen = [];
  client.subscribe("c", (data, meta) => seen.push(meta.off));
  socket().serverOpen();
  const sub = socket().lastSent("sub");
  socket().serverSend({ op: "gap", ch: "c", off: 20, epoch: 3 });
  socket().serverSend({ op: "msg", ch: "c", off: 21, data: "x" });
  assert.deepEqual(seen, []);
  socket().serverSend({ op: "ok", id: sub.id, off: 12, epoch: 2 });
  assert.deepEqual(seen, [21]);
  assert.equal(events.filter((e) => e.type === "gap").length, 1);
  client.close();
});

test("close 1008 stops; pending publishes are rejected on close", async () => {
  const { client, socket, events } = await newClient();
  socket().serverOpen();
  const published = client.publish("c", 1);
  socket().serverClose(1008);
  await assert.rejects(published, { code: "connection_closed" });
  await tick(10);
  assert.equal(client.state, "stopped");
  assert.equal(FakeSocket.instances.length, 1, "no reconnect after 1008");
  assert.equal(events.at(-1).type, "closed");
  assert.equal(events.at(-1).reconnect, false);
  await assert.rejects(client.publish("c", 2), { code: "client_closed" });
});

test("an err reply rejects the request; a refused subscription is forgotten", async () => {
  const { client, socket } = await newClient();
  socket().serverOpen();
  const ready = client.subscribe("bad channel", () => {});
  const sub = socket().lastSent("sub");
  socket().serverSend({ op: "err", id: sub.id, code: "bad_channel", msg: "invalid" });
  await assert.rejects(ready, { name: "WsdError", code: "bad_channel" });
  assert.deepEqual(client.channels, []);
  client.close();
});

test("unsubscribe tells the server once the last handler is gone", async () => {
  const { client, socket } = await newClient();
  const first = () => {};
  const second = () => {};
  socket().serverOpen();
  client.subscribe("c", first);
  client.subscribe("c", second);
  assert.equal(socket().sent.filter((m) => m.op === "sub").length, 1);
  await client.unsubscribe("c", first);
  assert.equal(socket().lastSent("unsub"), undefined);
  const done = client.unsubscribe("c", second);
  socket().serverSend({ op: "ok", id: socket().lastSent("unsub").id });
  await done;
  assert.deepEqual(client.channels, []);
  client.close();
});

test("a subscription the server ends is forgotten: no more messages, no resubscribe", async () => {
  const { client, socket, events } = await newClient();
  const received = [];
  socket().serverOpen();
  const ready = client.subscribe("c", (data) => received.push(data));
  client.subscribe("d", () => {});
  for (const sub of socket().sent.filter((m) => m.op === "sub")) {
    socket().serverSend({ op: "ok", id: sub.id, off: 0, epoch: 1 });
  }
  await ready;
  socket().serverSend({ op: "msg", ch: "c", off: 1, data: "before" });
  socket().serverSend({ op: "unsub", ch: "c" });
  socket().serverSend({ op: "msg", ch: "c", off: 2, data: "after" });
  assert.deepEqual(received, ["before"]);
  assert.deepEqual(events.filter((e) => e.type === "unsubscribed"), [{ type: "unsubscribed", channel: "c" }]);
  assert.deepEqual(client.channels, ["d"]);
  socket().serverClose(1012);
  await tick(10);
  socket().serverOpen();
  assert.deepEqual(socket().sent.filter((m) => m.op === "sub").map((m) => m.ch), ["d"]);
  client.close();
});

test("backoff grows while connections fail and resets after a stable connection", async () => {
  const { client, socket, events } = await newClient({ stableAfter: 20 });
  for (let i = 0; i < 3; i++) {
    socket().serverClose(1006);
    await tick(10);
  }
  const attempts = events.filter((e) => e.type === "connecting").map((e) => e.attempt);
  assert.deepEqual(attempts, [0, 1, 2, 3]);
  socket().serverOpen();
  await tick(40);
  socket().serverClose(1012);
  assert.equal(events.filter((e) => e.type === "connecting").at(-1).attempt, 1);
  client.close();
});

test("on() hands the event's detail to a plain callback and can be removed", async () => {
  const { client, socket } = await newClient();
  const seen = [];
  const off = client.on("open", (detail) => seen.push(detail));
  socket().serverOpen();
  assert.deepEqual(seen, [{ reconnect: false }]);
  off();
  client.close();
});

// ---- tokens, permissions, liveness (timers and Date mocked: time moves only when a test says) ----

const START = Date.UTC(2027, 0, 1);
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A client on mocked timers; `advance(ms)` moves time and lets promises settle. */
async function mockedClient(t, options = {}) {
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: START });
  t.after(() => mock.timers.reset());
  FakeSocket.instances = [];
  const events = [];
  const client = connect("ws://wsd.test/ws", { WebSocket: FakeSocket, backoffBase: 1, backoffCap: 2, ...options });
  for (const type of EVENT_TYPES) client.addEventListener(type, (event) => events.push({ type, ...event.detail }));
  const advance = async (ms = 0) => {
    await flush();
    mock.timers.tick(ms);
    await flush();
  };
  t.after(() => client.close());
  await advance(0);
  return { client, events, advance, socket: () => FakeSocket.instances.at(-1) };
}

/** The server's side of a successful first auth. */
function acceptAuth(socket, { sub = "user:1", exp, ttl } = {}) {
  const auth = socket.lastSent("auth");
  socket.serverSend({ op: "ok", id: auth.id, sub, exp, ttl });
  return auth;
}

test("tokenExpiry reads exp from a JWT payload, and nothing from anything else", () => {
  assert.equal(tokenExpiry(jwt({ sub: "u", exp: 1700000000 })), 1700000000);
  assert.equal(tokenExpiry(jwt({ sub: "ü?>~", exp: 1.5 })), 1.5); // UTF-8 and base64url's - and _
  for (const token of ["", "abc", "a.b.c", jwt({ exp: "soon" }), jwt({ sub: "u" }), jwt([1]), null]) {
    assert.equal(tokenExpiry(token), undefined, String(token));
  }
});

test("getToken is awaited before every connection; a static token serves the first one only", async (t) => {
  const issued = [];
  const getToken = async () => {
    issued.push(jwt({ sub: "user:1", exp: START / 1000 + 3600, n: issued.length }));
    return issued.at(-1);
  };
  const { socket, advance } = await mockedClient(t, { getToken });
  assert.equal(issued.length, 1, "fetched before the first connection");
  socket().serverOpen();
  assert.equal(socket().lastSent("auth").token, issued[0]);
  acceptAuth(socket());
  socket().serverClose(1012);
  await advance(10);
  assert.equal(issued.length, 2);
  socket().serverOpen();
  assert.equal(socket().lastSent("auth").token, issued[1]);
});

test("with both token and getToken, the first connection uses the token, later ones getToken", async (t) => {
  let calls = 0;
  const getToken = async () => `fresh-${++calls}`;
  const { socket, advance } = await mockedClient(t, { token: "static", getToken });
  socket().serverOpen();
  assert.equal(socket().lastSent("auth").token, "static");
  assert.equal(calls, 0);
  socket().serverClose(1006);
  await advance(10);
  socket().serverOpen();
  assert.equal(socket().lastSent("auth").token, "fresh-1");
});

test("the token is refreshed 30 s before the exp read from the JWT, on the open connection", async (t) => {
  const exp = START / 1000 + 120;
  let calls = 0;
  const getToken = async () => jwt({ sub: "user:1", exp: exp + 600 * ++calls });
  const { socket, events, advance } = await mockedClient(t, { token: jwt({ sub: "user:1", exp }), getToken });
  socket().serverOpen();
  acceptAuth(socket()); // an ok without exp or ttl: the client goes by the token's own exp
  await advance(89_999);
  assert.equal(calls, 0);
  assert.equal(socket().sent.filter((m) => m.op === "auth").length, 1);
  await advance(1);
  assert.equal(calls, 1);
  const refresh = socket().lastSent("auth");
  assert.equal(tokenExpiry(refresh.token), exp + 600);
  socket().serverSend({ op: "ok", id: refresh.id, sub: "user:1", exp: exp + 600 });
  assert.deepEqual(events.filter((e) => e.type === "authenticated").map((e) => e.refresh), [false, true]);
  assert.equal(FakeSocket.instances.length, 1, "refreshing does not reconnect");
  // The next refresh follows the new token: 30 s before exp + 600.
  await advance(600_000 - 1);
  assert.equal(calls, 1);
  await advance(1);
  assert.equal(calls, 2);
});

test("the server's ttl wins over the token's exp (a client clock that is off still refreshes in time)", async (t) => {
  let calls = 0;
  const getToken = async () => (++calls, jwt({ sub: "user:1", exp: 1 })); // exp long past by this clock
  const { socket, advance } = await mockedClient(t, { token: "opaque", getToken });
  socket().serverOpen();
  acceptAuth(socket(), { exp: 4102444800, ttl: 60 });
  await advance(29_999);
  assert.equal(calls, 0);
  await advance(1);
  assert.equal(calls, 1);
});

test("a refused refresh is an unauthorized event: the connection stays and the refresh is retried", async (t) => {
  let calls = 0;
  const getToken = async () => jwt({ sub: "user:1", exp: START / 1000 + 600, n: ++calls });
  const { client, socket, events, advance } = await mockedClient(t, {
    token: jwt({ sub: "user:1", exp: START / 1000 + 60 }),
    getToken,
  });
  socket().serverOpen();
  acceptAuth(socket(), { ttl: 60 });
  await advance(30_000);
  assert.equal(calls, 1);
  const refresh = socket().lastSent("auth");
  socket().serverSend({ op: "err", id: refresh.id, code: "unauthorized", msg: "the new token is for another user" });
  const refused = events.filter((e) => e.type === "unauthorized");
  assert.deepEqual(refused, [
    { type: "unauthorized", code: "unauthorized", msg: "the new token is for another user", id: refresh.id },
  ]);
  assert.equal(client.state, "open");
  assert.equal(client.authenticated, true);
  await advance(DEFAULTS.refreshRetry);
  assert.equal(calls, 2, "retried while the current token still holds");
});

test("a getToken that fails at refresh time is retried; one that fails at connect time backs off", async (t) => {
  let fail = true;
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    if (fail) throw new Error("backend down");
    return jwt({ sub: "user:1", exp: START / 1000 + 3600 });
  };
  const { socket, events, advance } = await mockedClient(t, { getToken });
  assert.equal(FakeSocket.instances.length, 0, "no socket without a token");
  assert.deepEqual(events.find((e) => e.type === "error"), {
    type: "error", code: "token_failed", msg: "getToken() failed: backend down",
  });
  assert.deepEqual(events.filter((e) => e.type === "connecting").map((e) => e.attempt), [0, 1]);
  fail = false;
  await advance(10);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(calls, 2);
  socket().serverOpen();
  acceptAuth(socket(), { ttl: 3600 });
  fail = true;
  await advance(3_570_000);
  assert.equal(calls, 3);
  await advance(DEFAULTS.refreshRetry);
  assert.equal(calls, 4);
  assert.equal(FakeSocket.instances.length, 1);
});

test("a getToken that gives no token stops the client as unauthorized", async (t) => {
  const { client, events } = await mockedClient(t, { getToken: async () => "" });
  assert.equal(client.state, "stopped");
  assert.equal(FakeSocket.instances.length, 0);
  assert.deepEqual(events.filter((e) => e.type === "unauthorized").map((e) => e.msg), ["getToken() gave no token"]);
  assert.equal(events.at(-1).type, "closed");
  assert.equal(events.at(-1).reconnect, false);
});

test("a refused first token is an unauthorized event, then the server's 1008 stops the client", async (t) => {
  const { client, socket, events, advance } = await mockedClient(t, { token: "bad" });
  const ready = client.subscribe("news", () => {});
  socket().serverOpen();
  const auth = socket().lastSent("auth");
  socket().serverSend({ op: "err", id: auth.id, code: "unauthorized", msg: "token expired" });
  assert.equal(socket().lastSent("sub"), undefined, "nothing is sent after a refused token");
  socket().serverClose(1008);
  await assert.rejects(ready, { code: "client_closed" });
  await advance(1000);
  assert.equal(client.state, "stopped");
  assert.equal(FakeSocket.instances.length, 1);
  assert.deepEqual(events.find((e) => e.type === "unauthorized"), {
    type: "unauthorized", code: "unauthorized", msg: "token expired", id: auth.id,
  });
});

test("a server from before tokens (auth is unknown_op) is used without authentication", async () => {
  const { client, socket } = await newClient({ token: "t" });
  const ready = client.subscribe("news", () => {});
  socket().serverOpen();
  socket().serverSend({ op: "err", id: socket().lastSent("auth").id, code: "unknown_op", msg: "unknown op 'auth'" });
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 3, epoch: 1 });
  assert.equal((await ready).off, 3);
  assert.equal(client.authenticated, true);
  client.close();
});

test("forbidden sub and pub surface as events, reject their requests and keep the connection", async () => {
  const { client, socket, events } = await newClient();
  socket().serverOpen();
  const ready = client.subscribe("user:2", () => {});
  const sub = socket().lastSent("sub");
  socket().serverSend({ op: "err", id: sub.id, code: "forbidden", msg: "not allowed to subscribe to user:2" });
  await assert.rejects(ready, { code: "forbidden" });
  const published = client.publish("news", 1);
  const pub = socket().lastSent("pub");
  socket().serverSend({ op: "err", id: pub.id, code: "forbidden", msg: "not allowed to publish to news" });
  await assert.rejects(published, { code: "forbidden" });
  assert.deepEqual(
    events.filter((e) => e.type === "forbidden"),
    [
      { type: "forbidden", code: "forbidden", msg: "not allowed to subscribe to user:2", id: sub.id, op: "sub", channel: "user:2" },
      { type: "forbidden", code: "forbidden", msg: "not allowed to publish to news", id: pub.id, op: "pub", channel: "news" },
    ],
  );
  assert.equal(client.state, "open");
  assert.deepEqual(client.channels, []);
  client.close();
});

test("close 4000 (disconnected by the server) stops, like 1008", async () => {
  assert.deepEqual([...STOP_CODES], [1008, 4000]);
  const { client, socket, events } = await newClient();
  socket().serverOpen();
  socket().serverClose(4000);
  await tick(10);
  assert.equal(client.state, "stopped");
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(events.at(-1).reconnect, false);
});

test("a silent link gets a ping; with no frame within the timeout it is replaced", async (t) => {
  const { client, socket, events, advance } = await mockedClient(t);
  socket().serverOpen();
  const first = socket();
  await advance(DEFAULTS.pingAfter - 1);
  assert.equal(first.lastSent("ping"), undefined);
  await advance(1);
  const ping = first.lastSent("ping");
  assert.deepEqual(ping, { op: "ping", id: ping.id });
  await advance(DEFAULTS.pingTimeout - 1);
  assert.equal(client.state, "open");
  await advance(1);
  const closed = events.find((e) => e.type === "closed");
  assert.equal(closed.code, 1006);
  assert.equal(closed.reconnect, true);
  assert.match(closed.reason, /no frame from the server for 45 s/);
  assert.equal(first.readyState, 3, "the dead socket was closed");
  await advance(10);
  assert.notEqual(socket(), first, "reconnected with the usual backoff");
  socket().serverOpen();
  assert.equal(client.state, "open");
});

test("any frame counts as life: deliveries and ping replies keep the link", async (t) => {
  const { client, socket, advance } = await mockedClient(t, { pingAfter: 1000, pingTimeout: 500 });
  client.subscribe("c", () => {});
  socket().serverOpen();
  socket().serverSend({ op: "ok", id: socket().lastSent("sub").id, off: 0, epoch: 1 });
  for (let i = 1; i <= 5; i++) {
    await advance(900);
    socket().serverSend({ op: "msg", ch: "c", off: i, data: i });
  }
  assert.equal(socket().lastSent("ping"), undefined, "never silent for 1 s");
  for (let i = 0; i < 5; i++) {
    await advance(1000);
    const ping = socket().lastSent("ping");
    assert.equal(socket().sent.filter((m) => m.op === "ping").length, i + 1);
    await advance(400);
    socket().serverSend({ op: "ok", id: ping.id });
  }
  assert.equal(FakeSocket.instances.length, 1, "answered pings keep the connection");
  assert.equal(client.state, "open");
});

test("timers of a closed connection do nothing: no refresh or ping on a dead socket", async (t) => {
  let calls = 0;
  const getToken = async () => (++calls, jwt({ sub: "user:1", exp: START / 1000 + 3600 }));
  const { client, socket, advance } = await mockedClient(t, { token: jwt({ sub: "u", exp: START / 1000 + 40 }), getToken });
  socket().serverOpen();
  acceptAuth(socket(), { ttl: 40 });
  const first = socket();
  first.serverClose(1012);
  const sentBefore = first.sent.length;
  await advance(60_000);
  assert.equal(first.sent.length, sentBefore, "nothing more sent on the closed socket");
  assert.equal(calls, 1, "getToken called once, for the reconnection");
  client.close();
  await advance(120_000);
  assert.equal(calls, 1);
});

test("a lifetime beyond setTimeout's range does not refresh early", async (t) => {
  let calls = 0;
  const exp = START / 1000 + 100 * 86400; // 100 days
  const getToken = async () => (++calls, jwt({ sub: "u", exp: exp + 1 }));
  const { socket, advance } = await mockedClient(t, { token: jwt({ sub: "u", exp }), getToken, pingAfter: 0 });
  socket().serverOpen();
  acceptAuth(socket());
  const hour = 3600 * 1000;
  for (let hours = 1; hours < 100 * 24; hours++) {
    await advance(hour);
    assert.equal(calls, 0, `hour ${hours}`);
  }
  // Mocked timers run a timer armed inside a tick only at the end of the next tick, so each of the
  // four re-arms lands up to an hour late here; real timers do not drift.
  for (let hours = 0; hours < 6; hours++) await advance(hour);
  assert.equal(calls, 1);
});
