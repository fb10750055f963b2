// livecam grid: a small live picture of every camera, each linking to its own page.
//
// Browsers open at most 6 HTTP/1.1 connections per server, so the grid cannot hold one long-poll
// per camera. Instead it asks /status once a second and fetches a small variant of each camera
// whose seq changed. Cameras that appear later get a tile too. Hidden tabs make no requests.
"use strict";

(() => {
  const grid = document.getElementById("grid");
  const stateEl = document.getElementById("grid-state");
  const configured = (grid.dataset.sizes || "").split(",").map(Number).filter((w) => w > 0);
  const SIZES = configured.length ? configured : [160, 320, 480, 640, 800];
  const POLL_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const SILENT_AFTER_MS = 10000;

  const tiles = new Map();   // camera name -> {el, seq, url, ageMs, receivedAt, loading}
  let widthSupported = true;
  let backoffMs = 0;
  let timer = null;
  let online = true;

  function baseOf(name) {
    return name === "default" ? "" : `/cams/${encodeURIComponent(name)}`;
  }

  function tileFor(name) {
    let tile = tiles.get(name);
    if (tile) return tile;
    let el = [...grid.children].find((li) => li.dataset.camera === name);
    if (!el) {   // a camera that appeared after the page was made
      el = document.createElement("li");
      el.className = "tile";
      el.dataset.camera = name;
      const link = document.createElement("a");
      link.href = `/cams/${encodeURIComponent(name)}/`;
      const img = document.createElement("img");
      img.alt = `Live picture from camera ${name}`;
      img.hidden = true;
      const label = document.createElement("span");
      label.className = "tile-label chip";
      for (const cls of ["dot", "name", "age"]) {
        const part = document.createElement("span");
        part.className = cls;
        if (cls === "name") part.textContent = name;
        label.append(part);
      }
      link.append(img, label);
      el.append(link);
      grid.append(el);
    }
    tile = {el, seq: null, url: null, ageMs: 0, receivedAt: 0, loading: false};
    tiles.set(name, tile);
    return tile;
  }

  function widthFor(tile) {
    if (!widthSupported) return null;
    const needed = tile.el.clientWidth * (window.devicePixelRatio || 1);
    const fitting = SIZES.filter((w) => w >= needed);
    return fitting.length ? Math.min(...fitting) : Math.max(...SIZES);
  }

  async function refresh(name, tile) {
    tile.loading = true;
    try {
      const width = widthFor(tile);
      const response = await fetch(`${baseOf(name)}/live.jpeg${width ? "?width=" + width : ""}`,
        {cache: "no-store"});
      if (response.status === 400 && width) { widthSupported = false; return; }
      if (!response.ok) { await response.arrayBuffer(); return; }
      const seq = Number(response.headers.get("X-Frame-Seq"));
      const ageMs = Number(response.headers.get("X-Frame-Age"));
      const url = URL.createObjectURL(await response.blob());
      const next = new Image();
      next.src = url;
      try {
        await next.decode();
      } catch (err) {
        URL.revokeObjectURL(url);
        return;
      }
      const old = tile.el.querySelector("img");
      next.alt = old.alt;
      old.replaceWith(next);
      if (tile.url) URL.revokeObjectURL(tile.url);
      Object.assign(tile, {url, seq, ageMs: Number.isFinite(ageMs) ? ageMs : 0, receivedAt: performance.now()});
      tile.el.dataset.seq = String(seq);
      render();
    } catch (err) {
      /* the next status poll tells whether the server is still there */
    } finally {
      tile.loading = false;
    }
  }

  async function poll() {
    timer = null;
    if (document.hidden) return;
    const started = performance.now();
    let status;
    try {
      const response = await fetch("/status", {cache: "no-store"});
      if (!response.ok) throw new Error(`status ${response.status}`);
      status = await response.json();
      backoffMs = 0;
      online = true;
    } catch (err) {
      online = false;
      render();
      backoffMs = backoffMs ? Math.min(BACKOFF_MAX_MS, backoffMs * 2) : 500;
      schedule(backoffMs * (0.8 + 0.4 * Math.random()));
      return;
    }
    const jobs = [];
    for (const [name, camera] of Object.entries(status.cameras || {})) {
      const tile = tileFor(name);
      if (camera.seq && camera.seq !== tile.seq && !tile.loading) jobs.push(refresh(name, tile));
    }
    await Promise.allSettled(jobs);
    render();
    schedule(Math.max(0, POLL_MS - (performance.now() - started)));
  }

  function schedule(ms) {
    clearTimeout(timer);
    if (!document.hidden) timer = setTimeout(poll, ms);
  }

  function render() {
    const now = performance.now();
    let live = 0;
    for (const tile of tiles.values()) {
      let state = "waiting";
      let text = "waiting for camera";
      if (tile.seq !== null) {
        const age = tile.ageMs + (now - tile.receivedAt);
        state = age > SILENT_AFTER_MS ? "silent" : "live";
        text = state === "live" ? `${(age / 1000).toFixed(age < 10000 ? 1 : 0)} s` : `silent ${duration(age)}`;
        tile.el.querySelector("img").hidden = false;
      }
      if (!online) state = "offline";
      if (state === "live") live++;
      tile.el.dataset.state = state;
      tile.el.querySelector(".age").textContent = text;
    }
    const count = Math.max(tiles.size, grid.children.length);
    stateEl.textContent = online ? `${live} of ${count} cameras live` : "offline, retrying";
    stateEl.dataset.state = online ? (live ? "live" : "waiting") : "offline";
  }

  function duration(ms) {
    const s = ms / 1000;
    if (s < 120) return `${Math.floor(s)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); timer = null; } else { schedule(0); }
  });
  for (const li of grid.children) tileFor(li.dataset.camera);
  setInterval(render, 1000);
  render();
  schedule(0);
})();
