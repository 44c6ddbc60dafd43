// A deliberately NOT sticky HTTP reverse proxy: every request, and every WebSocket upgrade,
// goes to the next target in turn. It only exists to show that the socket.io harness notices
// a load balancer without stickiness ("Session ID unknown" on the servers).
//
//   node roundrobin.js --host 0.0.0.0 --port 80 --targets 10.0.0.1:3000,10.0.0.2:3000
//
// Prints `{"listening":...}` on stdout once it accepts connections.
"use strict";

const http = require("node:http");
const net = require("node:net");

const args = { host: "0.0.0.0", port: 80, targets: "" };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "");
  if (!(key in args) || process.argv[i + 1] === undefined) {
    console.error("usage: node roundrobin.js [--host ADDR] [--port PORT] --targets HOST:PORT,...");
    process.exit(2);
  }
  args[key] = process.argv[i + 1];
}
const targets = args.targets.split(",").filter(Boolean).map((t) => {
  const i = t.lastIndexOf(":");
  return { host: t.slice(0, i), port: Number(t.slice(i + 1)) };
});
if (targets.length === 0) {
  console.error("roundrobin.js: --targets is required");
  process.exit(2);
}
let next = 0;
const pick = () => targets[next++ % targets.length];
const agent = new http.Agent({ keepAlive: true });

const server = http.createServer((req, res) => {
  const target = pick();
  const upstream = http.request(
    { ...target, method: req.method, path: req.url, headers: req.headers, agent },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on("error", (err) => {
    res.writeHead(502);
    res.end(`${err.message}\n`);
  });
  req.pipe(upstream);
});

server.on("upgrade", (req, socket, head) => {
  const target = pick();
  const upstream = net.connect(target.port, target.host, () => {
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    }
    upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
    upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on("error", () => socket.destroy());
  socket.on("error", () => upstream.destroy());
});

server.listen(Number(args.port), args.host, () => {
  const { address, port } = server.address();
  console.log(JSON.stringify({ listening: { address, port } }));
});
