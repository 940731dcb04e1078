// The dashboard's page, style and script, embedded in the executable as strings (the machines
// have no internet, so no CDN, and the single binary reads no files at runtime). Plain DOM code:
// it polls /api/state every 1.5 s and redraws; names are set with textContent (VDI names are
// user input). The script uses no template literals so it can live inside this one.

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sheepdog</title>
<link rel="stylesheet" href="/dashboard.css">
</head>
<body>
<header>
  <h1>sheepdog</h1>
  <span id="summary">loading...</span>
  <span id="updated"></span>
</header>
<main>
  <section>
    <h2>Nodes</h2>
    <table id="nodes">
      <thead><tr><th>node</th><th>zone</th><th>vnodes</th><th>capacity</th><th>used</th>
      <th>free</th><th>objects</th><th>object share</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section class="row">
    <div>
      <h2>Recovery</h2>
      <div id="recovery"></div>
    </div>
    <div>
      <h2>Throughput (this sheep)</h2>
      <div id="throughput"></div>
      <svg id="spark" viewBox="0 0 120 30" preserveAspectRatio="none"></svg>
    </div>
  </section>
  <section>
    <h2>VDIs</h2>
    <ul id="vdis" class="tree"></ul>
  </section>
</main>
<script src="/dashboard.js"></script>
</body>
</html>
`;

export const DASHBOARD_CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f4; }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1.2em;
  background: #2d3b45; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
#updated { margin-left: auto; opacity: .7; font-size: .9em; }
#updated.stale { color: #f88; opacity: 1; }
main { padding: 0 1.2em 2em; }
h2 { font-size: 1em; margin: 1.2em 0 .4em; text-transform: uppercase; color: #556; }
table { border-collapse: collapse; background: #fff; min-width: 60%; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e3e3e0; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.me td:first-child::after { content: " (this sheep)"; color: #888; }
.bar { display: inline-block; height: .8em; background: #5b8db8; vertical-align: middle; }
.meter { width: 20em; height: 1em; background: #ddd; border-radius: 3px; overflow: hidden; }
.meter > div { height: 100%; background: #6a9f58; }
.row { display: flex; gap: 3em; flex-wrap: wrap; }
#spark { width: 20em; height: 3em; background: #fff; }
#spark polyline { fill: none; stroke: #5b8db8; stroke-width: 1; }
ul.tree, ul.tree ul { list-style: none; padding-left: 1.2em; margin: 0; }
ul.tree { padding-left: 0; }
li.vdi > span.name { font-weight: 600; }
li.vdi.snapshot > span.name { font-weight: normal; color: #666; }
li.vdi .meta { color: #888; margin-left: .6em; }
.status-ok { color: #8f8; } .status-bad { color: #f88; }
`;

