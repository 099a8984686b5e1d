// Live updates for the console: the transition feed over Server-Sent
// Events; a page refreshes when a case it shows moves (the list: any case;
// a case page: its own). Without the feed, a refresh every 10 s, and the
// page says so. Never while someone is typing into a form.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var match = location.pathname.match(/^\/ui\/case\/([0-9a-f-]{36})$/);
  var own = match ? match[1] : null;
  function busy() {
    var inputs = document.querySelectorAll("form input:not([type=hidden])");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value || inputs[i] === document.activeElement) return true;
    }
    return false;
  }
  function refresh() {
    if (!busy()) location.reload();
  }
  function poll() {
    if (live) live.textContent = "Live updates are unavailable here; this page refreshes every 10 s.";
    setInterval(refresh, 10000);
  }
  if (!window.EventSource) return poll();
  var feed = new EventSource("/ui/events");
  feed.addEventListener("open", function () {
    if (live) live.textContent = "Live: this page follows the cases as they move.";
  });
  feed.addEventListener("transition", function (e) {
    var t = JSON.parse(e.data);
    if (!own || t.case_id === own) refresh();
  });
  feed.onerror = function () {
    feed.close();
    poll();
  };
})();
