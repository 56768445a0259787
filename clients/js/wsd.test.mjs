// Unit tests of wsd.js against a scripted fake WebSocket: `node --test clients/js/`.
// The browser tests (tests/browser/) run the same client against a real wsd in Chromium.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, connect, DEFAULTS } from "../../server/static/wsd.js";

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

async function newClient(options = {}) {
  FakeSocket.instances = [];
  const events = [];
  const client = connect("ws://wsd.test/ws", { WebSocket: FakeSocket, backoffBase: 1, backoffCap: 2, ...options });
  for (const type of ["connecting", "open", "closed", "subscribed", "resumed", "gap", "error"]) {
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

test("token goes in the query string", async () => {
  const { socket, client } = await newClient({ token: "a b&c" });
  assert.equal(socket().url, "ws://wsd.test/ws?token=a+b%26c");
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
