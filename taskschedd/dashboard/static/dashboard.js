// taskschedd dashboard: live updates from the server's event stream (/live).
// Data from the store is only ever set as text (textContent), never parsed as HTML
// except for whole pages of this same origin, which the server has escaped.
(function () {
  "use strict";
  var body = document.body;
  var base = body.getAttribute("data-base") || "";
  var page = body.getAttribute("data-page");
  var stateEl = document.getElementById("live-state");
  if (!window.EventSource || page === "login" || page === "error" || page === "confirm" || page === "purge") {
    return;
  }

  function setState(text, cls) {
    if (!stateEl) return;
    stateEl.textContent = text;
    stateEl.className = "live-state " + cls;
  }

  function cell(text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function link(href, text, cls) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (cls) a.className = cls;
    return a;
  }

  function statusSpan(name) {
    var s = document.createElement("span");
    s.className = "status s-" + name.toLowerCase();
    s.textContent = name;
    return s;
  }

  function n(map, key) { return map[key] || 0; }

  function fillTable(id, rows, param) {
    var table = document.getElementById(id);
    if (!table) return;
    var tbody = document.createElement("tbody");
    rows.forEach(function (q) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.appendChild(link(base + "/jobs?" + param + "=" + encodeURIComponent(q.name), q.name,
        param === "class" ? "mono" : ""));
      tr.appendChild(td);
      var s = q.by_status;
      tr.appendChild(cell(String(n(s, "WAITING") + n(s, "POSTPONED"))));
      tr.appendChild(cell(String(n(s, "PROCESSING"))));
      tr.appendChild(cell(String(n(s, "DONE"))));
      tr.appendChild(cell(String(n(s, "FAILED") + n(s, "TIMEOUT"))));
      tr.appendChild(cell(String(q.total)));
      tbody.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = cell("No jobs.");
      td.colSpan = 6;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    table.replaceChild(tbody, table.tBodies[0]);
  }

  function ago(ts, now) {
    var d = Math.max(0, now - ts);
    if (d < 10) return d.toFixed(1) + "s ago";
    if (d < 3600) return Math.floor(d / 60) + "m" + Math.floor(d % 60) + "s ago";
    return Math.floor(d / 3600) + "h" + Math.floor((d % 3600) / 60) + "m ago";
  }

  function fillNodes(nodes, now) {
    var table = document.getElementById("nodes");
    if (!table) return;
    var tbody = document.createElement("tbody");
    nodes.forEach(function (nd) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-node", nd.name);
      tr.appendChild(cell(nd.name));
      tr.appendChild(cell(nd.host + " (pid " + nd.pid + ")"));
      var st = document.createElement("td");
      var sp = document.createElement("span");
      sp.className = "status " + (nd.live ? "s-done" : "s-failed");
      sp.textContent = nd.live ? "live" : "gone";
      st.appendChild(sp);
      tr.appendChild(st);
      tr.appendChild(cell(nd.busy + " / " + nd.idle));
      tr.appendChild(cell(nd.queues.join(", ")));
      tr.appendChild(cell(ago(nd.heartbeat, now)));
      var run = document.createElement("td");
      if (!nd.jobs.length) run.textContent = "-";
      nd.jobs.forEach(function (j) {
        var div = document.createElement("div");
        div.appendChild(document.createTextNode(j.worker + ": "));
        div.appendChild(link(base + "/jobs/" + encodeURIComponent(j.id), j.id, "mono"));
        div.appendChild(document.createTextNode(" " + j["class"]));
        run.appendChild(div);
      });
      tr.appendChild(run);
      tbody.appendChild(tr);
    });
    if (!nodes.length) {
      var tr = document.createElement("tr");
      var td = cell("No node has registered with this store.");
      td.colSpan = 7;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    table.replaceChild(tbody, table.tBodies[0]);
  }

  var SVG = "http://www.w3.org/2000/svg";
  function drawChart(chart) {
    var svg = document.getElementById("chart");
    if (!svg) return;
    var peak = 1;
    chart.minutes.forEach(function (m) { peak = Math.max(peak, m.done + m.failed); });
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    chart.minutes.forEach(function (m, i) {
      var dh = 100 * m.done / peak, fh = 100 * m.failed / peak;
      var r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", "bar-done");
      r.setAttribute("x", String(i * 10));
      r.setAttribute("y", String(100 - dh));
      r.setAttribute("width", "8");
      r.setAttribute("height", String(dh));
      var t = document.createElementNS(SVG, "title");
      t.textContent = new Date(m.t * 1000).toISOString().slice(11, 16) + "Z: " + m.done + " done, " + m.failed + " failed";
      r.appendChild(t);
      svg.appendChild(r);
      var f = document.createElementNS(SVG, "rect");
      f.setAttribute("class", "bar-failed");
      f.setAttribute("x", String(i * 10));
      f.setAttribute("y", String(100 - dh - fh));
      f.setAttribute("width", "8");
      f.setAttribute("height", String(fh));
      svg.appendChild(f);
    });
    var peakEl = document.getElementById("chart-peak");
    if (peakEl) peakEl.textContent = String(peak);
    var sum = document.getElementById("chart-summary");
    if (sum) {
      sum.textContent = chart.done + " done, " + chart.failed + " failed (" +
        (chart.failure_rate * 100).toFixed(1) + " % failure rate)";
    }
  }

  function onOverview(snap) {
    var counts = snap.counts;
    var total = document.querySelector('[data-count="TOTAL"]');
    if (total) total.textContent = String(counts.total);
    Object.keys(counts.by_status).forEach(function (name) {
      var el = document.querySelector('[data-count="' + CSS.escape(name) + '"]');
      if (el) el.textContent = String(counts.by_status[name]);
    });
    fillTable("queues", counts.queues, "queue");
    fillTable("classes", counts.classes, "class");
    fillNodes(snap.nodes, snap.time);
    drawChart(snap.chart);
  }

  // The fresh <main> in place of the old, except its forms: a filter being typed into
  // keeps its text and focus (the parts are swapped one by one when their forms match).
  function replaceMain(old, fresh) {
    var before = old.children, after = fresh.children;
    var same = before.length === after.length && before.length > 0;
    for (var i = 0; same && i < before.length; i++) {
      // getAttribute: a form's .id is its field named "id" (the filters have one).
      same = (before[i].tagName === "FORM") === (after[i].tagName === "FORM") &&
        before[i].getAttribute("id") === after[i].getAttribute("id");
    }
    if (!same) { old.replaceWith(fresh); return; }
    Array.prototype.slice.call(after).forEach(function (node, j) {
      var was = old.children[j];
      if (was.tagName !== "FORM") was.replaceWith(node); else fresh.removeChild(node);
    });
  }

  // Replaces <main> with that of the same page fetched again (the server's escaped HTML).
  var refreshing = false, again = false, lastRefresh = 0;
  function refreshMain() {
    if (refreshing) { again = true; return; }
    var wait = Math.max(0, lastRefresh + 1000 - Date.now());
    refreshing = true;
    setTimeout(function () {
      lastRefresh = Date.now();
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.querySelector("main"), old = document.querySelector("main");
          if (fresh && old) replaceMain(old, document.adoptNode(fresh));
        })
        .catch(function () {})
        .then(function () {
          refreshing = false;
          if (again) { again = false; refreshMain(); }
        });
    }, wait);
  }

  function onJobs(events) {
    if (page === "job") {
      var el = document.getElementById("job-id");
      var id = el && el.getAttribute("data-job-id");
      if (events.some(function (e) { return e.id === id; })) refreshMain();
      return;
    }
    if (page !== "jobs") return;
    var table = document.getElementById("jobs");
    if (!table) return;
    if (table.getAttribute("data-first-page") === "yes") { refreshMain(); return; }
    events.forEach(function (e) {
      var row = table.querySelector('tr[data-job-id="' + CSS.escape(e.id) + '"]');
      if (!row) return;
      var st = row.querySelector(".st");
      if (st) { st.textContent = ""; st.appendChild(statusSpan(e.status)); }
      var at = row.querySelector(".at");
      if (at) at.textContent = String(e.attempt);
    });
  }

  var source = new EventSource(base + "/live");
  setState("connecting", "wait");
  source.addEventListener("open", function () {
    setState("live", "on");
    // Changes between this page's rendering (or a lost connection) and the stream's
    // start were pushed to nobody: read the page once more now that none is missed.
    if (page === "jobs" || page === "job") refreshMain();
  });
  source.addEventListener("error", function () { setState("reconnecting", "off"); });
  source.addEventListener("overview", function (m) {
    setState("live", "on");
    if (page === "overview" || page === "nodes") {
      var snap = JSON.parse(m.data);
      if (page === "overview") onOverview(snap); else fillNodes(snap.nodes, snap.time);
    }
  });
  source.addEventListener("jobs", function (m) { onJobs(JSON.parse(m.data)); });
  source.addEventListener("resync", function () { if (page === "jobs" || page === "job") refreshMain(); });
  source.addEventListener("problem", function () { setState("store unreachable", "off"); });
  window.addEventListener("beforeunload", function () { source.close(); });
})();
