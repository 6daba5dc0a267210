// The selftrain dashboard: runs and their stages with live status (Server-Sent Events), metric
// charts, pseudo-label class distributions and overlays, and a prediction page.
// No framework and no build step. Every /api call carries the bearer token, so streams and images
// are fetched with fetch() (EventSource and <img src> cannot send headers).
"use strict";

const state = {
  token: sessionStorage.getItem("selftrain-token") || "",
  runs: new Map(), // id -> run summary
  selected: null, // id of the run shown
  run: null, // the full run shown
  runStream: null, // AbortController of the selected run's event stream
  openLogs: new Set(), // stage names whose logs are shown
  logs: new Map(), // stage name -> log text
  images: new Map(), // api path -> object URL of a fetched PNG
};

// ---- helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: the CSP forbids style attributes
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.token}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    showLogin("The token was refused.");
    throw new Error("unauthorized");
  }
  return response;
}

async function apiJson(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// A PNG from the API as an object URL, fetched once.
async function imageUrl(path) {
  if (!state.images.has(path)) {
    const response = await api(path);
    if (!response.ok) throw new Error(`${path}: ${response.status}`);
    state.images.set(path, URL.createObjectURL(await response.blob()));
  }
  return state.images.get(path);
}

function statusBadge(status) {
  return el("span", { class: `status ${status}` }, status);
}

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function fmtDuration(start, end) {
  if (!start) return "";
  const seconds = ((end ? new Date(end) : new Date()) - new Date(start)) / 1000;
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// Server-Sent Events over fetch: calls onEvent(name, data) for each event until the stream ends.
async function readEvents(path, signal, onEvent) {
  const response = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// ---- charts -------------------------------------------------------------------------------

// A line chart of points [{x, y}] with min/max labels on both axes.
function lineChart(title, points, { width = 260, height = 150, percent = false } = {}) {
  const pad = { left: 40, right: 10, top: 22, bottom: 24 };
  const root = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  root.append(svg("text", { x: pad.left, y: 14, class: "title" }, title));
  const data = points.filter((p) => p.y !== null && p.y !== undefined && !Number.isNaN(p.y));
  if (!data.length) {
    root.append(svg("text", { x: pad.left, y: height / 2 }, "no data yet"));
    return root;
  }
  const xs = data.map((p) => p.x);
  const ys = data.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  const label = (v) => (percent ? `${(100 * v).toFixed(1)}%` : Number(v.toPrecision(3)).toString());
  const bottom = height - pad.bottom;
  root.append(
    svg("line", { x1: pad.left, y1: bottom, x2: width - pad.right, y2: bottom, stroke: "#ccd" }),
    svg("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: bottom, stroke: "#ccd" }),
    svg("text", { x: 2, y: sy(y1) + 4 }, label(y1)),
    svg("text", { x: 2, y: sy(y0) + 4 }, label(y0)),
    svg("text", { x: pad.left, y: height - 8 }, `epoch ${x0}`),
    svg("text", { x: width - pad.right, y: height - 8, "text-anchor": "end" }, `${x1}`),
    svg("polyline", { points: data.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") }),
    ...data.map((p) => svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5 })),
  );
  return root;
}

function metricCharts(stage) {
  const rows = stage.metrics || [];
  const series = (key) => rows.map((r) => ({ x: r.epoch, y: r[key] }));
  return el(
    "div",
    { class: "charts" },
    lineChart("loss", series("loss")),
    lineChart("val mIoU", series("val_miou"), { percent: true }),
    lineChart("crop size", series("crop_size")),
  );
}

function classDistribution(summary) {
  const names = summary.class_names || Object.keys(summary.pixels_per_class || {});
  const colors = summary.class_colors || [];
  const pixels = names.map((n) => summary.pixels_per_class?.[n] || 0);
  const total = pixels.reduce((a, b) => a + b, 0) || 1;
  const max = Math.max(...pixels, 1);
  const grid = el("div", { class: "classes" });
  names.forEach((name, i) => {
    const color = colors[i] ? `rgb(${colors[i].join(",")})` : "#888";
    grid.append(
      el("span", {}, el("span", { class: "swatch", style: `background:${color}` }), name),
      el("span", {}, el("div", { class: "fill", style: `width:${(100 * pixels[i]) / max}%;background:${color}` })),
      el("span", { class: "muted" }, `${((100 * pixels[i]) / total).toFixed(1)}%`),
    );
  });
  return grid;
}

// ---- runs page ----------------------------------------------------------------------------

function renderRunList() {
  const list = document.getElementById("run-list");
  const runs = [...state.runs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  list.replaceChildren(
    ...runs.map((run) =>
      el(
        "li",
        {
          class: run.id === state.selected ? "selected" : "",
          "data-run-id": run.id,
          onclick: () => selectRun(run.id),
        },
        el("div", { class: "name" }, run.name, " ", statusBadge(run.status)),
        el(
          "div",
          { class: "meta" },
          `${run.id} · ${run.stages_done}/${run.stages_total} stages`,
          run.current_stage && run.status === "RUNNING" ? ` · ${run.current_stage}` : "",
        ),
      ),
    ),
  );
  document.getElementById("no-runs").hidden = runs.length > 0;
  refreshPredictRuns();
}

function selectRun(id) {
  if (state.runStream) state.runStream.abort();
  state.selected = id;
  state.run = null;
  state.openLogs.clear();
  state.logs.clear();
  location.hash = `#runs/${id}`;
  renderRunList();
  document.getElementById("run-detail").replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const controller = new AbortController();
  state.runStream = controller;
  // The stream sends the whole run at once and after every change; it ends when the run has.
  readEvents(`/api/runs/${id}/events`, controller.signal, (name, run) => {
    if (name !== "run" || state.selected !== id) return;
    state.run = run;
    renderRun();
  }).catch((error) => {
    if (error.name !== "AbortError") console.warn(error);
  });
}

// What a training stage trains on, from its planned job config (pseudo_per_real counts pseudo
// samples per real sample, the paper's "pseudo:real").
function stageTraining(stage) {
  const config = stage.config;
  if (!config || stage.kind === "label") return "";
  if (!config.pseudo || !config.pseudo.length || !config.pseudo_per_real) return "labeled only";
  const ratio = `pseudo:real ${Number(config.pseudo_per_real.toPrecision(3))}:1`;
  return config.centroid_sampling ? `${ratio}, centroid sampling` : ratio;
}

function stageRow(stage) {
  const progress = stage.progress;
  const fraction = progress ? progress.fraction : stage.status === "SUCCEEDED" ? 1 : 0;
  const progressText = progress ? `${progress.done}/${progress.total} ${progress.unit}` : "";
  return el(
    "tr",
    { "data-stage": stage.name },
    el("td", {}, stage.name),
    el("td", {}, stage.kind, " ", el("span", { class: "muted" }, stageTraining(stage))),
    el("td", {}, statusBadge(stage.status)),
    el("td", {}, el("div", { class: "bar" }, el("span", { style: `width:${100 * fraction}%` })), " ", progressText),
    el("td", {}, stage.given ? el("span", { class: "muted" }, "given") : el("code", {}, stage.submission_id || "")),
    el("td", {}, fmtTime(stage.started_at)),
    el("td", {}, fmtDuration(stage.started_at, stage.ended_at)),
    el(
      "td",
      {},
      stage.submission_id
        ? el("button", { class: "small", onclick: () => toggleLogs(stage.name) }, "logs")
        : "",
      " ",
      trackingLink(stage.tracking),
    ),
  );
}

// The stage's MLflow run: a link when the service knows the MLflow UI, else the run id.
function trackingLink(tracking) {
  if (!tracking) return "";
  if (tracking.url) {
    return el("a", { href: tracking.url, target: "_blank", rel: "noopener", "data-mlflow": tracking.run_id }, "MLflow");
  }
  return el("span", { class: "muted", title: `MLflow run ${tracking.run_id}`, "data-mlflow": tracking.run_id }, "MLflow ", tracking.run_id.slice(0, 8));
}

async function toggleLogs(name) {
  if (state.openLogs.has(name)) {
    state.openLogs.delete(name);
  } else {
    state.openLogs.add(name);
    const response = await api(`/api/runs/${state.selected}/stages/${name}/logs`);
    state.logs.set(name, response.ok ? await response.text() : `(${response.status})`);
  }
  renderRun();
}

function renderRun() {
  const run = state.run;
  const detail = document.getElementById("run-detail");
  if (!run) return;
  const cards = [
    el(
      "div",
      { class: "card" },
      el("h2", {}, run.name, " ", statusBadge(run.status)),
      el("p", { class: "muted" }, `run ${run.id} · created ${fmtTime(run.created_at)} · output ${run.output}`),
      run.error ? el("p", { class: "error" }, run.error) : null,
      el(
        "table",
        { id: "stages" },
        el("tr", {}, ["stage", "kind", "status", "progress", "Ray submission", "started", "took", ""].map((h) => el("th", {}, h))),
        run.stages.map(stageRow),
      ),
      [...state.openLogs].map((name) =>
        el("div", {}, el("h3", {}, `logs: ${name}`), el("pre", { class: "logs" }, state.logs.get(name) || "")),
      ),
    ),
  ];
  for (const stage of run.stages) {
    if (stage.kind !== "label" && stage.metrics && stage.metrics.length) {
      cards.push(el("div", { class: "card", "data-card": stage.name }, el("h3", {}, `${stage.name}: metrics per epoch`), metricCharts(stage)));
    }
    if (stage.kind === "label" && stage.summary) {
      const samples = el("div", { class: "samples" });
      const review = el("div", { class: "review" });
      cards.push(
        el(
          "div",
          { class: "card", "data-card": stage.name },
          el(
            "div",
            { class: "label-body" },
            el(
              "div",
              {},
              el("h3", {}, `${stage.name}: pseudo-label class distribution (${stage.summary.n_done} images)`),
              classDistribution(stage.summary),
            ),
            el("div", {}, el("h3", {}, "pseudo labels beside their images"), samples),
          ),
          el("h3", {}, "review first: the images the teacher is least sure of (image, pseudo label, confidence)"),
          review,
        ),
      );
      fillSamples(run.id, stage.name, samples);
      fillReview(run.id, stage.name, review);
    }
  }
  detail.replaceChildren(...cards);
}

async function fillSamples(runId, stageName, container) {
  try {
    const base = `/api/runs/${runId}/stages/${stageName}/pseudo-labels`;
    const samples = await apiJson(base);
    for (const index of samples.indices) {
      const [image, overlay] = await Promise.all([
        imageUrl(`${base}/${index}?view=image`),
        imageUrl(`${base}/${index}?view=overlay`),
      ]);
      container.append(
        el("div", { class: "pair" }, el("img", { src: image, alt: `image ${index}` }), el("img", { src: overlay, alt: `pseudo label ${index}` })),
      );
    }
  } catch (error) {
    container.append(el("p", { class: "muted" }, `no pseudo labels to show yet (${error.message})`));
  }
}

// The store's least certain images (image, pseudo label, confidence heat map: blue unsure, red
// sure) and, per class, how its pixels there spread over ten confidence bins.
async function fillReview(runId, stageName, container) {
  try {
    const base = `/api/runs/${runId}/stages/${stageName}`;
    const review = await apiJson(`${base}/review?n=4`);
    for (const [k, index] of review.indices.entries()) {
      const views = await Promise.all(["image", "label", "confidence"].map((v) => imageUrl(`${base}/pseudo-labels/${index}?view=${v}`)));
      container.append(
        el(
          "div",
          { class: "review-row", "data-index": index },
          ...views.map((src, v) => el("img", { src, alt: `${["image", "pseudo label", "confidence"][v]} ${index}` })),
          el("span", { class: "muted" }, `mean confidence ${(100 * review.mean_confidence[k]).toFixed(1)} %`),
        ),
      );
    }
    const grid = el("div", { class: "histograms" });
    for (const [name, counts] of Object.entries(review.histograms)) {
      const max = Math.max(...counts, 1);
      grid.append(
        el("span", {}, name),
        el("span", { class: "histogram", "data-class": name }, ...counts.map((c) => el("i", { style: `height:${(100 * c) / max}%` }))),
      );
    }
    container.append(el("h3", {}, `confidence per class in these images (0 → 1)`), grid);
  } catch (error) {
    container.append(el("p", { class: "muted" }, `nothing to review yet (${error.message})`));
  }
}

async function followRuns() {
  // All runs: a summary event for each at once, then one whenever a run changes.
  const live = document.getElementById("live");
  for (;;) {
    try {
      live.textContent = "live";
      live.classList.add("on");
      await readEvents("/api/events", undefined, (name, summary) => {
        if (name !== "run") return;
        state.runs.set(summary.id, summary);
        renderRunList();
      });
    } catch (error) {
      if (error.message === "unauthorized") return;
      console.warn(error);
    }
    live.textContent = "reconnecting…";
    live.classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- predict page -------------------------------------------------------------------------

function refreshPredictRuns() {
  const select = document.getElementById("predict-run");
  const current = select.value;
  const finished = [...state.runs.values()].filter((r) => r.stages_done > 0);
  select.replaceChildren(
    ...finished.map((r) => el("option", { value: r.id }, `${r.name} (${r.id}, ${r.status})`)),
  );
  if (current) select.value = current;
}

async function predict(event) {
  event.preventDefault();
  const error = document.getElementById("predict-error");
  const result = document.getElementById("predict-result");
  error.textContent = "";
  result.replaceChildren(el("p", { class: "muted" }, "Predicting…"));
  const file = document.getElementById("predict-image").files[0];
  const output = document.getElementById("predict-output").value;
  const form = new FormData();
  form.append("image", file);
  form.append("run_id", document.getElementById("predict-run").value);
  form.append("output", output);
  const response = await api("/api/predict", { method: "POST", body: form });
  if (!response.ok) {
    result.replaceChildren();
    const body = await response.json().catch(() => ({}));
    error.textContent = `${response.status}: ${JSON.stringify(body.detail ?? body)}`;
    return;
  }
  const original = el("img", { src: URL.createObjectURL(file), alt: "uploaded image" });
  if (output === "shares") {
    const shares = await response.json();
    const rows = shares.classes
      .filter((c) => c.share > 0)
      .sort((a, b) => b.share - a.share)
      .map((c) => el("tr", {}, el("td", {}, c.name), el("td", {}, `${(100 * c.share).toFixed(1)}%`)));
    result.replaceChildren(original, el("table", { id: "shares" }, rows));
    return;
  }
  const mask = el("img", { id: "predicted", src: URL.createObjectURL(await response.blob()), alt: "predicted mask" });
  result.replaceChildren(original, mask);
}

// ---- pages and sign-in --------------------------------------------------------------------

function showLogin(message = "") {
  document.getElementById("login").hidden = false;
  document.getElementById("runs-page").hidden = true;
  document.getElementById("predict-page").hidden = true;
  document.getElementById("login-error").textContent = message;
}

function showPage() {
  const page = location.hash.startsWith("#predict") ? "predict" : "runs";
  document.getElementById("login").hidden = true;
  document.getElementById("runs-page").hidden = page !== "runs";
  document.getElementById("predict-page").hidden = page !== "predict";
  document.getElementById("nav-runs").classList.toggle("active", page === "runs");
  document.getElementById("nav-predict").classList.toggle("active", page === "predict");
  const match = location.hash.match(/^#runs\/(\w+)/);
  if (page === "runs" && match && match[1] !== state.selected) selectRun(match[1]);
}

function start() {
  showPage();
  followRuns();
}

document.addEventListener("DOMContentLoaded", () => {
  // A token in the fragment (#token=...) signs in without the form; the fragment never reaches
  // the server and is removed from the address bar at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    state.token = fragment.get("token");
    sessionStorage.setItem("selftrain-token", state.token);
    history.replaceState(null, "", location.pathname + "#runs");
  }
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = document.getElementById("token").value;
    sessionStorage.setItem("selftrain-token", state.token);
    start();
  });
  document.getElementById("predict-form").addEventListener("submit", predict);
  window.addEventListener("hashchange", showPage);
  if (state.token) start();
  else showLogin();
});
