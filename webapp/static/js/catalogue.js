// The catalogue follows its tools by itself: it polls /catalogue/state and puts in each card
// whose state changed the card the server rendered (the same markup as the page), adds the
// tools shared since, and drops those no longer there. Every second while something starts
// or stops, every ten seconds otherwise, and not at all while the tab is hidden.
(function () {
  "use strict";
  var lists = { tools: document.getElementById("tools"), shared: document.getElementById("shared") };
  var sharedTitle = document.getElementById("shared-with-me");
  var announcer = document.getElementById("live-announcer");
  if (!lists.tools || !lists.shared) { return; }
  var delay = Number(lists.tools.dataset.pollSeconds || 10) * 1000;
  var timer = null;

  function cardFor(list, key) {
    for (var card = list.firstElementChild; card; card = card.nextElementSibling) {
      if (card.dataset.card === key) { return card; }
    }
    return null;
  }

  function build(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html.trim();
    return holder.content.firstElementChild;
  }

  function announce(entry) {
    var said = entry.name + ": " + (entry.label || "not started");
    if (entry.error) { said += ". " + entry.error; }
    announcer.textContent = said;
  }

  function replace(old, entry) {
    var fresh = build(entry.html);
    var hadFocus = old.contains(document.activeElement);
    var openDetails = old.querySelector("details[open]") !== null;
    old.replaceWith(fresh);
    if (openDetails && fresh.querySelector("details")) { fresh.querySelector("details").open = true; }
    if (hadFocus) {
      // Keep the keyboard where it was: on the card's first action that is still there.
      var target = fresh.querySelector(".actions a, .actions button, .actions select");
      if (target) { target.focus(); }
    }
    announce(entry);
    return fresh;
  }

  function sync(list, entries) {
    var previous = null;
    entries.forEach(function (entry) {
      var card = cardFor(list, entry.key);
      if (!card) {
        card = build(entry.html);
        announce(entry);
      } else if (card.dataset.signature !== entry.signature) {
        card = replace(card, entry);
      }
      var expected = previous ? previous.nextElementSibling : list.firstElementChild;
      if (card !== expected) { list.insertBefore(card, expected); }
      previous = card;
    });
    var extra = previous ? previous.nextElementSibling : list.firstElementChild;
    while (extra) {
      var next = extra.nextElementSibling;
      extra.remove();
      extra = next;
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    if (!document.hidden) { timer = window.setTimeout(poll, delay); }
  }

  function poll() {
    fetch("/catalogue/state", {
      headers: { "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (state) {
        Object.keys(lists).forEach(function (name) {
          sync(lists[name], state.cards.filter(function (entry) { return entry.list === name; }));
        });
        var noneShared = lists.shared.children.length === 0;
        lists.shared.hidden = noneShared;
        if (sharedTitle) { sharedTitle.hidden = noneShared; }
        delay = state.poll_seconds * 1000;
        schedule();
      })
      .catch(function () {
        delay = 5000;  // signed out, or Berth unreachable for a moment: keep trying, gently
        schedule();
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { window.clearTimeout(timer); } else { poll(); }
  });
  schedule();
})();
