// The behaviours browser's controls (behaviours_page.behaviours_page_html): sort the cluster
// cards by one of their data-* values (largest first; cluster id smallest first; missing values
// last; ties by cluster id), optionally reversed, and show only the clusters with a top answer
// containing the filter text (case-insensitive; a typed "\n" matches the newline mark "↵").
// The URL fragment #sort=<key>&reverse=1&filter=<text> sets them on load and follows changes.
// Without the script the page still shows every cluster, largest first.
(function () {
  "use strict";
  var root = document.querySelector(".bh-browser");
  if (!root || root.hasAttribute("data-sfc-ready")) return;
  var list = root.querySelector(".bh-clusters");
  var cards = Array.prototype.slice.call(list.querySelectorAll(".bh-cluster"));
  var sortBox = root.querySelector(".bh-sort");
  var reverseBox = root.querySelector(".bh-reverse");
  var filterBox = root.querySelector(".bh-filter");
  var count = root.querySelector(".bh-count");
  var ascending = { cluster: true };

  function value(card, key) {
    var v = card.getAttribute("data-" + key);
    return v === null || v === "" ? NaN : Number(v);
  }

  function sort() {
    var key = sortBox.value;
    var sign = (ascending[key] ? 1 : -1) * (reverseBox.checked ? -1 : 1);
    cards.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      if (isNaN(x) !== isNaN(y)) return isNaN(x) ? 1 : -1;
      if (!isNaN(x) && x !== y) return sign * (x - y);
      return value(a, "cluster") - value(b, "cluster");
    });
    cards.forEach(function (card) { list.appendChild(card); });
  }

  function filter() {
    var text = filterBox.value.replace(/\\n/g, "\u21b5").toLowerCase();
    var shown = 0;
    cards.forEach(function (card) {
      var answers = (card.getAttribute("data-answers") || "").toLowerCase().split("\n");
      var keep = !text || answers.some(function (a) { return a.indexOf(text) >= 0; });
      card.hidden = !keep;
      if (keep) shown += 1;
    });
    count.textContent = (shown === cards.length ? "" : "showing " + shown + " of ") +
      cards.length + " clusters";
  }

  function remember() {
    var params = new URLSearchParams();
    params.set("sort", sortBox.value);
    if (reverseBox.checked) params.set("reverse", "1");
    if (filterBox.value) params.set("filter", filterBox.value);
    try {
      history.replaceState(null, "", "#" + params.toString());
    } catch (e) { /* some file:// contexts refuse; the page works without it */ }
  }

  function update() {
    sort();
    filter();
    remember();
  }

  var params = new URLSearchParams(location.hash.replace(/^#/, ""));
  var wanted = params.get("sort");
  if (wanted && sortBox.querySelector('option[value="' + wanted.replace(/["\\]/g, "") + '"]')) {
    sortBox.value = wanted;
  }
  reverseBox.checked = params.get("reverse") === "1";
  filterBox.value = params.get("filter") || "";
  sortBox.addEventListener("change", update);
  reverseBox.addEventListener("change", update);
  filterBox.addEventListener("input", update);
  sort();
  filter();
  root.setAttribute("data-sfc-ready", "true");
}());
