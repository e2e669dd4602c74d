// Copy buttons: <button data-copy="text" hidden>. Without JavaScript they stay hidden and the
// text next to them is there to select; with it, a click copies the text, or, where the
// browser allows no clipboard (plain http), selects it for Ctrl+C.
(function () {
  "use strict";
  function reveal(root) {
    var buttons = root.querySelectorAll("button[data-copy][hidden]");
    for (var i = 0; i < buttons.length; i++) { buttons[i].hidden = false; }
  }

  function select(button) {
    var text = button.parentElement.querySelector("code");
    if (!text) { return; }
    var range = document.createRange();
    range.selectNodeContents(text);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function said(button, text) {
    var original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = text;
    window.setTimeout(function () { button.textContent = original; }, 2000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) { return; }
    var text = button.dataset.copy;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { said(button, "Copied"); },
        function () { select(button); said(button, "Press Ctrl+C"); });
    } else {
      select(button);
      said(button, "Press Ctrl+C");
    }
  });

  reveal(document);
  // Cards that the catalogue replaces bring their own hidden buttons.
  new MutationObserver(function () { reveal(document); })
    .observe(document.body, { childList: true, subtree: true });
})();
