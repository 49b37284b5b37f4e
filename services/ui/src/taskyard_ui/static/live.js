// Live parts of a page: follows the UI's SSE stream named by <main data-live-src> and swaps the
// HTML of each element named in an `update` event (rendered and escaped by the server).
(function () {
  "use strict";
  var main = document.querySelector("[data-live-src]");
  if (!main || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var announcer = document.getElementById("live-announce");
  var source = new EventSource(main.getAttribute("data-live-src"));
  var finished = false;

  function say(text, state) {
    if (!status) return;
    status.textContent = text;
    status.setAttribute("data-state", state);
  }

  function swap(id, html) {
    var el = document.getElementById(id);
    if (!el) return;
    // Keep keyboard focus where it was when the focused element is re-rendered.
    var active = document.activeElement;
    var focusId = active && active !== document.body && el.contains(active) ? active.id : "";
    el.innerHTML = html;
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) again.focus();
    }
  }

  source.addEventListener("open", function () {
    say("Live", "live");
  });

  source.addEventListener("update", function (event) {
    var update;
    try {
      update = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    var fragments = update.fragments || {};
    Object.keys(fragments).forEach(function (id) {
      swap(id, fragments[id]);
    });
    if (update.announce && announcer) announcer.textContent = update.announce;
    if (update.done) {
      finished = true;
      source.close();
      say("Final", "done");
    } else {
      say("Live", "live");
    }
  });

  source.addEventListener("unavailable", function (event) {
    var detail = "";
    try {
      detail = JSON.parse(event.data).detail || "";
    } catch (err) {
      detail = "";
    }
    say(detail || "Updates paused; retrying…", "paused");
  });

  source.addEventListener("signed-out", function () {
    finished = true;
    source.close();
    say("Signed out: reload the page to sign in again.", "paused");
  });

  source.onerror = function () {
    if (finished) return;
    if (source.readyState === EventSource.CLOSED) {
      say("Live updates stopped; reload the page.", "paused");
    } else {
      say("Reconnecting…", "paused");
    }
  };
})();
