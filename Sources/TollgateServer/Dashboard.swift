/// The burn-down dashboard: one self-contained page (no CDN, no other file), served at
/// `/dashboard` on the admin port. It holds no data: it reads the read API every second with the
/// token typed into it (kept for the browser tab only, in sessionStorage; `#token=…` in the
/// address fills it in) and draws each account's balance over time against the period's
/// allotment, the burn rate and projected depletion, open holds, headroom by level (and the
/// funds), the members seen in recent activity, refusals by reason (in words) and alerts.
/// Numbers carry their raw value in `data-value`, for tests and scrapers.
enum Dashboard {
    static let page = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tollgate — credits burn-down</title>
<style>
:root { --bg:#0f1419; --panel:#182029; --line:#2a3540; --text:#e6edf3; --muted:#8b98a5; --accent:#4cc2ff; --ok:#3fb950; --warn:#d29922; --bad:#f85149; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--text); }
header { display:flex; gap:16px; align-items:center; padding:10px 16px; border-bottom:1px solid var(--line); background:var(--panel); }
header h1 { font-size:16px; margin:0; font-weight:600; }
header .server { color:var(--muted); flex:1; }
header input { background:var(--bg); color:var(--text); border:1px solid var(--line); border-radius:4px; padding:4px 8px; width:260px; }
button { background:var(--accent); color:#000; border:0; border-radius:4px; padding:5px 10px; cursor:pointer; }
#status { font-size:12px; padding:2px 8px; border-radius:10px; background:var(--line); }
#status.live { background:#1f3d2a; color:var(--ok); }
#status.error { background:#4a1f1f; color:var(--bad); }
main { display:grid; grid-template-columns:260px 1fr; min-height:calc(100vh - 50px); }
nav { border-right:1px solid var(--line); padding:8px; overflow:auto; max-height:calc(100vh - 50px); }
nav input { width:100%; margin-bottom:8px; background:var(--bg); color:var(--text); border:1px solid var(--line); border-radius:4px; padding:4px 8px; }
nav .acct { display:flex; justify-content:space-between; padding:6px 8px; border-radius:4px; cursor:pointer; }
nav .acct:hover { background:var(--panel); }
nav .acct.sel { background:#1c3347; }
nav .acct small { color:var(--muted); }
section#detail { padding:16px; overflow:auto; }
.empty { color:var(--muted); padding:40px; text-align:center; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; margin-bottom:14px; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
.card .label { color:var(--muted); font-size:12px; }
.card .value { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .sub { color:var(--muted); font-size:12px; }
.panel { background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:12px; margin-bottom:14px; }
.panel h2 { font-size:13px; margin:0 0 8px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.04em; }
.row { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:500; font-size:12px; }
td.n, th.n { text-align:right; }
.alerts .firing { color:var(--bad); font-weight:600; }
.alerts .armed { color:var(--ok); }
#banner { display:none; background:#4a1f1f; color:#ffd7d5; border:1px solid var(--bad); border-radius:6px; padding:8px 12px; margin-bottom:14px; }
svg text { fill:var(--muted); font-size:11px; }
.legend span { margin-right:14px; font-size:12px; color:var(--muted); }
.legend i { display:inline-block; width:14px; height:3px; vertical-align:middle; margin-right:4px; }
</style>
</head>
<body>
<header>
  <h1>Tollgate</h1>
  <span class="server" id="server">—</span>
  <span id="status">connecting</span>
  <input id="token" type="password" placeholder="read or admin token" autocomplete="off">
  <button id="use-token">Use token</button>
</header>
<main>
  <nav>
    <input id="filter" placeholder="filter, or an account + Enter">
    <div id="accounts"></div>
  </nav>
  <section id="detail"><div class="empty" id="empty">Pick an account to watch its credits burn down.</div></section>
</main>
<template id="detail-template">
  <div id="banner"></div>
  <div class="cards">
    <div class="card"><div class="label">Balance</div><div class="value" id="balance">—</div><div class="sub" id="balance-sub"></div></div>
    <div class="card"><div class="label">Period allotment</div><div class="value" id="allotment">—</div><div class="sub"><span id="period"></span> · the subscription's included credits</div></div>
    <div class="card"><div class="label">Burn rate</div><div class="value" id="burn-minute">—</div><div class="sub"><span id="burn-hour">—</span> in the last hour</div></div>
    <div class="card"><div class="label">Projected depletion</div><div class="value" id="depletion">—</div><div class="sub" id="depletion-at"></div></div>
    <div class="card"><div class="label">Open holds</div><div class="value" id="open-holds">—</div><div class="sub"><span id="held">—</span> credits held</div></div>
    <div class="card"><div class="label">Consumed this period</div><div class="value" id="consumed">—</div><div class="sub" id="cap"></div></div>
  </div>
  <div class="panel">
    <h2>Balance over time</h2>
    <div class="legend"><span><i style="background:var(--accent)"></i>balance</span><span title="the subscription's included credits for this billing period (seats × credits per seat); top-ups come on top"><i style="background:var(--warn)"></i>period allotment (included credits this period; top-ups on top)</span><span><i style="background:var(--bad)"></i>projection</span><span id="since"></span></div>
    <svg id="chart" width="100%" height="220" viewBox="0 0 900 220" preserveAspectRatio="none"></svg>
  </div>
  <div class="row">
    <div class="panel"><h2>Consumption, last minute (5 s) and hour (5 min)</h2><svg id="bars-minute" width="100%" height="80" viewBox="0 0 420 80" preserveAspectRatio="none"></svg><svg id="bars-hour" width="100%" height="80" viewBox="0 0 420 80" preserveAspectRatio="none"></svg></div>
    <div class="panel"><h2>Headroom by level</h2><table id="levels"><thead><tr><th>level</th><th>subject</th><th class="n">cap</th><th class="n">consumed</th><th class="n">held</th><th class="n">headroom</th></tr></thead><tbody></tbody></table></div>
  </div>
  <div class="panel"><h2>Members seen recently: their caps, holds and headroom</h2><table id="members"><thead><tr><th>member</th><th class="n">cap</th><th class="n">consumed</th><th class="n">held</th><th class="n">open holds</th><th class="n">cap headroom</th><th class="n">can spend now</th></tr></thead><tbody></tbody></table></div>
  <div class="row">
    <div class="panel"><h2>Recent refusals by reason</h2><table id="refusals"><thead><tr><th>reason</th><th class="n">count</th></tr></thead><tbody></tbody></table><table id="refusals-recent" style="margin-top:8px"><thead><tr><th>time</th><th>op</th><th>member</th><th>product</th><th>reason</th></tr></thead><tbody></tbody></table></div>
    <div class="panel alerts"><h2>Alerts</h2><table id="alerts"><thead><tr><th>alert</th><th>threshold</th><th>state</th></tr></thead><tbody></tbody></table><table id="events" style="margin-top:8px"><thead><tr><th>time</th><th>event</th><th class="n">balance</th></tr></thead><tbody></tbody></table></div>
  </div>
  <div class="panel"><h2>Recent consumption</h2><table id="consumption"><thead><tr><th>time</th><th>op</th><th>member</th><th>product</th><th class="n">credits</th></tr></thead><tbody></tbody></table></div>
</template>
<script>
"use strict";
const state = { token: sessionStorage.getItem("tollgate-token") || "", account: null, samples: [], lastMs: null, timer: null, overview: null };
const fmt = new Intl.NumberFormat("en-US");
const $ = (id) => document.getElementById(id);
const hashParams = new URLSearchParams(location.hash.slice(1));
if (hashParams.get("token")) { state.token = hashParams.get("token"); sessionStorage.setItem("tollgate-token", state.token); }
$("token").value = state.token;

// A level's caps: the period's cap, then caps over other windows ("200/hour"), soft ones marked.
function capText(limit, caps) {
  const others = (caps || []).filter((c) => !(c.window === "period" && c.mode === "hard"))
    .map((c) => `${c.mode === "soft" ? "soft " : ""}${fmt.format(c.limit)}/${esc(c.window)}`);
  const period = limit === null || limit === undefined ? (others.length ? "" : "—") : fmt.format(limit);
  return [period, ...others].filter((t) => t).join(", ");
}
function esc(text) { return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
function time(ms) { return new Date(ms).toISOString().slice(11, 19); }
function setStatus(text, kind) { const s = $("status"); s.textContent = text; s.className = kind || ""; }
function setNumber(id, value, text) {
  const el = $(id); if (!el) return;
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text !== undefined ? text : (value === null || value === undefined ? "—" : fmt.format(value));
}
function duration(seconds) {
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 172800) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  return Math.floor(seconds / 86400) + " days";
}

async function api(path) {
  const headers = state.token ? { "Authorization": "Bearer " + state.token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function loadAccounts() {
  try {
    const server = await api("/api/v1/server");
    $("server").textContent = `${server.server} · ${fmt.format(server.accounts)} accounts · ${fmt.format(server.openHolds)} open holds · ${fmt.format(server.burn.lastMinute)} credits/min · journal ${server.journalMode}`;
    const list = await api("/api/v1/accounts?limit=200");
    const filter = $("filter").value.toLowerCase();
    $("accounts").innerHTML = list.accounts.filter((a) => a.account.toLowerCase().includes(filter)).map((a) =>
      `<div class="acct${a.account === state.account ? " sel" : ""}" data-account="${esc(a.account)}"><span>${esc(a.account)}</span><small>${fmt.format(a.balance)} · ${fmt.format(a.burn.lastMinute)}/min</small></div>`).join("");
    if (!state.account && list.accounts.length > 0 && !hashParams.get("account")) select(list.accounts[0].account);
    setStatus("live", "live");
  } catch (error) {
    setStatus(error.message, "error");
  }
}

function select(account) {
  state.account = account; state.samples = []; state.lastMs = null;
  const detail = $("detail");
  detail.innerHTML = ""; detail.appendChild($("detail-template").content.cloneNode(true));
  detail.dataset.account = account;
  history.replaceState(null, "", "#account=" + encodeURIComponent(account));
  for (const el of document.querySelectorAll("nav .acct")) el.classList.toggle("sel", el.dataset.account === account);
  refresh();
}

async function refresh() {
  if (!state.account) return;
  const account = state.account;
  try {
    const since = state.lastMs === null ? "" : "?since=" + state.lastMs;
    const o = await api("/api/v1/accounts/" + encodeURIComponent(account) + "/overview" + since);
    if (account !== state.account) return;
    for (const s of o.history.samples) state.samples.push(s);
    if (state.samples.length > o.history.kept) state.samples.splice(0, state.samples.length - o.history.kept);
    if (state.samples.length) state.lastMs = state.samples[state.samples.length - 1][0];
    state.overview = o;
    render(o);
    setStatus("live · " + time(o.account.atMilliseconds), "live");
  } catch (error) {
    setStatus(error.message, "error");
  }
}

function render(o) {
  const a = o.account;
  $("detail").dataset.at = a.atMilliseconds;
  setNumber("balance", a.balance);
  $("balance-sub").textContent = `pool ${fmt.format(a.pool)} · members ${fmt.format(a.membersOwn)}` + (a.overdrawn ? ` · overdrawn ${fmt.format(a.overdrawn)}` : "");
  setNumber("allotment", a.allotment);
  $("period").textContent = a.periodStart.slice(0, 10) + " → " + a.periodEnd.slice(0, 10);
  setNumber("burn-minute", a.burn.lastMinute, fmt.format(a.burn.lastMinute) + "/min");
  setNumber("burn-hour", a.burn.lastHour);
  const d = o.depletion;
  if (d.state === "depleted") { setNumber("depletion", 0, "depleted"); $("depletion-at").textContent = "nothing left"; }
  else if (d.state === "notBurning") { setNumber("depletion", null, "not burning"); $("depletion-at").textContent = "no consumption in the last hour"; }
  else { setNumber("depletion", d.seconds, "in " + duration(d.seconds)); $("depletion-at").textContent = "at " + new Date(d.atMilliseconds).toISOString().replace("T", " ").slice(0, 16) + " UTC (" + (d.basis === "lastMinute" ? "last minute's rate" : "last hour's rate") + ")"; }
  setNumber("open-holds", a.openHolds);
  setNumber("held", a.held);
  setNumber("consumed", a.consumed);
  $("cap").textContent = a.cap === null ? "no account cap" : "of a cap of " + fmt.format(a.cap);
  $("since").textContent = state.samples.length ? "watched since " + time(state.samples[0][0]) + " UTC" : "";
  drawChart(o);
  drawBars("bars-minute", o.burn.minuteBuckets, 5000);
  drawBars("bars-hour", o.burn.hourBuckets, 300000);
  // A level without a cap limits nothing by itself: "no cap"; what can be spent is also
  // bounded by the funds, shown as their own row (0 when depleted).
  $("levels").tBodies[0].innerHTML = o.levels.map((l) => `<tr data-level="${esc(l.level)}"><td>${esc(l.level)}</td><td>${esc(l.subject)}</td><td class="n">${capText(l.limit, l.caps)}</td><td class="n">${fmt.format(l.consumed)}</td><td class="n">${fmt.format(l.held)}</td><td class="n">${l.headroom === null ? "no cap" : fmt.format(l.headroom)}</td></tr>`).join("")
    + `<tr data-level="funds"><td>funds</td><td>grants${o.account.overage.policy === "overdraft" ? " + overdraft" : ""}</td><td class="n">—</td><td class="n">—</td><td class="n">—</td><td class="n" data-value="${o.headroom.funds}">${fmt.format(o.headroom.funds)}</td></tr>`;
  $("members").tBodies[0].innerHTML = o.members.length ? o.members.map((m) => `<tr data-member="${esc(m.member)}"><td>${esc(m.member)}</td><td class="n">${capText(m.limit, m.caps)}</td><td class="n">${fmt.format(m.consumed)}</td><td class="n">${fmt.format(m.held)}</td><td class="n">${fmt.format(m.openHolds)}</td><td class="n">${m.headroom === null ? "no cap" : fmt.format(m.headroom)}</td><td class="n" data-value="${m.canSpend}">${fmt.format(Math.max(0, m.canSpend))}</td></tr>`).join("") : `<tr><td colspan="7" class="empty">no member activity yet</td></tr>`;
  const words = (r) => (o.refusals.words && o.refusals.words[r]) || r;
  const reasons = Object.entries(o.refusals.byReason).sort((x, y) => y[1] - x[1]);
  $("refusals").tBodies[0].innerHTML = reasons.length ? reasons.map(([r, n]) => `<tr data-reason="${esc(r)}"><td title="${esc(r)}">${esc(words(r))}</td><td class="n" data-value="${n}">${fmt.format(n)}</td></tr>`).join("") : `<tr><td colspan="2" class="empty">no refusals</td></tr>`;
  $("refusals-recent").tBodies[0].innerHTML = o.refusals.recent.map((e) => `<tr><td>${time(e.atMilliseconds)}</td><td>${esc(e.operation)}</td><td>${esc(e.member || "")}</td><td>${esc(e.product || "")}</td><td title="${esc(e.reason || "")}">${esc(words(e.reason || ""))}</td></tr>`).join("");
  $("alerts").tBodies[0].innerHTML = o.alerts.length ? o.alerts.map((al) => {
    const t = al.threshold.kind === "credits" ? fmt.format(al.threshold.credits) + " credits" : al.threshold.kind === "percentOfAllotment" ? al.threshold.percent + "% of allotment" : "depleted";
    return `<tr data-alert="${esc(al.id)}" data-firing="${al.firing}"><td>${esc(al.id)}${al.member ? " (" + esc(al.member) + ")" : ""}</td><td>${t}</td><td class="${al.firing ? "firing" : "armed"}">${al.firing ? "firing" : "armed"}</td></tr>`;
  }).join("") : `<tr><td colspan="3" class="empty">no alerts set</td></tr>`;
  $("events").tBodies[0].innerHTML = o.events.map((e) => `<tr><td>${time(e.atMicroseconds / 1000)}</td><td>${esc(e.type)}${e.alert ? " " + esc(e.alert) : ""}${e.amount ? " +" + fmt.format(e.amount) : ""}${e.type === "softLimit" ? " " + esc(e.subject) + " " + fmt.format(e.used) + " of " + fmt.format(e.limit) + " per " + esc(e.window) : ""}</td><td class="n">${e.balance === undefined ? "—" : fmt.format(e.balance)}</td></tr>`).join("");
  $("consumption").tBodies[0].innerHTML = o.consumption.map((e) => `<tr><td>${time(e.atMilliseconds)}</td><td>${esc(e.operation)}</td><td>${esc(e.member || "")}</td><td>${esc(e.product || "")}</td><td class="n">${fmt.format(e.credits)}</td></tr>`).join("");
  const firing = o.alerts.filter((al) => al.firing).map((al) => al.id);
  const banner = $("banner");
  if (d.state === "depleted" || firing.length) {
    banner.style.display = "block";
    banner.textContent = (d.state === "depleted" ? "Depleted: the gate refuses what no grant covers. " : "") + (firing.length ? "Alerts firing: " + firing.join(", ") + "." : "");
  } else { banner.style.display = "none"; }
}

// Round tick steps (1, 2 or 5 × 10ⁿ) for about `count` ticks over a span.
function niceStep(span, count) {
  const raw = Math.max(span, 1) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((m) => m >= raw);
  return Math.max(1, step);
}

// The drawing in the element's own pixels, so text is never stretched.
function sized(svg, height) {
  const W = Math.max(300, Math.round(svg.getBoundingClientRect().width || 900));
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  return W;
}

function drawChart(o) {
  const svg = $("chart"); const H = 220, L = 60, R = 10, T = 10, B = 22; const W = sized(svg, H);
  const s = state.samples;
  if (!s.length) { svg.innerHTML = ""; return; }
  const now = o.account.atMilliseconds;
  const t0 = Math.min(s[0][0], now - 60000);
  let t1 = now;
  const d = o.depletion;
  const projecting = d.state === "projected" && d.atMilliseconds - now < (now - t0);
  if (projecting) t1 = d.atMilliseconds;
  const values = s.map((p) => p[1]).concat([o.account.allotment, 0]);
  const step = niceStep(Math.max(...values, 1) - Math.min(...values, 0), 4);
  const vmax = Math.ceil(Math.max(...values, 1) / step) * step, vmin = Math.floor(Math.min(...values, 0) / step) * step;
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - (v - vmin) / Math.max(1, vmax - vmin));
  let out = "";
  for (let v = vmin; v <= vmax; v += step) {
    out += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#2a3540"/><text class="tick" x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${fmt.format(v)}</text>`;
  }
  // Time ticks on round minutes (or seconds, for a short span), each labelled HH:MM(:SS).
  const spanSeconds = Math.max(1, (t1 - t0) / 1000);
  const tickSeconds = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400].find((t) => spanSeconds / t <= 6) || 86400;
  for (let t = Math.ceil(t0 / (tickSeconds * 1000)) * tickSeconds * 1000; t <= t1; t += tickSeconds * 1000) {
    const label = tickSeconds < 60 ? time(t) : time(t).slice(0, 5);
    out += `<line x1="${x(t)}" x2="${x(t)}" y1="${T}" y2="${H - B}" stroke="#1f2a33"/><text class="tick" x="${x(t)}" y="${H - 6}" text-anchor="middle">${label}</text>`;
  }
  if (o.account.allotment > 0) out += `<line x1="${L}" x2="${W - R}" y1="${y(o.account.allotment)}" y2="${y(o.account.allotment)}" stroke="#d29922" stroke-dasharray="6 4"/>`;
  const points = s.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  points.push(`${x(now).toFixed(1)},${y(o.account.balance).toFixed(1)}`);
  out += `<polyline fill="none" stroke="#4cc2ff" stroke-width="2" points="${points.join(" ")}"/>`;
  if (projecting) out += `<line x1="${x(now)}" y1="${y(o.account.balance)}" x2="${x(d.atMilliseconds)}" y2="${y(0)}" stroke="#f85149" stroke-dasharray="4 4"/>`;
  svg.innerHTML = out;
}

function drawBars(id, buckets, width) {
  const svg = $(id); const H = 80; const W = sized(svg, H);
  const max = Math.max(1, ...buckets.map((b) => b[1]));
  const bw = W / buckets.length;
  svg.innerHTML = buckets.map((b, i) => {
    const h = (H - 14) * b[1] / max;
    return `<rect x="${i * bw + 1}" y="${H - 14 - h}" width="${bw - 2}" height="${h}" fill="#4cc2ff" data-credits="${b[1]}"><title>${time(b[0])}: ${b[1]} credits</title></rect>`;
  }).join("") + `<text x="0" y="${H - 2}">${time(buckets[0][0])}</text><text x="${W}" y="${H - 2}" text-anchor="end">max ${fmt.format(max)} / ${width / 1000} s</text>`;
}

$("accounts").addEventListener("click", (event) => { const el = event.target.closest(".acct"); if (el) select(el.dataset.account); });
$("filter").addEventListener("input", loadAccounts);
// The list holds the first 200 accounts; Enter opens the account typed, wherever it is.
$("filter").addEventListener("keydown", (event) => { if (event.key === "Enter" && $("filter").value.trim()) select($("filter").value.trim()); });
$("use-token").addEventListener("click", () => { state.token = $("token").value.trim(); sessionStorage.setItem("tollgate-token", state.token); loadAccounts(); refresh(); });
if (hashParams.get("account")) select(hashParams.get("account"));
loadAccounts();
setInterval(refresh, 1000);
setInterval(loadAccounts, 5000);
</script>
</body>
</html>
"""#
}