export const DASHBOARD_JS = `
(function () {
"use strict";
var POLL_MS = 1500;
var prev = null;
var samples = [];

function el(tag, attrs, text) {
  var e = document.createElement(tag);
  for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function rate(n) { return bytes(n) + "/s"; }

function drawNodes(s) {
  var body = document.querySelector("#nodes tbody");
  body.textContent = "";
  var totalObjects = 0, totalVnodes = 0;
  s.nodes.forEach(function (n) { totalObjects += n.objects || 0; totalVnodes += n.vnodes; });
  s.nodes.forEach(function (n) {
    var tr = el("tr", { "class": "node" + (n.me ? " me" : ""), "data-id": n.id });
    var used = n.size !== null && n.free !== null ? n.size - n.free : null;
    var share = totalObjects ? (n.objects || 0) / totalObjects : 0;
    var vshare = totalVnodes ? n.vnodes / totalVnodes : 0;
    tr.appendChild(el("td", {}, n.id));
    tr.appendChild(el("td", {}, n.zone));
    tr.appendChild(el("td", { title: "share of the ring" },
      n.vnodes + " (" + (vshare * 100).toFixed(1) + "%)"));
    tr.appendChild(el("td", {}, bytes(n.space)));
    tr.appendChild(el("td", {}, bytes(used)));
    tr.appendChild(el("td", {}, bytes(n.free)));
    tr.appendChild(el("td", { "class": "objects" }, n.objects === null ? "?" : n.objects));
    var td = el("td");
    var bar = el("span", { "class": "bar" });
    bar.style.width = (share * 10).toFixed(2) + "em";
    td.appendChild(bar);
    td.appendChild(document.createTextNode(" " + (share * 100).toFixed(1) + "%"));
    tr.appendChild(td);
    body.appendChild(tr);
  });
}

function drawRecovery(s) {
  var r = s.recovery, box = document.getElementById("recovery");
  box.textContent = "";
  box.setAttribute("data-running", r.running ? "1" : "0");
  var frac = r.total ? r.done / r.total : 1;
  var m = el("div", { "class": "meter" });
  var fill = el("div");
  fill.style.width = (frac * 100).toFixed(1) + "%";
  m.appendChild(fill);
  box.appendChild(m);
  var text = r.running
    ? "recovering: " + r.done + " of " + r.total + " objects, " + (r.total - r.done) +
      " to go, " + r.rate.toFixed(1) + " objects/s"
    : "idle (last recovery: " + r.done + " of " + r.total + " objects)";
  box.appendChild(el("div", { id: "recovery-text" }, text));
}

function drawThroughput(s) {
  var box = document.getElementById("throughput");
  var c = s.counters;
  if (prev && s.time > prev.time) {
    var dt = (s.time - prev.time) / 1000, p = prev.counters;
    var nbdR = (c.nbdRead - p.nbdRead) / dt, nbdW = (c.nbdWrite - p.nbdWrite) / dt;
    var gwIn = (c.gwRx - p.gwRx) / dt, gwOut = (c.gwTx - p.gwTx) / dt;
    var iops = (c.gwRead + c.gwWrite - p.gwRead - p.gwWrite) / dt;
    box.textContent = "NBD read " + rate(nbdR) + ", write " + rate(nbdW) + "; gateway in " +
      rate(gwIn) + ", out " + rate(gwOut) + ", " + iops.toFixed(0) + " requests/s";
    samples.push(nbdR + nbdW + gwIn + gwOut);
    if (samples.length > 60) samples.shift();
    var max = Math.max.apply(null, samples.concat([1]));
    var pts = samples.map(function (v, i) {
      return (i * 2).toFixed(0) + "," + (30 - v / max * 28).toFixed(1);
    }).join(" ");
    var svg = document.getElementById("spark");
    svg.innerHTML = "";
    var line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts);
    svg.appendChild(line);
  } else if (!prev) box.textContent = "measuring...";
  prev = s;
}

function drawVdis(s) {
  var root = document.getElementById("vdis");
  root.textContent = "";
  var byVid = {}, kids = {};
  s.vdis.forEach(function (v) { byVid[v.vid] = v; });
  var roots = [];
  s.vdis.forEach(function (v) {
    if (v.parent && byVid[v.parent]) (kids[v.parent] = kids[v.parent] || []).push(v);
    else roots.push(v);
  });
  function item(v) {
    var li = el("li", {
      "class": "vdi" + (v.snapshot ? " snapshot" : ""),
      "data-name": v.name,
      "data-vid": v.vid.toString(16),
    });
    var label = v.snapshot ? v.name + "@" + (v.tag || v.snapId) : v.name;
    li.appendChild(el("span", { "class": "name" }, label));
    var meta = bytes(v.size) + ", " + v.copies + " copies" +
      (v.snapshot ? ", snapshot " + v.snapId : ", current");
    li.appendChild(el("span", { "class": "meta" }, meta));
    var ch = kids[v.vid];
    if (ch) {
      var ul = el("ul");
      ch.forEach(function (c) { ul.appendChild(item(c)); });
      li.appendChild(ul);
    }
    return li;
  }
  roots.forEach(function (v) { root.appendChild(item(v)); });
  if (!s.vdis.length) root.appendChild(el("li", { "class": "empty" }, "no VDIs"));
}

function draw(s) {
  var sum = document.getElementById("summary");
  sum.textContent = "cluster " + s.cluster.status + (s.cluster.formatted ? "" : " (not formatted)") +
    ", epoch " + s.cluster.epoch + ", " + s.cluster.nodes + " nodes, " + s.cluster.copies +
    " copies, " + s.vdis.length + " VDIs; sheep " + s.me + " (version " + s.version + ")";
  sum.className = s.cluster.status === "ok" ? "status-ok" : "status-bad";
  sum.setAttribute("data-epoch", s.cluster.epoch);
  drawNodes(s);
  drawRecovery(s);
  drawThroughput(s);
  drawVdis(s);
  var up = document.getElementById("updated");
  up.textContent = "updated " + new Date(s.time).toLocaleTimeString();
  up.className = "";
}

function poll() {
  fetch("/api/state", { cache: "no-store" })
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(draw)
    .catch(function (e) {
      var up = document.getElementById("updated");
      up.textContent = "no answer from the sheep: " + e.message;
      up.className = "stale";
    })
    .then(function () { setTimeout(poll, POLL_MS); });
}
poll();
})();
`;
