// A socket.io server for sluice's end-to-end tests: one target of a target group.
//
//   node server.js --host 0.0.0.0 --port 3000 --name target0
//
// - prints `{"listening":...}` as one JSON line on stdout once it accepts connections;
// - echoes every "hello" message back as "echo" with its own name: { from, message };
// - counts engine.io connection errors: code 1 ("Session ID unknown") is what a client sees
//   when its requests reach a server that did not open its session, i.e. a load balancer that
//   is not sticky;
// - answers GET /stats with the counts as JSON, and prints them as one JSON line on stdout when
//   it exits on SIGTERM or SIGINT.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const args = { host: "0.0.0.0", port: 3000, name: "socketio" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    const value = argv[i + 1];
    if (!(key in args) || value === undefined) {
      console.error(`usage: node server.js [--host ADDR] [--port PORT] [--name NAME] (bad: ${argv[i]})`);
      process.exit(2);
    }
    args[key] = key === "port" ? Number(value) : value;
  }
  return args;
}

const args = parseArgs(process.argv);

const stats = {
  name: args.name,
  // socket.io connections (one per client that completed the handshake here)
  connections: 0,
  // connections upgraded from polling to WebSocket here
  upgrades: 0,
  // "hello" messages echoed
  echoed: 0,
  // engine.io connection errors with code 1, "Session ID unknown"
  session_id_unknown: 0,
  // any other engine.io connection error: { code, message }
  other_errors: [],
};

const httpServer = http.createServer((req, res) => {
  // socket.io answers its own path (/socket.io/) before this handler sees the request.
  if (req.method === "GET" && req.url === "/stats") {
    const body = JSON.stringify(stats);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  const body = `${args.name}\n`;
  res.writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
  res.end(body);
});

const io = new Server(httpServer, {
  // Browsers send credentials (the stickiness cookie) cross-origin only with these.
  cors: { origin: true, credentials: true },
});

io.engine.on("connection_error", (err) => {
  if (err.code === 1) {
    stats.session_id_unknown += 1;
  } else if (stats.other_errors.length < 100) {
    stats.other_errors.push({ code: err.code, message: err.message });
  }
});

io.on("connection", (socket) => {
  stats.connections += 1;
  socket.conn.on("upgrade", (transport) => {
    if (transport.name === "websocket") {
      stats.upgrades += 1;
    }
  });
  socket.on("hello", (message) => {
    stats.echoed += 1;
    socket.emit("echo", { from: args.name, message });
  });
});

function stop() {
  process.stdout.write(`${JSON.stringify(stats)}\n`, () => process.exit(0));
  io.close();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

httpServer.on("error", (err) => {
  console.error(`socket.io server ${args.name} on ${args.host}:${args.port}: ${err.message}`);
  process.exit(1);
});
httpServer.listen(args.port, args.host, () => {
  const { address, port } = httpServer.address();
  console.log(JSON.stringify({ listening: { address, port, name: args.name } }));
});
