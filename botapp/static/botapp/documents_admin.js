// Admin: while files are being indexed, their state cells follow the worker (no reload needed).
"use strict";

(function () {
  const POLL_MS = 2000;

  function busyCells() {
    return Array.from(document.querySelectorAll(".document-progress[data-busy='1']"));
  }

  async function poll() {
    const cells = busyCells();
    if (!cells.length) {
      return;
    }
    const ids = cells.map((cell) => cell.dataset.documentId).join(",");
    try {
      const response = await fetch(cells[0].dataset.url + "?ids=" + ids, { credentials: "same-origin" });
      if (response.ok) {
        const states = await response.json();
        cells.forEach(function (cell) {
          const state = states[cell.dataset.documentId];
          if (!state) {
            return;
          }
          cell.querySelector("span").textContent = state.label;
          const bar = cell.querySelector("progress");
          if (state.busy && bar) {
            bar.value = state.percent;
          } else if (!state.busy) {
            cell.dataset.busy = "";
            if (bar) {
              bar.remove();
            }
          }
        });
      }
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (busyCells().length) {
      setTimeout(poll, POLL_MS);
    }
  });
})();
