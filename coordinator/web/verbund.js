// verbund's only script: follows a running query, and loads a CCDL file into the form.
// Everything else works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A queued or running query: the server answers this address when the query changes
  // (or after a while), so the page shows each site as it finishes.
  const follow = document.querySelector("main[data-follow]");
  if (follow) {
    setTimeout(() => window.location.replace(follow.dataset.follow), 250);
  }
  // "Upload" a CCDL document: read the chosen file into the text box it belongs to.
  for (const input of document.querySelectorAll("input[type=file][data-fills]")) {
    input.addEventListener("change", () => {
      const target = document.getElementById(input.dataset.fills);
      const file = input.files && input.files[0];
      if (!target || !file) return;
      file.text().then((text) => {
        target.value = text;
        target.focus();
      });
    });
  }
});
