// The sharing form: the name field suggests people or groups, whichever kind is chosen.
(function () {
  "use strict";
  var kind = document.getElementById("grant-kind");
  var name = document.getElementById("grant-name");
  if (!kind || !name) { return; }
  function follow() { name.setAttribute("list", "grant-suggestions-" + kind.value); }
  kind.addEventListener("change", follow);
  follow();
})();
