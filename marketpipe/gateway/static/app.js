// marketpipe live page: plain JavaScript against the gateway's public protocol (docs/gateway.md).
"use strict";

const LADDER_LEVELS = 15;
const TRADES_KEPT = 30;
const $ = (id) => document.getElementById(id);

const state = {
  ws: null,
  markets: new Map(),   // symbol -> ticker
  chosen: null,
  book: null,          // from depth@: a snapshot, then chained deltas (docs/gateway.md)
  resyncs: 0,
  lastResync: "",
  trades: [],
  nextId: 1,
  retryMs: 500,
  renderQueued: false,
  publishers: {},       // service -> {shards: {k: {leader, epoch, ...}}} from /status
};

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

// A token comes in the page's fragment (#token=T: never sent to a server, so never in a log)
// and goes to the gateway as a subprotocol, since a browser cannot set Authorization on a
// WebSocket; the gateway answers with "marketpipe" alone (docs/gateway.md).
function wsProtocols() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!token) return ["marketpipe"];
  const bytes = new TextEncoder().encode(token);
  const base64url = btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["marketpipe", `marketpipe.bearer.${base64url}`];
}

function setStatus(kind, text) {
  const el = $("status");
  el.className = `status ${kind}`;
  el.textContent = text;
}

function send(action, topics) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ action, topics, id: state.nextId++ }));
  }
}

function connect() {
  setStatus("connecting", "connecting…");
  const ws = new WebSocket(wsUrl(), wsProtocols());
  state.ws = ws;
  ws.onopen = () => {
    state.retryMs = 500;
    setStatus("open", "live");
    send("subscribe", "markets@SNAPSHOT,markets@DATA");
    if (state.chosen) send("subscribe", pairTopics(state.chosen));
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    setStatus("closed", `disconnected (${event.code}); retrying`);
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 10000);
  };
}

function onMessage(msg) {
  if (msg.error) { console.warn("gateway error", msg.error); return; }
  if (!msg.topic) return;  // a subscribe/unsubscribe reply
  const [channel, symbol] = msg.topic.split("@");
  if (channel === "markets") {
    if (symbol === "SNAPSHOT") state.markets = new Map(Object.entries(msg.data));
    else for (const [s, t] of Object.entries(msg.data)) state.markets.set(s, t);
  } else if (symbol !== state.chosen) {
    return;  // late data for a pair we just left
  } else if (channel === "depth") {
    onDepth(msg);
  } else if (channel === "trades") {
    state.trades.unshift(msg.data);
    state.trades.length = Math.min(state.trades.length, TRADES_KEPT);
  } else if (channel === "snapshot_trades") {
    state.trades = msg.data.slice(0, TRADES_KEPT);
  } else if (channel === "tickers") {
    state.markets.set(symbol, msg.data);
  }
  queueRender();
}

function pairTopics(symbol) {
  return ["depth", "trades", "tickers", "snapshot_trades"].map((c) => `${c}@${symbol}`).join(",");
}

