// dynreg console: the few things pages cannot do without a script. Hand-written,
// no dependencies; the pages work without it except for the live dashboard, the
// copy buttons and the CSV uploads.
"use strict";

// Confirmation before destructive forms (data-confirm="question").
document.addEventListener("submit", (e) => {
  const q = e.target.getAttribute && e.target.getAttribute("data-confirm");
  if (q && !window.confirm(q)) e.preventDefault();
});

// Copy buttons (data-copy="id of the field").
document.addEventListener("click", async (e) => {
  const id = e.target.getAttribute && e.target.getAttribute("data-copy");
  if (!id) return;
  const field = document.getElementById(id);
  const status = document.getElementById("copied");
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied.";
  } catch (_) {
    field.select();
    if (status) status.textContent = "Selected: press Ctrl+C to copy.";
  }
});

// The dashboard: registrations per second and the latest ones, live.
function dashboard() {
  const table = document.getElementById("latest");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const line = document.getElementById("rate-line");
  const now = document.getElementById("rate-now");
  const total = document.getElementById("rate-total");
  const seconds = new Array(60).fill(0);
  let current = Math.floor(Date.now() / 1000);
  const cell = (text, href, code) => {
    const td = document.createElement("td");
    let inner = td;
    if (href) { inner = document.createElement("a"); inner.href = href; td.appendChild(inner); }
    if (code) { const c = document.createElement("code"); inner.appendChild(c); inner = c; }
    inner.textContent = text;
    return td;
  };
  const enc = encodeURIComponent;
  const roll = () => {
    const t = Math.floor(Date.now() / 1000);
    while (current < t) { seconds.shift(); seconds.push(0); current++; }
  };
  const draw = () => {
    roll();
    const max = Math.max(1, ...seconds);
    line.setAttribute("points", seconds.map((n, i) => `${i * 10},${118 - (n / max) * 110}`).join(" "));
    now.textContent = String(seconds[seconds.length - 2] || 0);
    total.textContent = String(seconds.reduce((a, b) => a + b, 0));
  };
  const source = new EventSource(table.getAttribute("data-stream"));
  source.addEventListener("registration", (e) => {
    const r = JSON.parse(e.data);
    roll();
    seconds[seconds.length - 1]++;
    draw();
    const tr = document.createElement("tr");
    tr.className = "fresh";
    const when = new Date(r.at * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    tr.append(cell(when), cell(r.pid, `/products/${enc(r.pid)}`), cell(r.target, `/devices/${enc(r.pid)}/${enc(r.target)}`), cell(r.uuid, null, true));
    body.prepend(tr);
    while (body.rows.length > 50) body.deleteRow(-1);
    const empty = document.getElementById("latest-empty");
    if (empty) empty.remove();
  });
  setInterval(draw, 1000);
  draw();
}

// CSV uploads (a pool's triplets, a product's expected devices): each form with
// data-upload posts its file with progress, then shows the count (data-count of the
// answer, worded with data-noun) or the refused line; data-counter names an element
// whose number grows by the count.
function uploads() {
  for (const form of document.querySelectorAll("form[data-upload]")) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const file = form.querySelector("input[type=file]").files[0];
      const progress = form.querySelector("progress");
      const result = form.querySelector("[role=status]");
      if (!file) return;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("data-action"));
      xhr.setRequestHeader("content-type", "text/csv");
      xhr.setRequestHeader("x-csrf-token", form.getAttribute("data-csrf"));
      progress.hidden = false;
      progress.value = 0;
      result.className = "";
      result.textContent = "Uploading…";
      xhr.upload.onprogress = (p) => { if (p.lengthComputable) progress.value = (100 * p.loaded) / p.total; };
      xhr.upload.onload = () => { result.textContent = "Checking and writing…"; };
      xhr.onload = () => {
        progress.value = 100;
        let answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 200) {
          const n = answer[form.getAttribute("data-count")];
          result.className = "flash done";
          result.textContent = `${n} ${form.getAttribute("data-noun")}.`;
          const counter = document.getElementById(form.getAttribute("data-counter") || "");
          if (counter) counter.textContent = String(Number(counter.textContent) + n);
        } else {
          result.className = "flash error";
          result.textContent = `Nothing written: ${answer.detail || xhr.statusText}`;
        }
      };
      xhr.onerror = () => { result.className = "flash error"; result.textContent = "The upload failed (network)."; };
      xhr.send(file);
    });
  }
}

dashboard();
uploads();
