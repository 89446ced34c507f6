// Live parts of the page: every element with data-src is re-fetched every refresh period
// (the server caches the fleet's view, so viewers cost the hosts one look per period).
"use strict";
(function () {
  const period = parseInt(document.body.dataset.refreshMs || "1000", 10);
  const live = document.getElementById("live");
  async function refresh() {
    const parts = document.querySelectorAll("[data-src]");
    let ok = true;
    for (const el of parts) {
      try {
        const r = await fetch(el.dataset.src, { credentials: "same-origin", cache: "no-store" });
        if (!r.ok) { ok = false; continue; }
        const html = await r.text();
        if (html !== el.dataset.last) { el.innerHTML = html; el.dataset.last = html; }
      } catch (e) { ok = false; }
    }
    if (live) {
      live.textContent = ok ? "live · " + new Date().toLocaleTimeString() : "disconnected";
      live.className = ok ? "live" : "live down";
    }
    setTimeout(refresh, period);
  }
  if (document.querySelector("[data-src]")) setTimeout(refresh, period);
})();
