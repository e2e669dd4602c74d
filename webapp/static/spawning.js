// The spawning page: poll the launch's status and open the tool the moment it answers.
// The poll carries X-Berth-No-Launch, so a tab left open never starts a stopped tool again.
(function () {
  "use strict";
  var panel = document.getElementById("spawning");
  var progress = document.getElementById("progress");
  var statusLine = document.getElementById("status-line");
  var stopped = document.getElementById("stopped");
  var heading = document.getElementById("heading");
  var shown = progress.children.length;
  var delay = 100;
  var started = Date.now();
  // Set by the not-answering page's restart (webapp/lifecycle/views.py RESTART_FRAGMENT): once
  // the stop is done, open the address again, which starts the tool. Any other stopped tool
  // stays stopped until someone asks.
  var restarting = window.location.hash === "#berth-restart";

  function reopen() {
    if (restarting) {
      window.location.replace(window.location.pathname + window.location.search);
    } else {
      window.location.reload();
    }
  }

  function render(events) {
    for (; shown < events.length; shown++) {
      var item = document.createElement("li");
      item.textContent = events[shown].message;
      progress.appendChild(item);
    }
  }

  function poll() {
    fetch("/__berth/status", {
      headers: { "X-Berth-No-Launch": "1", "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (status) {
        render(status.events || []);
        panel.dataset.state = status.state || "";
        if (status.state === "RUNNING" || status.state === "FAILED") {
          reopen();
          return;
        }
        if ((status.state === "STOPPED" || status.state === null) && restarting) {
          reopen();  // a navigation: the web app starts the tool afresh
          return;
        }
        if (status.state === "STOPPED" || status.state === null) {
          heading.textContent = heading.dataset.stoppedText;
          statusLine.textContent = "";
          stopped.hidden = false;
          panel.classList.add("idle");
          return;
        }
        // Every 100 ms for the first half minute (most tools start within it), then slower.
        delay = Date.now() - started < 30000 ? 100 : 500;
        window.setTimeout(poll, delay);
      })
      .catch(function () {
        statusLine.textContent = "Lost contact with Berth; retrying…";
        window.setTimeout(poll, 2000);
      });
  }

  window.setTimeout(poll, delay);
})();
