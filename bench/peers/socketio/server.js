// Fan-out peer: socket.io 4 with @socket.io/redis-adapter; run one process per port, all on one
// Redis. The idiomatic broadcast: io.to(channel).emit(); the adapter carries it to the other
// processes over Redis pub/sub. Load-generator contract (engine.io v4 over a raw WebSocket):
//   /socket.io/?EIO=4&transport=websocket, client "40" (connect), 42["sub",C] -> 42["ok",{"ch":C,"off":O}]
//   deliveries: 42["msg",{"ch":C,"off":O,"data":D}]
//   HTTP on the same port: POST /api/publish, POST /api/publish_batch (as wsd's publish API)
// Usage: node server.js PORT REDIS_PORT [REDIS_HOST [LISTEN_HOST]]   (prints "ready" when listening;
// hosts default to 127.0.0.1; bench/cluster.py runs one per network namespace with a shared Redis)
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-adapter");

const port = Number(process.argv[2] || 9200);
const redisPort = Number(process.argv[3] || 6379);
const redisHost = process.argv[4] || "127.0.0.1";
const listenHost = process.argv[5] || "127.0.0.1";
const offsets = new Map(); // channel -> last offset (the publisher is always one process)

function publish(io, channel, data) {
  const off = (offsets.get(channel) || 0) + 1;
  offsets.set(channel, off);
  io.to(channel).emit("msg", { ch: channel, off, data });
  return off;
}

async function main() {
  const pubClient = createClient({ url: `redis://${redisHost}:${redisPort}` });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);
  let io;
  const server = http.createServer((req, res) => {
    if (!req.url.startsWith("/api/")) return; // socket.io answers its own paths
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString());
      let reply;
      if (req.url === "/api/publish") reply = { offset: publish(io, body.channel, body.data) };
      else reply = { offsets: body.map((m) => publish(io, m.channel, m.data)) };
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(reply));
    });
  });
  io = new Server(server, { transports: ["websocket"], serveClient: false, perMessageDeflate: false });
  io.adapter(createAdapter(pubClient, subClient));
  io.on("connection", (socket) => {
    socket.on("sub", (channel) => {
      socket.join(channel);
      socket.emit("ok", { ch: channel, off: offsets.get(channel) || 0 });
    });
  });
  // The coordinator's publish connection idles for as long as a slow burst takes: never time it out.
  server.keepAliveTimeout = 0;
  server.requestTimeout = 0;
  server.listen(port, listenHost, 4096, () => console.log("ready"));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
