// livecam viewer: follows one camera through the /next.jpeg long-poll loop.
//
// One request at a time: GET {base}/next.jpeg?after=SEQ answers with the first frame newer than
// SEQ (200), or 204 when nothing came within the server's timeout; 503/404 mean "no picture yet"
// (or the server is stopping) and carry Retry-After; a network error means the server is away.
// A frame is shown only once it has decoded (no flicker), and every object URL is revoked when
// its picture leaves the screen, so the page can run for days. Hidden tabs make no requests.
"use strict";

(() => {
  const root = document.getElementById("viewer");
  const camera = root.dataset.camera;
  const base = root.dataset.base || "";
  const sizes = (root.dataset.sizes || "").split(",").map(Number).filter((w) => w > 0);

  const stage = document.getElementById("stage");
  const hint = document.getElementById("hint");
  const stateEl = document.getElementById("state");
  const ageEl = document.getElementById("age");
  const fpsEl = document.getElementById("fps");
  const dimsEl = document.getElementById("dims");
  const statsEl = document.getElementById("stats");
  const sizeEl = document.getElementById("size");
  const saveEl = document.getElementById("save");
  const fullscreenEl = document.getElementById("fullscreen");
  let frameEl = document.getElementById("frame");

  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const SILENT_AFTER_MS = 5000;   // at least; slow cameras get 3 of their own intervals
  const FPS_WINDOW_MS = 5000;
  const IDLE_AFTER_MS = 3000;
  const baseTitle = document.title;

  // What is on screen.
  const shown = {seq: null, blob: null, url: null, ageMs: 0, receivedAt: 0, timestamp: null};
  const recent = [];              // performance.now() of pictures shown in the last FPS_WINDOW_MS
  let connection = "connecting";  // connecting | waiting | offline | ok | paused
  let backoffMs = 0;
  let widthSupported = sizes.length > 0;

  // The follow loop. Starting a new generation ends the previous loop at its next await.
  let generation = 0;
  let inflight = null;            // AbortController of the request in flight
  let wake = null;                // ends the current pause early

  function start() {
    stop();
    if (connection === "paused") connection = shown.seq === null ? "connecting" : "ok";
    const gen = ++generation;
    follow(gen);
  }

  function stop() {
    generation++;
    if (inflight) inflight.abort();
    if (wake) wake();
  }

  async function follow(gen) {
    while (gen === generation) {
      let pauseMs;
      try {
        pauseMs = await step(gen);
      } catch (err) {
        if (gen !== generation) return;   // aborted by stop(): not an error
        pauseMs = wentOffline();
      }
      if (gen !== generation) return;
      if (pauseMs > 0) await pause(pauseMs);
    }
  }

  function pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); if (wake === done) wake = null; resolve(); }
      wake = done;
    });
  }

  /** One request; returns how long to wait before the next one. */
  async function step(gen) {
    inflight = new AbortController();
    const width = chosenWidth();
    // after=0 before the first picture: the newest one at once, if there is one. Until the
    // server has answered once, ask with timeout=0, so that "connected" shows at once.
    const params = new URLSearchParams({after: String(shown.seq ?? 0)});
    if (connection !== "ok") params.set("timeout", "0");
    if (width) params.set("width", String(width));
    const response = await fetch(`${base}/next.jpeg?${params}`,
      {cache: "no-store", signal: inflight.signal});

    if (response.status === 200) {
      if (!await show(response)) return wentOffline();   // not a livecam frame: back off
      if (gen !== generation) return 0;                  // stopped while it decoded
      backoffMs = 0;
      setConnection("ok");
      return 0;
    }
    await response.arrayBuffer().catch(() => null);  // drain the body so the connection is reused
    if (response.status === 204) {                     // long-poll timeout: ask again at once
      backoffMs = 0;
      setConnection("ok");
      return 0;
    }
    if (response.status === 503 || response.status === 404) {  // no picture yet, or stopping
      backoffMs = 0;
      setConnection("waiting");
      return retryAfterMs(response, 2000);
    }
    if (response.status === 400 && width) {            // this server does not resize: stop asking
      widthSupported = false;
      if (sizeEl) sizeEl.closest("label").hidden = true;
      return 0;
    }
    return wentOffline();
  }

  /** Decode the new picture off-screen, then swap it in and free the previous one. */
  async function show(response) {
    const seq = Number(response.headers.get("X-Frame-Seq"));
    if (!response.headers.has("X-Frame-Seq") || !Number.isInteger(seq)) return false;
    const ageMs = Number(response.headers.get("X-Frame-Age"));
    const timestamp = Number(response.headers.get("X-Frame-Timestamp"));
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const next = new Image();
    next.src = url;
    try {
      await next.decode();
    } catch (err) {
      URL.revokeObjectURL(url);   // a broken JPEG: skip it, keep the current picture
      shown.seq = seq;
      return true;
    }
    next.id = frameEl.id;
    next.className = frameEl.className;
    next.alt = frameEl.alt;
    next.draggable = false;
    frameEl.replaceWith(next);
    frameEl = next;
    if (shown.url) URL.revokeObjectURL(shown.url);

    const now = performance.now();
    Object.assign(shown, {
      seq, blob, url, receivedAt: now,
      ageMs: Number.isFinite(ageMs) ? Math.max(0, ageMs) : 0,
      timestamp: Number.isFinite(timestamp) && timestamp > 0 ? timestamp * 1000 : null,
    });
    recent.push(now);
    root.dataset.seq = String(shown.seq);
    dimsEl.textContent = `${next.naturalWidth}×${next.naturalHeight}`;
    saveEl.disabled = false;
    statsEl.hidden = false;
    hint.hidden = true;
    render();
    return true;
  }

  function wentOffline() {
    backoffMs = backoffMs ? Math.min(BACKOFF_MAX_MS, backoffMs * 2) : BACKOFF_FIRST_MS;
    setConnection("offline");
    return backoffMs * (0.8 + 0.4 * Math.random());   // jitter: many viewers do not return in step
  }

  function retryAfterMs(response, fallbackMs) {
    const seconds = Number(response.headers.get("Retry-After"));
    if (!Number.isFinite(seconds) || seconds <= 0) return fallbackMs;
    return Math.min(30, Math.max(1, seconds)) * 1000;
  }

  // ---- the overlay ----

  function setConnection(value) {
    if (connection === value) return;
    connection = value;
    render();
  }

  function ageNowMs() {
    return shown.ageMs + (performance.now() - shown.receivedAt);
  }

  function silentAfterMs() {
    if (recent.length < 2) return SILENT_AFTER_MS;
    const interval = (recent[recent.length - 1] - recent[0]) / (recent.length - 1);
    return Math.max(SILENT_AFTER_MS, 3 * interval);
  }

  function state() {
    if (connection === "offline") return "offline";
    if (connection === "paused") return "paused";
    if (connection === "waiting") return shown.seq === null ? "waiting" : "silent";
    if (shown.seq === null) return connection === "ok" ? "waiting" : "connecting";
    return ageNowMs() > silentAfterMs() ? "silent" : "live";
  }

  const STATE_TEXT = {
    connecting: () => "connecting…",
    waiting: () => "waiting for camera",
    live: () => "live",
    silent: () => `camera silent for ${duration(ageNowMs())}`,
    offline: () => "offline, retrying",
    paused: () => "paused",
  };

  function render() {
    const now = performance.now();
    while (recent.length && now - recent[0] > FPS_WINDOW_MS) recent.shift();
    const current = state();
    root.dataset.state = current;
    stateEl.textContent = STATE_TEXT[current]();
    hint.hidden = !(current === "waiting" && shown.seq === null);
    if (shown.seq !== null) {
      ageEl.textContent = `${duration(ageNowMs(), true)} ago`;
      fpsEl.textContent = recent.length >= 2
        ? `${((recent.length - 1) * 1000 / (recent[recent.length - 1] - recent[0])).toFixed(1)} fps`
        : "";
    }
    document.title = current === "live" ? baseTitle : `${STATE_TEXT[current]()} · ${baseTitle}`;
  }

  function duration(ms, precise = false) {
    const s = ms / 1000;
    if (s < 10 && precise) return `${s.toFixed(1)} s`;
    if (s < 120) return `${Math.floor(s)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  // ---- size choice: resized variants from the server's fixed set ----

  const SIZE_KEY = "livecam.size";

  function chosenWidth() {
    if (!widthSupported || !sizeEl) return null;
    const choice = sizeEl.value;
    if (choice === "0") return null;
    if (choice !== "auto") return Number(choice);
    // Auto: the smallest variant at least as wide as the picture's place on screen.
    const needed = stage.clientWidth * (window.devicePixelRatio || 1);
    const fitting = sizes.filter((w) => w >= needed);
    return fitting.length ? Math.min(...fitting) : null;   // none: the original is best
  }

  if (sizeEl) {
    try {
      const saved = localStorage.getItem(SIZE_KEY);
      if (saved && [...sizeEl.options].some((o) => o.value === saved)) sizeEl.value = saved;
    } catch (err) { /* storage disabled: keep the default */ }
    sizeEl.addEventListener("change", () => {
      try { localStorage.setItem(SIZE_KEY, sizeEl.value); } catch (err) { /* not essential */ }
      // Fetch the current picture again in the new size, at once.
      if (shown.seq !== null) shown.seq = Math.max(0, shown.seq - 1);
      if (!document.hidden) start();
    });
  }

  // ---- save and fullscreen ----

  function save() {
    if (!shown.blob) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(shown.blob);   // its own URL: the next frame may free shown.url
    link.download = `${camera}-${stamp(new Date(shown.timestamp ?? Date.now() - ageNowMs()))}.jpg`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }

  function stamp(date) {
    const two = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}_` +
      `${two(date.getHours())}-${two(date.getMinutes())}-${two(date.getSeconds())}`;
  }

  function toggleFullscreen() {
    if (!document.fullscreenEnabled) return;
    const request = document.fullscreenElement ? document.exitFullscreen() : root.requestFullscreen();
    request.catch(() => { /* refused by the browser (no user gesture): nothing to do */ });
  }

  saveEl.addEventListener("click", save);
  if (document.fullscreenEnabled) {
    fullscreenEl.hidden = false;
    fullscreenEl.addEventListener("click", toggleFullscreen);
    stage.addEventListener("dblclick", toggleFullscreen);
    document.addEventListener("fullscreenchange", () => {
      const on = Boolean(document.fullscreenElement);
      fullscreenEl.querySelector(".button-text").textContent = on ? "Exit fullscreen" : "Fullscreen";
      fullscreenEl.setAttribute("aria-pressed", String(on));
    });
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    const key = event.key.toLowerCase();
    if (key === "f") { event.preventDefault(); toggleFullscreen(); }
    if (key === "s") { event.preventDefault(); save(); }
  });

  // Controls fade out while the pointer rests; any movement or key brings them back.
  let idleTimer = null;
  function active() {
    root.classList.remove("idle");
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => root.classList.add("idle"), IDLE_AFTER_MS);
  }
  for (const type of ["pointermove", "pointerdown", "keydown", "focusin"]) {
    document.addEventListener(type, active, {passive: true});
  }
  active();

  // ---- lifecycle: hidden tabs make no requests; coming back resumes at once ----

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stop();
      recent.length = 0;
      setConnection("paused");
    } else {
      start();
    }
  });
  window.addEventListener("pageshow", (event) => { if (event.persisted && !document.hidden) start(); });
  window.addEventListener("online", () => { if (!document.hidden) { backoffMs = 0; start(); } });

  for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;
  setInterval(render, 1000);
  render();
  if (!document.hidden) start(); else setConnection("paused");
})();
