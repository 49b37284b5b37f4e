// Bulk selection on the jobs list: "select all on this page" and a count of the selected jobs.
(function () {
  "use strict";
  var all = document.getElementById("select-all");
  var count = document.getElementById("bulk-count");
  var boxes = Array.prototype.slice.call(document.querySelectorAll("input.row-select"));
  if (!all || !boxes.length) return;
  all.hidden = false;

  function update() {
    var n = boxes.filter(function (b) { return b.checked; }).length;
    all.checked = n === boxes.length;
    all.indeterminate = n > 0 && n < boxes.length;
    if (count) count.textContent = n ? n + " selected" : "";
  }

  all.addEventListener("change", function () {
    boxes.forEach(function (b) { b.checked = all.checked; });
    update();
  });
  boxes.forEach(function (b) { b.addEventListener("change", update); });
  update();
})();
