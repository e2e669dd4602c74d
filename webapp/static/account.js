// Account page: copy a new API token to the clipboard, and select it for a manual copy.
(function () {
  const button = document.getElementById("copy-token");
  const field = document.getElementById("new-token-value");
  if (!button || !field) return;
  field.addEventListener("focus", () => field.select());
  button.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Press Ctrl+C";  // no clipboard access (plain http): the text is selected
    }
  });
})();
