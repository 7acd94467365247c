// gdispatch's status page: polls /api/status and draws it, a table per set and a small
// chart per destination (SVG built here). Every text from the server is set with
// textContent or as an attribute value, never parsed as markup: URIs and descriptions
// come from the list file, reasons from the network.
// With [http] token set, the DX/AP buttons POST /api/state with the bearer token the
// operator typed, kept in sessionStorage (this tab only).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "gdispatch-token";
  const CHART_W = 240, CHART_H = 44;
  const params = new URLSearchParams(location.search);
  // ?refresh=SECONDS: how often to poll (default 2 s), 0.5 to 60.
  const refresh = Math.min(60, Math.max(0.5, parseFloat(params.get("refresh")) || 2));

  const $ = (id) => document.getElementById(id);
  let last = null;          // the last /api/status answer
  const rows = new Map();   // "set/idx/uri" -> {tr, cells...}
  const tables = new Map(); // set id -> {section, tbody}

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function say(text, kind) {
    const m = $("message");
    m.textContent = text;
    m.className = kind || "";
    m.hidden = !text;
  }

  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + Math.floor(s % 60) + "s";
  }

  function ms(v) {
    return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms";
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString();
  }

  // ------------------------------------------------------------------ the chart

  function chart(dest, status) {
    const g = svg("svg", {width: CHART_W, height: CHART_H, viewBox: `0 0 ${CHART_W} ${CHART_H}`, class: "chart"});
    const times = status.samples;
    const n = times.length;
    const step = status.sample_interval || 2;
    // The last `window` seconds, or since the first sample when the process is younger.
    const t1 = status.now;
    const t0 = Math.min(t1 - 2 * step, Math.max(t1 - (status.window || 300), n ? times[0] - step : t1));
    const span = t1 - t0;
    const x = (t) => ((t - t0) / span) * CHART_W;
    // The samples are aligned with the end of `times`: a destination that joined the
    // list later has fewer.
    const off = n - dest.cps.length;
    const at = (i) => times[i + off];
    // Not active: a band behind the lines.
    dest.state.forEach((s, i) => {
      if (s && s !== "A") {
        g.appendChild(svg("rect", {class: "down-band", x: x(at(i) - step), y: 0,
                                   width: Math.max(1, (step / span) * CHART_W), height: CHART_H}));
      }
    });
    // Each line on its own scale: its highest value at the top.
    const cpsTop = Math.max(0, ...dest.cps.filter((v) => v !== null));
    const cpsMax = cpsTop || 1;
    const rtts = dest.rtt.filter((v) => v !== null);
    const rttMax = Math.max(0, ...rtts) || 1;
    const y = (v, max) => CHART_H - 2 - (v / max) * (CHART_H - 12);
    // calls/s: a filled area, from the first sample that has a value.
    let pts = [];
    dest.cps.forEach((v, i) => { if (v !== null) pts.push([x(at(i)), y(v, cpsMax)]); });
    if (pts.length > 1) {
      const d = `M${pts[0][0]},${CHART_H} ` + pts.map((p) => `L${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" ")
        + ` L${pts[pts.length - 1][0]},${CHART_H} Z`;
      g.appendChild(svg("path", {class: "cps-area", d: d}));
    }
    // ping round-trip: a line through the samples that had answered pings.
    pts = [];
    dest.rtt.forEach((v, i) => { if (v !== null) pts.push([x(at(i)), y(v, rttMax)]); });
    if (pts.length > 1) {
      g.appendChild(svg("polyline", {class: "rtt-line", points: pts.map((p) => p.map((c) => c.toFixed(1)).join(",")).join(" ")}));
    }
    pts.forEach((p) => g.appendChild(svg("circle", {class: "rtt-dot", cx: p[0].toFixed(1), cy: p[1].toFixed(1), r: 1.5})));
    const lastCps = [...dest.cps].reverse().find((v) => v !== null);
    const label = svg("text", {x: 2, y: 9, class: "chart-label"});
    label.textContent = `max ${cpsTop} calls/s · ${rtts.length ? ms(rttMax) : "no pings answered"}`;
    g.appendChild(label);
    const title = svg("title", {});
    title.textContent = `the last ${Math.round(span)} s: now ${lastCps === undefined ? "–" : lastCps} calls/s`;
    g.appendChild(title);
    return g;
  }

  // ------------------------------------------------------------------ the tables

  function setTable(id) {
    let t = tables.get(id);
    if (t) return t;
    const section = el("section", "set");
    section.dataset.set = id;
    section.appendChild(el("h2", null, `Set ${id}`));
    const table = el("table");
    const head = el("tr");
    for (const h of ["State", "Destination", "Active calls", "Latency", "Sent / answered / failed", "Calls/s and ping round-trip", ""]) {
      head.appendChild(el("th", null, h));
    }
    table.appendChild(el("thead")).appendChild(head);
    const tbody = table.appendChild(el("tbody"));
    section.appendChild(table);
    t = {section, tbody};
    tables.set(id, t);
    return t;
  }

  function newRow(setid, dest) {
    const tr = el("tr", "dest");
    tr.dataset.set = setid;
    tr.dataset.idx = dest.idx;
    tr.dataset.uri = dest.uri;
    tr.dataset.duid = dest.duid;
    const r = {tr};
    r.state = tr.appendChild(el("td", "state"));
    const who = tr.appendChild(el("td", "who"));
    r.uri = who.appendChild(el("div", "uri"));
    r.meta = who.appendChild(el("div", "meta"));
    r.load = tr.appendChild(el("td", "num load"));
    r.latency = tr.appendChild(el("td", "num latency"));
    r.calls = tr.appendChild(el("td", "num calls"));
    r.chart = tr.appendChild(el("td", "chart-cell"));
    r.actions = tr.appendChild(el("td", "actions"));
    for (const [state, text, hint] of [["dx", "DX", "disable (no calls, no pings)"], ["ap", "AP", "active, probing"]]) {
      const b = r.actions.appendChild(el("button", "set-state", text));
      b.type = "button";
      b.dataset.state = state;
      b.title = `Set ${hint}`;
      b.addEventListener("click", () => setState(Number(tr.dataset.set), Number(tr.dataset.idx), tr.dataset.uri, state));
    }
    return r;
  }

  function fillRow(r, dest, status) {
    const flags = dest.flags;
    r.state.textContent = flags;
    r.state.className = "state st-" + flags.charAt(0);
    r.state.title = {A: "active", I: "inactive", D: "disabled", T: "trying"}[flags.charAt(0)] +
      (flags.charAt(1) === "P" ? ", probing" : flags.charAt(1) === "N" ? ", not pinged" : "") +
      (dest.reason ? ": " + dest.reason : "");
    r.uri.textContent = dest.uri;
    const meta = [];
    if (dest.duid) meta.push("duid " + dest.duid);
    meta.push("priority " + dest.priority);
    if (dest.description) meta.push(dest.description);
    if (dest.reason) meta.push(dest.reason);
    r.meta.textContent = meta.join(" · ");
    r.load.textContent = dest.load;
    const lat = dest.latency;
    r.latency.textContent = lat && lat.AVG ? ms(lat.EST) : "–";
    r.latency.title = lat ? `avg ${ms(lat.AVG)}, std ${ms(lat.STD)}, max ${ms(lat.MAX)}, ${lat.TIMEOUT} ping(s) timed out` : "";
    r.calls.textContent = `${dest.calls.sent} / ${dest.calls.answered} / ${dest.calls.failed}`;
    r.chart.replaceChildren(chart(dest, status));
    for (const b of r.actions.children) b.hidden = !status.writable;
  }

  function render(status) {
    last = status;
    $("summary").textContent = `${status.version} · up ${duration(status.uptime)}` +
      (status.ping_active ? "" : " · pings paused");
    $("updated").textContent = "updated " + clock(status.now);
    $("updated").className = "muted";
    $("mode").textContent = status.writable ? (token() ? "token set" : "read-only until a token is given") : "read-only";
    $("token-button").hidden = !status.writable;
    if (status.window) $("window").textContent = Math.round(status.window / 60) + " minutes";
    if (status.sample_interval) $("interval").textContent = status.sample_interval + " s";

    const container = $("sets");
    const seenSets = new Set(), seenRows = new Set();
    // In dispatcher.list's order; a row is moved only when it is out of place, so that
    // a button under the pointer stays where it is.
    const place = (parent, node, i) => {
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
    };
    status.sets.forEach((set, si) => {
      const t = setTable(set.id);
      seenSets.add(set.id);
      place(container, t.section, si);
      set.destinations.forEach((dest, di) => {
        const key = `${set.id}/${dest.idx}/${dest.uri}`;
        let r = rows.get(key);
        if (!r) { r = newRow(set.id, dest); rows.set(key, r); }
        seenRows.add(key);
        place(t.tbody, r.tr, di);
        fillRow(r, dest, status);
      });
    });
    for (const [key, r] of rows) if (!seenRows.has(key)) { r.tr.remove(); rows.delete(key); }
    for (const [id, t] of tables) if (!seenSets.has(id)) { t.section.remove(); tables.delete(id); }

    const list = $("changes");
    const items = status.changes.slice().reverse().map((c) => {
      const li = el("li", "change-" + c.kind + (c.ok === false ? " failed" : ""));
      li.appendChild(el("time", null, clock(c.time)));
      if (c.kind === "state") {
        li.appendChild(el("span", "what", ` set ${c.set} ${c.uri}${c.duid ? " (" + c.duid + ")" : ""} `));
        li.appendChild(el("span", "state st-" + c.from.charAt(0), c.from));
        li.appendChild(el("span", null, " → "));
        li.appendChild(el("span", "state st-" + c.to.charAt(0), c.to));
        li.appendChild(el("span", "why", " " + c.reason));
      } else {
        li.appendChild(el("span", "what", c.ok ? " list reloaded " : " list NOT reloaded "));
        li.appendChild(el("span", "why", `(${c.reason}): ${c.result}`));
      }
      return li;
    });
    list.replaceChildren(...items);
    if (!items.length) list.appendChild(el("li", "muted", "none since the start"));
  }

  // ------------------------------------------------------------------ polling

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      const r = await fetch("api/status", {cache: "no-store"});
      if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
      render(await r.json());
    } catch (e) {
      $("updated").textContent = "not updated: " + e.message;
      $("updated").className = "error";
    }
    timer = setTimeout(poll, refresh * 1000);
  }

  // ------------------------------------------------------------------ changing a state

  async function setState(set, idx, uri, state) {
    const headers = {"Content-Type": "application/json"};
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    try {
      const r = await fetch("api/state", {method: "POST", headers,
                                          body: JSON.stringify({set, idx, uri, state})});
      let body = {};
      try { body = await r.json(); } catch (e) { /* not JSON */ }
      if (r.ok) {
        say(`set ${set} ${uri}: now ${body.flags}`, "ok");
      } else {
        say(`refused (${r.status}): ${body.error || r.statusText}`, "error");
        if (r.status === 401) showTokenForm();
      }
    } catch (e) {
      say("not sent: " + e.message, "error");
    }
    poll();
  }

  function showTokenForm() {
    $("token-form").hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
  }

  function init() {
    $("token-button").addEventListener("click", showTokenForm);
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      try { sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim()); } catch (e) { /* private mode */ }
      $("token-input").value = "";
      $("token-form").hidden = true;
      say("token kept for this tab", "ok");
      if (last) render(last);
    });
    $("token-forget").addEventListener("click", () => {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ }
      $("token-form").hidden = true;
      say("token forgotten", "ok");
      if (last) render(last);
    });
    $("token-cancel").addEventListener("click", () => { $("token-form").hidden = true; });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
