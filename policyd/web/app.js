// Filters the destinations table as you type and sorts it by a column when
// its header is clicked. The page works without this: the search form asks
// the server, and the table comes sorted by destination.
"use strict";
(function () {
  const table = document.getElementById("dest-table");
  const input = document.getElementById("q");
  if (!table || !input) {
    return;
  }
  const body = table.tBodies[0];
  input.addEventListener("input", function () {
    const q = input.value.trim().toLowerCase();
    for (const row of body.rows) {
      row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
    }
  });
  const headers = table.tHead.rows[0].cells;
  for (let i = 0; i < headers.length; i++) {
    headers[i].addEventListener("click", function () {
      const up = headers[i].dataset.order !== "asc";
      for (const h of headers) {
        delete h.dataset.order;
      }
      headers[i].dataset.order = up ? "asc" : "desc";
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = a.cells[i].textContent.trim();
        const y = b.cells[i].textContent.trim();
        const nx = Number(x), ny = Number(y);
        const c = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
        return up ? c : -c;
      });
      for (const r of rows) {
        body.appendChild(r);
      }
    });
  }
})();
