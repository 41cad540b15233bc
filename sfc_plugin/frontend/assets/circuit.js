// The circuit page's behaviour (render.render_html): hover / click details, threshold sliders,
// URL-fragment settings. One copy per circuit on a page; each finds its own .sfc-circuit root.
(function () {
  "use strict";
  var root = document.currentScript && document.currentScript.closest(".sfc-circuit");
  if (!root) {  // scripts run by innerHTML insertion: the first circuit not set up yet
    root = document.querySelector(".sfc-circuit:not([data-sfc-ready])");
  }
  if (!root || root.hasAttribute("data-sfc-ready")) return;
  var data = JSON.parse(root.querySelector("script.sfc-data").textContent);
  var details = root.querySelector(".sfc-details");
  var nodeEls = {}, edgeEls = [];
  root.querySelectorAll("g.sfc-node").forEach(function (g) {
    nodeEls[g.getAttribute("data-node")] = g;
  });
  root.querySelectorAll("path.sfc-edge").forEach(function (p) { edgeEls.push(p); });
  var pinned = null, shown = null;

  function el(tag, cls, text, parent) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(x) { return (x >= 0 ? "+" : "") + Number(x).toPrecision(3); }
  function rgba(rgb, t) { return "rgba(" + rgb.join(",") + "," + t.toFixed(3) + ")"; }
  function visible(t) { return t.replace(/\n/g, "\u21b5"); }

  function edgeList(title, list, other) {
    if (!list.length) return;
    list.sort(function (a, b) { return Math.abs(b[2]) - Math.abs(a[2]); });
    el("h5", null, title + " (" + list.length + ")", details);
    list.slice(0, 6).forEach(function (e) {
      var line = el("div", "sfc-muted", null, details);
      el("span", null, fmt(e[2]) + " ", line).style.color = e[2] >= 0 ? "#2166ac" : "#b2182b";
      el("span", null, e[other], line);
    });
  }

  function tokens(title, list, rgb) {
    if (!list || !list.length) return;
    el("h5", null, title, details);
    var max = Math.max.apply(null, list.map(function (t) { return Math.abs(t.value); })) || 1;
    var box = el("div", null, null, details);
    list.forEach(function (t) {
      var chip = el("span", "sfc-chip", visible(t.token), box);
      chip.style.background = rgba(rgb, 0.15 + 0.5 * Math.abs(t.value) / max);
      chip.title = fmt(t.value);
    });
  }

  function contexts(list) {
    if (!list || !list.length) return;
    el("h5", null, "Top activating contexts", details);
    var max = 0;
    list.forEach(function (c) { c.values.forEach(function (v) { max = Math.max(max, v); }); });
    list.forEach(function (c) {
      var line = el("div", "sfc-ctx", null, details);
      c.tokens.forEach(function (t, i) {
        var v = c.values[i] || 0;
        var span = el("span", i === c.focus ? "sfc-focus-token" : null, visible(t), line);
        if (v > 0 && max > 0) span.style.background = rgba([255, 127, 14], 0.85 * v / max);
        span.title = v.toPrecision(3);
      });
    });
  }

  function describe(id) {
    details.textContent = "";
    root.querySelectorAll(".sfc-html").forEach(function (d) {
      d.hidden = d.getAttribute("data-for") !== id;
    });
    if (!id) {
      el("p", "sfc-muted", "Hover a node for details, click to pin it.", details);
      return;
    }
    var n = data.nodes[id];
    el("h4", null, id, details);
    if (n.kind === "metric") {
      el("div", null, "The metric: edges into it are the nodes' direct effects.", details);
    } else {
      var where = n.site + (n.position === null ? "" : ", position " + n.position) +
        (n.token === undefined ? "" : " (" + JSON.stringify(n.token) + ")");
      el("div", null, n.kind + " at " + where, details);
      var eff = el("div", null, (n.kind === "more" ? "total effect " : "effect ") + fmt(n.effect),
        details);
      eff.style.color = n.effect >= 0 ? "#2166ac" : "#b2182b";
    }
    if (n.members) {
      el("h5", null, n.members.length + " nodes collapsed here", details);
      n.members.slice(0, 12).forEach(function (m) {
        el("div", "sfc-muted", fmt(m[1]) + " " + m[0], details);
      });
    }
    var info = n.info || {};
    if (info.label) el("div", null, info.label, details).style.fontWeight = "bold";
    if (info.firing_rate !== undefined) {
      el("div", "sfc-muted", "fires on " + (100 * info.firing_rate).toPrecision(3) +
        "% of tokens" + (info.max_activation !== undefined ?
        ", max activation " + Number(info.max_activation).toPrecision(3) : ""), details);
    }
    contexts(info.contexts);
    tokens("Promoted output tokens", info.promoted, [33, 102, 172]);
    tokens("Suppressed output tokens", info.suppressed, [178, 24, 43]);
    edgeList("Upstream", data.edges.filter(function (e) { return e[1] === id; }), 0);
    edgeList("Downstream", data.edges.filter(function (e) { return e[0] === id; }), 1);
  }

  function focus(id) {
    if (id === shown) return;
    shown = id;
    root.classList.toggle("sfc-focused", !!id);
    root.querySelectorAll(".sfc-on, .sfc-selected").forEach(function (e) {
      e.classList.remove("sfc-on", "sfc-selected");
    });
    if (id) {
      nodeEls[id].classList.add("sfc-on", "sfc-selected");
      edgeEls.forEach(function (p) {
        var up = p.getAttribute("data-up"), down = p.getAttribute("data-down");
        if (up === id || down === id) {
          p.classList.add("sfc-on");
          nodeEls[up === id ? down : up].classList.add("sfc-on");
        }
      });
    }
    describe(id);
  }

  Object.keys(nodeEls).forEach(function (id) {
    var g = nodeEls[id];
    g.addEventListener("mouseenter", function () { if (!pinned) focus(id); });
    g.addEventListener("mouseleave", function () { if (!pinned) focus(null); });
    g.addEventListener("click", function (ev) {
      ev.stopPropagation();
      pinned = pinned === id ? null : id;
      focus(pinned || id);
    });
  });
  root.querySelector("svg").addEventListener("click", function () { pinned = null; focus(null); });
  // Fit the picture to the width by default if that keeps its text at least 3/4 size.
  var fit = root.querySelector(".sfc-fit-toggle"), svg = root.querySelector("svg");
  fit.checked = svg.width.baseVal.value * 0.75 <= root.querySelector(".sfc-graph").clientWidth;
  root.classList.toggle("sfc-fit", fit.checked);
  fit.addEventListener("change", function () { root.classList.toggle("sfc-fit", fit.checked); });

  // Thresholds: slider 0 shows everything, 1..1000 spans [min, max] |effect| on a log scale.
  function range(values) {
    var abs = values.map(Math.abs).filter(function (v) { return v > 0; });
    return abs.length ? [Math.min.apply(null, abs), Math.max.apply(null, abs)] : [0, 0];
  }
  var real = Object.keys(data.nodes).filter(function (id) {
    var k = data.nodes[id].kind;
    return k === "feature" || k === "error";
  });
  var sliders = {
    node: {input: root.querySelector(".sfc-node-t"), label: root.querySelector(".sfc-node-v"),
      range: range(real.map(function (id) { return data.nodes[id].effect; })), value: 0},
    edge: {input: root.querySelector(".sfc-edge-t"), label: root.querySelector(".sfc-edge-v"),
      range: range(data.edges.map(function (e) { return e[2]; })), value: 0}
  };
  function set(s, value) {
    var lo = s.range[0], hi = s.range[1];
    s.value = value;
    s.input.value = value <= 0 || !lo ? 0 : hi > lo ?
      Math.max(1, Math.min(1000, Math.round(1000 * Math.log(value / lo) / Math.log(hi / lo)))) :
      1000;
    s.label.textContent = value > 0 ? Number(value).toPrecision(3) : "0";
  }
  function fromSlider(s) {
    var p = Number(s.input.value), lo = s.range[0], hi = s.range[1];
    return p === 0 || !lo ? 0 : lo * Math.pow(hi / lo, p / 1000);
  }
  function apply() {
    var hidden = {}, nodes = 0, edges = 0;
    real.forEach(function (id) {
      var off = Math.abs(data.nodes[id].effect) < sliders.node.value;
      if (off) hidden[id] = true; else nodes++;
      nodeEls[id].classList.toggle("sfc-hidden", off);
    });
    edgeEls.forEach(function (p) {
      var off = Math.abs(Number(p.getAttribute("data-effect"))) < sliders.edge.value ||
        hidden[p.getAttribute("data-up")] || hidden[p.getAttribute("data-down")];
      if (!off) edges++;
      p.classList.toggle("sfc-hidden", !!off);
    });
    root.querySelector(".sfc-count").textContent = "showing " + nodes + " of " + real.length +
      " nodes, " + edges + " of " + edgeEls.length + " edges";
  }
  ["node", "edge"].forEach(function (k) {
    var s = sliders[k];
    s.input.disabled = !s.range[0];
    s.input.addEventListener("input", function () {
      s.value = fromSlider(s);
      s.label.textContent = s.value > 0 ? s.value.toPrecision(3) : "0";
      apply();
    });
  });

  // URL fragment: #node_threshold=0.05&edge_threshold=0.01&select=<node id>
  var params = new URLSearchParams(location.hash.slice(1));
  if (params.has("node_threshold")) set(sliders.node, Number(params.get("node_threshold")));
  if (params.has("edge_threshold")) set(sliders.edge, Number(params.get("edge_threshold")));
  apply();
  var select = params.get("select");
  if (select && nodeEls[select]) {
    pinned = select;
    focus(select);
    nodeEls[select].scrollIntoView({block: "nearest", inline: "center"});
  } else {
    describe(null);
  }
  root.setAttribute("data-sfc-ready", "true");
})();
