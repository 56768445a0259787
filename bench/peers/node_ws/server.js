// Fan-out peer: Node.js `ws`, one process. The idiomatic broadcast: serialize once, ws.send() to
// every subscriber. Speaks the subset of wsd's protocol the load generator uses:
//   WebSocket (any path): {"op":"sub","ch":C,"id":N} -> {"op":"ok","id":N,"off":O}
//   deliveries:           {"op":"msg","ch":C,"off":O,"data":D}
//   HTTP on the same port: POST /api/publish {"channel","data"} -> {"offset":O}
//                          POST /api/publish_batch [{"channel","data"},...] -> {"offsets":[...]}
// Usage: node server.js PORT   (prints "ready" when listening)
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 9100);
const channels = new Map(); // channel -> Set of sockets
const offsets = new Map(); // channel -> last offset

function publish(channel, data) {
  const off = (offsets.get(channel) || 0) + 1;
  offsets.set(channel, off);
  const members = channels.get(channel);
  if (members && members.size) {
    // One Buffer for everyone: ws.send(string) would convert the string again for every socket.
    const frame = Buffer.from(JSON.stringify({ op: "msg", ch: channel, off, data }));
    for (const ws of members) ws.send(frame, { binary: false });
  }
  return off;
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch (e) {
      res.writeHead(400).end('{"error":"bad json"}');
      return;
    }
    let reply;
    if (req.url === "/api/publish") reply = { offset: publish(body.channel, body.data) };
    else if (req.url === "/api/publish_batch") reply = { offsets: body.map((m) => publish(m.channel, m.data)) };
    else {
      res.writeHead(404).end('{"error":"not found"}');
      return;
    }
    res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(reply));
  });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", (raw) => {
    const msg = JSON.parse(raw);
    if (msg.op === "sub") {
      let members = channels.get(msg.ch);
      if (!members) channels.set(msg.ch, (members = new Set()));
      members.add(ws);
      mine.add(msg.ch);
      ws.send(JSON.stringify({ op: "ok", id: msg.id, off: offsets.get(msg.ch) || 0 }));
    }
  });
  ws.on("close", () => {
    for (const ch of mine) channels.get(ch).delete(ws);
  });
});

// The coordinator's publish connection idles for as long as a slow burst takes: never time it out.
server.keepAliveTimeout = 0;
server.requestTimeout = 0;
server.listen(port, "127.0.0.1", 4096, () => console.log("ready"));
