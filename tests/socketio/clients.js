// socket.io clients for sluice's end-to-end tests.
//
//   node clients.js --url http://10.111.100.1 --clients 50 --timeout-ms 20000
//
// Each client connects with the default transports (HTTP long-polling first, then an upgrade
// to WebSocket) and `withCredentials: true`, which in Node gives every client its own cookie
// jar (engine.io-client >= 6.5), so a load balancer's stickiness cookie is kept and sent on
// every later poll and on the WebSocket upgrade. Once upgraded, a client sends one "hello"
// and waits for its echo. All clients run at once and stay connected until all are done.
//
// With --again-file PATH, every client keeps its connection after its echo; once all have
// echoed, the script prints `{"ready":N}`, and when PATH exists each client sends a second
// message on the same connection and waits for that echo too (to show that connections
// opened before something, e.g. a restart of the load balancer, still work after it).
//
// Prints one JSON summary line on stdout:
//   { clients, connected, upgraded, echoed, echoed_again, failed, timed_out,
//     by_server: {name: echoes}, errors: [{ client, stage, message }] }
// Exit status: 0 when every client finished (succeeded or failed), 3 on the overall timeout,
// 2 on bad arguments.
"use strict";

const { io } = require("socket.io-client");
const fs = require("fs");

function parseArgs(argv) {
  const args = { url: "", clients: 50, "timeout-ms": 20000, "again-file": "" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    const value = argv[i + 1];
    if (!(key in args) || value === undefined) {
      console.error(`usage: node clients.js --url URL [--clients N] [--timeout-ms MS] (bad: ${argv[i]})`);
      process.exit(2);
    }
    args[key] = key === "url" || key === "again-file" ? value : Number(value);
  }
  if (!args.url) {
    console.error("usage: node clients.js --url URL [--clients N] [--timeout-ms MS]");
    process.exit(2);
  }
  return args;
}

const args = parseArgs(process.argv);

const summary = {
  clients: args.clients,
  connected: 0,
  upgraded: 0,
  echoed: 0,
  echoed_again: 0,
  failed: 0,
  timed_out: false,
  by_server: {},
  errors: [],
};
const sockets = [];
let finished = 0;
let reported = false;

function report(code) {
  if (reported) {
    return;
  }
  reported = true;
  for (const socket of sockets) {
    socket.disconnect();
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(code));
}

const deadline = setTimeout(() => {
  summary.timed_out = true;
  report(3);
}, args["timeout-ms"]);

function runClient(id) {
  let done = false;
  let connected = false;
  let upgraded = false;
  const finish = (error) => {
    if (done) {
      return;
    }
    done = true;
    if (error) {
      summary.failed += 1;
      if (summary.errors.length < 200) {
        summary.errors.push({ client: id, ...error });
      }
    }
    finished += 1;
    if (finished === args.clients) {
      clearTimeout(deadline);
      report(0);
    }
  };
  let echoedOnce = false;
  const stage = () => (!connected ? "connect" : !upgraded ? "upgrade" : !echoedOnce ? "echo" : "echo again");

  const socket = io(args.url, {
    // One engine.io connection (and one cookie jar) per client, not one shared Manager.
    forceNew: true,
    withCredentials: true,
    reconnection: false,
    timeout: args["timeout-ms"],
  });
  sockets.push(socket);
  const message = `hello from client ${id}`;

  const sendHello = () => {
    if (upgraded || done) {
      return;
    }
    upgraded = true;
    summary.upgraded += 1;
    socket.emit("hello", message);
  };
  // The upgrade can happen before or after the socket.io "connect".
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", (transport) => {
      if (transport.name === "websocket" && connected) {
        sendHello();
      }
    });
  });
  socket.on("connect", () => {
    connected = true;
    summary.connected += 1;
    if (socket.io.engine.transport.name === "websocket") {
      sendHello();
    }
  });
  const again = `${message} again`;
  socket.on("echo", (echo) => {
    if (echoedOnce && args["again-file"]) {
      if (echo.message !== again) {
        finish({ stage: "echo again", message: `wrong echo ${JSON.stringify(echo)}` });
        return;
      }
      summary.echoed_again += 1;
      finish();
      return;
    }
    if (echo.message !== message) {
      finish({ stage: "echo", message: `wrong echo ${JSON.stringify(echo)}` });
      return;
    }
    echoedOnce = true;
    summary.echoed += 1;
    summary.by_server[echo.from] = (summary.by_server[echo.from] || 0) + 1;
    if (!args["again-file"]) {
      finish();
      return;
    }
    if (summary.echoed === args.clients) {
      process.stdout.write(`${JSON.stringify({ ready: summary.echoed })}\n`);
    }
    const wait = setInterval(() => {
      if (done) {
        clearInterval(wait);
      } else if (fs.existsSync(args["again-file"])) {
        clearInterval(wait);
        socket.emit("hello", again);
      }
    }, 100);
  });
  socket.on("connect_error", (err) => {
    finish({ stage: stage(), message: `connect_error: ${err.message}${err.description ? ` (${err.description.message || err.description})` : ""}` });
  });
  socket.on("disconnect", (reason) => {
    finish({ stage: stage(), message: `disconnect: ${reason}` });
  });
}

for (let id = 0; id < args.clients; id += 1) {
  runClient(id);
}