// DESIGN §10: crc32 of "bid0:ask0:bid1:ask1:..." (price:quantity) over the best 25 levels.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function checksum(bids, asks) {
  const parts = [];
  for (let i = 0; i < 25 && (i < bids.length || i < asks.length); i++) {
    if (i < bids.length) parts.push(`${bids[i][0]}:${bids[i][1]}`);
    if (i < asks.length) parts.push(`${asks[i][0]}:${asks[i][1]}`);
  }
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(parts.join(":"))) {
    crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

// Set each changed level ("0" removes it), keeping the side sorted best first.
function applyLevels(levels, changes, better) {
  const side = new Map(levels.map(([p, q]) => [Number(p), [p, q]]));
  for (const [p, q] of changes) {
    if (q === "0") side.delete(Number(p));
    else side.set(Number(p), [p, q]);
  }
  return [...side.entries()].sort((a, b) => better(a[0], b[0])).map(([, level]) => level);
}

function resync(reason) {
  state.resyncs += 1;
  state.lastResync = reason;
  state.book = null;
  send("unsubscribe", `depth@${state.chosen}`);  // subscribing again brings a fresh snapshot
  send("subscribe", `depth@${state.chosen}`);
}

function onDepth(msg) {
  const data = msg.data, book = state.book;
  if (msg.type === "snapshot") {
    if (checksum(data.bids, data.asks) !== data.checksum) return resync("checksum failed");
    state.book = data;
    return;
  }
  if (!book) return;  // waiting for the snapshot a resync asked for
  if (data.epoch < book.epoch || (data.epoch === book.epoch && data.seq <= book.seq)) return;
  if (data.epoch !== book.epoch || data.seq !== book.seq + 1 || data.prevUpdateId !== book.lastUpdateId) {
    return resync("chain broken");
  }
  const next = {
    ...data,
    bids: applyLevels(book.bids, data.bids, (a, b) => b - a),
    asks: applyLevels(book.asks, data.asks, (a, b) => a - b),
  };
  if (checksum(next.bids, next.asks) !== data.checksum) return resync("checksum failed");
  state.book = next;
}

function choose(symbol) {
  if (symbol === state.chosen) return;
  if (state.chosen) send("unsubscribe", pairTopics(state.chosen));
  state.chosen = symbol;
  state.book = null;
  state.trades = [];
  send("subscribe", pairTopics(symbol));
  $("pair-title").textContent = symbol;
  queueRender();
}

function queueRender() {
  if (!state.renderQueued) {
    state.renderQueued = true;
    requestAnimationFrame(() => { state.renderQueued = false; render(); });
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// Binance sends 8 decimals; show as many as a column needs, the same number in every row.
function aligned(values) {
  const decimals = (v) => {
    const dot = v.indexOf(".");
    return dot < 0 ? 0 : v.replace(/0+$/, "").length - dot - 1;
  };
  const places = Math.max(0, ...values.map(decimals));
  return values.map((v) => {
    const [whole, fraction = ""] = v.split(".");
    return places ? `${whole}.${fraction.padEnd(places, "0").slice(0, places)}` : whole;
  });
}

function row(cells, onclick) {
  const tr = document.createElement("tr");
  for (const td of cells) tr.appendChild(td);
  if (onclick) tr.onclick = onclick;
  return tr;
}

function render() {
  renderMarkets();
  renderBook();
  renderTrades();
  drawDepth();
}

function renderMarkets() {
  const filter = $("filter").value.trim().toUpperCase();
  const rows = [...state.markets.entries()]
    .filter(([s]) => !filter || s.includes(filter))
    .sort((a, b) => Number(b[1].q || 0) - Number(a[1].q || 0));
  const body = $("markets").tBodies[0];
  body.replaceChildren(...rows.map(([s, t]) => {
    const pct = Number(t.P || 0);
    const tr = row([
      cell(s), cell(aligned([t.c ?? ""])[0]), cell(`${pct.toFixed(2)}%`, pct >= 0 ? "up" : "down"),
      cell(Number(t.q || 0).toLocaleString(undefined, { maximumFractionDigits: 0 })),
    ], () => choose(s));
    if (s === state.chosen) tr.className = "chosen";
    return tr;
  }));
  $("market-count").textContent = `${state.markets.size} pairs`;
  if (!state.chosen && rows.length) choose(rows[0][0]);
}

function renderBook() {
  const book = state.book;
  const asks = book ? book.asks.slice(0, LADDER_LEVELS).reverse() : [];
  const bids = book ? book.bids.slice(0, LADDER_LEVELS) : [];
  const levels = [...asks, ...bids];
  const prices = aligned(levels.map(([p]) => p)), sizes = aligned(levels.map(([, q]) => q));
  const rows = levels.map((_, i) => row([cell(prices[i]), cell(sizes[i])]));
  $("asks").replaceChildren(...rows.slice(0, asks.length));
  $("bids").replaceChildren(...rows.slice(asks.length));
  const waiting = state.chosen ? "waiting for a synced book…" : "";
  const meta = book
    ? `update ${book.lastUpdateId} · seq ${book.seq} · checksum ok${publisher(book)}`
    : waiting;
  const resynced = state.resyncs ? ` · ${state.lastResync}: resynced (${state.resyncs})` : "";
  $("book-meta").textContent = meta + resynced;
}

// Who published this book: its shard, and the instance leading it (from /status).
function publisher(book) {
  const shard = (state.publishers.orderbook || {shards: {}}).shards[String(book.shard)];
  return shard ? ` · shard ${book.shard} · ${shard.leader}` : "";
}

function renderPublishers() {
  const rows = [];
  for (const [service, info] of Object.entries(state.publishers)) {
    for (const instance of info.instances) {
      const leads = instance.leading.length ? instance.leading.join(", ") : "–";
      const stands = instance.standby.length ? instance.standby.join(", ") : "–";
      rows.push(row([cell(service), cell(instance.id), cell(leads), cell(stands)]));
    }
  }
  $("publishers").querySelector("tbody").replaceChildren(...rows);
  $("publishers-panel").hidden = rows.length === 0;
}

async function pollPublishers() {
  try {
    const response = await fetch("/status");
    if (response.ok) { state.publishers = await response.json(); renderPublishers(); queueRender(); }
  } catch (err) { console.warn("status", err); }
  setTimeout(pollPublishers, 3000);
}

function renderTrades() {
  const prices = aligned(state.trades.map((t) => t.p)), sizes = aligned(state.trades.map((t) => t.q));
  $("trades").tBodies[0].replaceChildren(...state.trades.map((t, i) => row([
    cell(new Date(t.T).toLocaleTimeString()), cell(prices[i]), cell(sizes[i]),
    cell(t.sd, t.sd === "BUY" ? "up" : "down"),
  ])));
}

function cumulative(levels) {
  let total = 0;
  return levels.map(([p, q]) => { total += Number(q); return [Number(p), total]; });
}

function drawDepth() {
  const canvas = $("depth");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const book = state.book;
  if (!book || !book.bids.length || !book.asks.length) return;
  const bids = cumulative(book.bids), asks = cumulative(book.asks);
  const low = bids[bids.length - 1][0], high = asks[asks.length - 1][0];
  const most = Math.max(bids[bids.length - 1][1], asks[asks.length - 1][1]);
  const x = (p) => ((p - low) / (high - low || 1)) * width;
  const y = (q) => height - (q / (most || 1)) * (height - 10);
  const area = (points, fill, stroke) => {
    ctx.beginPath();
    ctx.moveTo(x(points[0][0]), height);
    for (const [p, q] of points) { ctx.lineTo(x(p), y(q)); }
    ctx.lineTo(x(points[points.length - 1][0]), height);
    ctx.closePath();
    ctx.fillStyle = fill; ctx.fill();
    ctx.strokeStyle = stroke; ctx.stroke();
  };
  area(bids, "rgba(46,189,133,.25)", "#2ebd85");
  area(asks, "rgba(246,70,93,.25)", "#f6465d");
  ctx.fillStyle = "#7d8a99";
  ctx.font = "11px system-ui";
  ctx.fillText(String(low), 4, 12);
  ctx.fillText(String(high), width - ctx.measureText(String(high)).width - 4, 12);
}

$("filter").addEventListener("input", queueRender);
window.addEventListener("resize", queueRender);
connect();
pollPublishers();
