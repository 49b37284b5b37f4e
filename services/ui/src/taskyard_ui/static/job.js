// Live log of one job: follows the UI's SSE relay (/jobs/<id>/logs/stream) and appends lines.
// Text is only ever set with textContent, so a log line can never become markup.
(function () {
  "use strict";
  var box = document.getElementById("log");
  var status = document.getElementById("log-status");
  if (!box || !status) return;
  if (!window.EventSource) {
    status.textContent = "This browser cannot follow the log live.";
    return;
  }
  // A runaway job can print millions of lines; the page keeps the newest ones.
  var MAX_LINES = 5000;
  var count = 0;
  var trimmed = false;
  var ended = false;
  var source = new EventSource(box.dataset.src);
  var search = document.getElementById("log-search");
  var matches = document.getElementById("log-matches");
  var query = "";

  // Search within the log: lines without the text are hidden, the count is announced.
  function applySearch() {
    query = search.value.trim().toLowerCase();
    var shown = 0;
    var rows = box.children;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].querySelector(".ln-text").textContent.toLowerCase();
      rows[i].hidden = query !== "" && text.indexOf(query) < 0;
      if (!rows[i].hidden) shown += 1;
    }
    matches.textContent = query ? shown + " of " + rows.length + " lines match" : "";
  }
  if (search) search.addEventListener("input", applySearch);

  function say(text) {
    status.textContent = text;
  }

  function nearBottom() {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 32;
  }

  function addLine(line) {
    var kind = line.stream === "stdout" || line.stream === "stderr" ? line.stream : "log";
    var row = document.createElement("div");
    row.className = "ln ln-" + kind;
    var when = document.createElement("time");
    when.className = "ln-time";
    if (line.at) {
      when.dateTime = line.at;
      when.textContent = String(line.at).slice(11, 23);
    }
    var tag = document.createElement("span");
    tag.className = "ln-tag";
    tag.textContent = kind === "log" ? "taskyard" : kind;
    var text = document.createElement("span");
    text.className = "ln-text";
    text.textContent = line.line;
    row.appendChild(when);
    row.appendChild(tag);
    row.appendChild(text);
    box.appendChild(row);
    count += 1;
    if (query) row.hidden = line.line.toLowerCase().indexOf(query) < 0;
    if (box.childElementCount > MAX_LINES) {
      box.removeChild(box.firstElementChild);
      trimmed = true;
    }
  }

  source.addEventListener("open", function () {
    say(count ? "Reconnected; following the log." : "Following the log…");
  });

  source.addEventListener("log", function (event) {
    var line;
    try {
      line = JSON.parse(event.data);
    } catch (err) {
      return; // a malformed line is skipped, the stream goes on
    }
    var stick = nearBottom();
    addLine(line);
    if (stick) box.scrollTop = box.scrollHeight;
  });

  source.addEventListener("end", function (event) {
    ended = true;
    source.close();
    var final = "";
    try {
      final = JSON.parse(event.data).status || "";
    } catch (err) {
      final = "";
    }
    var text = "Job finished" + (final ? " (" + final + ")" : "") + ". " + count + " line(s)";
    // The rest of the page (status, result, timeline) follows through live.js.
    say(text + (trimmed ? ", older ones trimmed." : "."));
  });

  source.addEventListener("unavailable", function (event) {
    var detail = "";
    try {
      detail = JSON.parse(event.data).detail || "";
    } catch (err) {
      detail = "";
    }
    say("Log stream unavailable" + (detail ? ": " + detail : "") + ". Retrying…");
  });

  source.onerror = function () {
    if (ended) return;
    if (source.readyState === EventSource.CLOSED) {
      say("The log stream was refused (signed out, or no access to this job). Reload the page to try again.");
    } else {
      say("Connection to the log lost; reconnecting…");
    }
  };
})();
