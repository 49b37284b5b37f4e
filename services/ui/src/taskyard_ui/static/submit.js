// Client-side check of the payload field: report invalid JSON next to it before the round trip.
// The server checks again (and the API after it); this only saves the user a reload.
(function () {
  "use strict";
  var form = document.getElementById("submit-form");
  var payload = document.getElementById("payload");
  var error = document.getElementById("payload-error");
  var type = document.getElementById("type");
  var insert = document.getElementById("insert-example");
  if (!form || !payload || !error) return;

  function check() {
    var text = payload.value.trim();
    if (!text) return "";
    try {
      JSON.parse(text);
      return "";
    } catch (err) {
      return "Payload is not valid JSON: " + err.message;
    }
  }

  function show(message) {
    error.textContent = message;
    if (message) {
      payload.setAttribute("aria-invalid", "true");
    } else {
      payload.removeAttribute("aria-invalid");
    }
  }

  form.addEventListener("submit", function (event) {
    var message = check();
    show(message);
    if (message) {
      event.preventDefault();
      payload.focus();
    }
  });

  // Clear a stale error as soon as the text parses again, without nagging while typing. (No check
  // on blur: the message appearing would shift the Submit button away from under the pointer.)
  payload.addEventListener("input", function () {
    if (payload.getAttribute("aria-invalid") === "true" && !check()) show("");
  });

  // "Insert an example payload" for the chosen built-in type.
  function example() {
    var tpl = type && document.getElementById("example-" + type.value);
    return tpl ? tpl.content.textContent : "";
  }
  function refresh() {
    if (insert) insert.hidden = !example();
  }
  if (insert && type) {
    type.addEventListener("change", refresh);
    insert.addEventListener("click", function () {
      payload.value = example();
      show("");
      payload.focus();
    });
    refresh();
  }
})();
