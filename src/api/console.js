// Live updates for the console: the case feed over Server-Sent Events; a
// page refreshes when a case it shows moves (the list: any case, and a new
// one; a case page: its own). Without the feed, a refresh every 10 s, and the
// page says so. Never while someone is typing into a form.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var match = location.pathname.match(/^\/ui\/case\/([0-9a-f-]{36})$/);
  var own = match ? match[1] : null;
  // Only the list and a case page follow; an action's answer (a POST's
  // result) must never be reloaded, which would send the action again.
  if (!own && location.pathname !== "/ui/cases") return;
  function busy() {
    var inputs = document.querySelectorAll("form input:not([type=hidden])");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value || inputs[i] === document.activeElement) return true;
    }
    return false;
  }
  // At most one reload every 2 s: a busy feed must not keep the page
  // reloading, nor the server rendering it.
  var loaded = Date.now();
  var pending = null;
  // A person leaving the page (a click, a form) goes where they asked: a
  // reload due now must not take them back.
  var leaving = false;
  var missed = false;
  window.addEventListener("beforeunload", function () {
    leaving = true;
    if (pending) clearTimeout(pending);
    pending = null;
    // Still here after a while: that navigation did not happen (a
    // download, a cancelled one); follow the feed again.
    setTimeout(function () {
      leaving = false;
      if (missed) { missed = false; refresh(); }
    }, 5000);
  });
  // While someone types, the reload waits (and is not forgotten).
  function refresh(delay) {
    if (leaving) { missed = true; return; }
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      if (busy()) refresh(2000);
      else location.reload();
    }, typeof delay === "number" ? delay : Math.max(0, loaded + 2000 - Date.now()));
  }
  function poll() {
    if (live) live.textContent = "Live updates are unavailable here; this page refreshes every 10 s.";
    setInterval(function () { refresh(); }, 10000);
  }
  if (!window.EventSource) return poll();
  // What the page shows, so that a move made while it loaded is not lost.
  var shown = document.querySelector("[data-mark]");
  var query = shown ? "?mark=" + encodeURIComponent(shown.getAttribute("data-mark")) : "";
  if (shown && own) query += "&case=" + own;
  var feed = new EventSource("/ui/events" + query);
  feed.addEventListener("stale", function () { refresh(); });
  feed.addEventListener("open", function () {
    if (live) live.textContent = "Live: this page follows the cases as they move.";
  });
  feed.addEventListener("transition", function (e) {
    var t = JSON.parse(e.data);
    if (!own || t.case_id === own) refresh();
  });
  feed.addEventListener("created", function () {
    if (!own) refresh();
  });
  feed.onerror = function () {
    feed.close();
    poll();
  };
})();
