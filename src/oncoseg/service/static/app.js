// Onco-Seg web page: pick a series, scroll slices, click/drag prompts, see the mask and measurements.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const state = {
  image: null,        // description of the open image (from the API)
  z: 0,
  slice: null,        // ImageBitmap of the current slice
  overlay: null,      // ImageBitmap of the mask on the current slice
  points: [],         // {x, y, positive} in image pixels
  box: null,          // [x0, y0, x1, y1]
  drag: null,         // {x, y} where the mouse went down (image pixels)
  dragNow: null,
  has3d: false,       // a propagated result exists
  busy: false,
  sliceRequest: 0,
};

// ---------------------------------------------------------------- token and requests
(function readTokenFromFragment() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("oncoseg-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
})();

function headers(extra = {}) {
  const token = sessionStorage.getItem("oncoseg-token");
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this service needs a token: enter it above");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function bitmapFrom(response) {
  return createImageBitmap(await response.blob());
}

// ---------------------------------------------------------------- display windows
function windowLabel(name, preset) {
  if (!preset) return name === "auto" ? "auto (1–99 %)" : name;
  return `${name.replace(/-/g, " ")} (${preset[0]}/${preset[1]})`;
}

async function loadWindows() {
  // the CT presets (centre/width) are the service's one table: /api/windows; "auto" comes last
  const select = $("window-select");
  const chosen = select.value;
  try {
    const presets = Object.entries(await (await api("/api/windows")).json());
    const ordered = [...presets.filter(([, p]) => p), ...presets.filter(([, p]) => !p)];
    const options = ordered.map(([name, preset]) => new Option(windowLabel(name, preset), name));
    select.replaceChildren(new Option("default", ""), ...options);
    select.value = chosen;
  } catch (error) { /* keeps "default" only; the token box or the series list says what went wrong */ }
}

// ---------------------------------------------------------------- series and images
async function loadSeries() {
  const list = $("series-list");
  try {
    const series = await (await api("/api/series")).json();
    list.innerHTML = "";
    if (!series.length) list.innerHTML = '<li class="muted">no series</li>';
    for (const s of series) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.textContent = `${s.modality || "?"} · ${s.description || "series"} (${s.num_instances ?? "?"} images)`;
      button.dataset.seriesUid = s.series_uid;
      button.dataset.modality = s.modality || "";
      button.addEventListener("click", () => openSeries(s));
      item.appendChild(button);
      list.appendChild(item);
    }
  } catch (error) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = error.status === 409 ? "no PACS configured" : error.message;  // text, never markup
    list.replaceChildren(item);
  }
}

async function openSeries(series) {
  status("Opening series…");
  try {
    const response = await api("/api/images", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ series_uid: series.series_uid, study_uid: series.study_uid }),
    });
    await showImage(await response.json());
  } catch (error) { status(error.message, true); }
}

async function uploadFile(file) {
  status("Uploading…");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    await showImage(await (await api("/api/images/upload", { method: "POST", body: form })).json());
  } catch (error) { status(error.message, true); }
}

async function showImage(image) {
  state.image = image;
  const [h, w] = image.is_3d ? image.shape.slice(1) : image.shape;
  const scale = Math.min(640 / w, 640 / h);
  canvas.width = Math.round(w * scale);
  canvas.height = Math.round(h * scale);
  state.scale = scale;
  const slider = $("slice-slider");
  slider.max = Math.max(0, image.num_slices - 1);
  slider.disabled = !image.is_3d;
  state.has3d = false;
  $("save-btn").disabled = true;
  $("propagate-btn").disabled = !image.is_3d;
  $("clear-btn").disabled = false;
  clearMeasurements();
  await goToSlice(Math.floor(image.num_slices / 2));
  const warnings = image.warnings || [];
  status(`Open: ${image.modality || ""} ${image.shape.join(" × ")}` +
    (warnings.length ? ` — warning: ${warnings.join("; ")}` : ""), warnings.length > 0);
}

async function goToSlice(z) {
  if (!state.image) return;
  z = Math.max(0, Math.min(state.image.num_slices - 1, z));
  state.z = z;
  state.points = [];
  state.box = null;
  state.overlay = null;
  $("slice-slider").value = z;
  // slices are numbered from 0, as in the CLI, the API and napari: "z / last"
  $("slice-label").textContent = state.image.is_3d ? `${z} / ${state.image.num_slices - 1}` : "2D";
  const request = ++state.sliceRequest;
  const window = $("window-select").value;
  const query = window ? `?window=${encodeURIComponent(window)}` : "";
  try {
    const slice = await bitmapFrom(await api(`/api/images/${state.image.image_id}/slices/${z}${query}`));
    let overlay = null;
    if (state.has3d) overlay = await bitmapFrom(await api(`/api/images/${state.image.image_id}/result/${z}`));
    if (request !== state.sliceRequest) return;  // the user scrolled on meanwhile
    state.slice = slice;
    state.overlay = overlay;
    draw();
  } catch (error) { status(error.message, true); }
}

// ---------------------------------------------------------------- drawing
function draw() {
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.slice) ctx.drawImage(state.slice, 0, 0, canvas.width, canvas.height);
  if (state.overlay) ctx.drawImage(state.overlay, 0, 0, canvas.width, canvas.height);
  const s = state.scale || 1;
  const box = state.drag && state.dragNow ? boxFrom(state.drag, state.dragNow) : state.box;
  if (box) {
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#5fd0ff";
    ctx.lineWidth = 2;
    ctx.strokeRect((box[0] + 0.5) * s, (box[1] + 0.5) * s, (box[2] - box[0]) * s, (box[3] - box[1]) * s);
    ctx.setLineDash([]);
  }
  for (const p of state.points) {
    ctx.beginPath();
    ctx.arc((p.x + 0.5) * s, (p.y + 0.5) * s, 5, 0, 2 * Math.PI);
    ctx.fillStyle = p.positive ? "#3ddc5a" : "#ff4d4d";
    ctx.fill();
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.stroke();
  }
}

function clearMeasurements() {
  for (const cell of document.querySelectorAll("#measurements td[data-field]")) cell.textContent = "–";
  $("latency").textContent = "–";
}

function showMeasurements(answer, latencyMs) {
  const m = answer.measurements;
  const set = (field, text) => { document.querySelector(`td[data-field="${field}"]`).textContent = text; };
  set("score", answer.score !== undefined ? answer.score.toFixed(3) : "–");
  set("area", m && m.area_mm2 != null ? `${m.area_mm2.toFixed(0)} mm²` : "–");
  set("volume", m && m.volume_ml != null ? `${m.volume_ml.toFixed(1)} mL` : "–");
  set("long", m ? `${m.recist_long_mm.toFixed(1)} mm` : "–");
  set("short", m ? `${m.recist_short_mm.toFixed(1)} mm` : "–");
  set("slices", answer.slices ? `${answer.slices[0]}–${answer.slices[1]}` : "–");
  $("latency").textContent = `${latencyMs.toFixed(0)} ms`;
}

// ---------------------------------------------------------------- prompts
function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  const s = state.scale || 1;
  return { x: Math.floor((event.clientX - rect.left) / s), y: Math.floor((event.clientY - rect.top) / s) };
}

function boxFrom(a, b) {
  return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
}

async function segment() {
  if (!state.image || (!state.points.length && !state.box)) return;
  // the page draws the PNG overlay: the outlines as polygons would only cost time
  const body = { z: state.image.is_3d ? state.z : null, points: state.points, box: state.box, contours: false };
  const started = performance.now();
  try {
    const answer = await (await api(`/api/images/${state.image.image_id}/segment`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    const overlay = await createImageBitmap(await (await fetch(`data:image/png;base64,${answer.overlay_png}`)).blob());
    if (body.z !== (state.image.is_3d ? state.z : null)) return;
    state.overlay = overlay;
    state.has3d = false;
    draw();
    showMeasurements(answer, performance.now() - started);
    $("save-btn").disabled = answer.empty || !state.image.dicom;
    status(answer.empty ? "Nothing found at this prompt" : `Segmented slice ${state.z}`);
  } catch (error) { status(error.message, true); }
}

async function propagate() {
  if (!state.points.length && !state.box) { status("Click or drag on a slice first", true); return; }
  status("Propagating through the volume…");
  $("propagate-btn").disabled = true;
  const started = performance.now();
  try {
    const answer = await (await api(`/api/images/${state.image.image_id}/propagate`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        z: state.z, points: state.points, box: state.box,
        max_slices: Number($("max-slices").value) || null,
      }),
    })).json();
    state.has3d = true;
    showMeasurements(answer, performance.now() - started);
    state.overlay = await bitmapFrom(await api(`/api/images/${state.image.image_id}/result/${state.z}`));
    draw();
    $("save-btn").disabled = !state.image.dicom;
    status(`3D result on slices ${answer.slices[0]}–${answer.slices[1]}`);
  } catch (error) { status(error.message, true); }
  $("propagate-btn").disabled = false;
}

async function save() {
  status("Saving to the PACS…");
  try {
    const answer = await (await api(`/api/images/${state.image.image_id}/store`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ format: $("save-format").value, name: $("save-name").value || "Lesion" }),
    })).json();
    $("save-result").textContent = `Stored ${answer.format.toUpperCase()} "${answer.name}" on the PACS.`;
    status("Saved");
  } catch (error) { status(error.message, true); }
}

// ---------------------------------------------------------------- events
canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("mousedown", (event) => {
  if (!state.image) return;
  state.drag = toImage(event);
  state.dragButton = event.button;
  state.dragNow = null;
});
canvas.addEventListener("mousemove", (event) => {
  if (!state.drag || state.dragButton !== 0) return;
  state.dragNow = toImage(event);
  draw();
});
canvas.addEventListener("mouseup", (event) => {
  if (!state.drag) return;
  const end = toImage(event);
  const start = state.drag;
  state.drag = null;
  state.dragNow = null;
  const moved = Math.abs(end.x - start.x) + Math.abs(end.y - start.y);
  if (state.dragButton === 0 && moved * (state.scale || 1) > 6) {
    state.box = boxFrom(start, end);
  } else {
    state.points.push({ x: end.x, y: end.y, positive: event.button !== 2 });
  }
  draw();
  segment();
});
canvas.addEventListener("wheel", (event) => {
  if (!state.image || !state.image.is_3d) return;
  event.preventDefault();
  goToSlice(state.z + (event.deltaY > 0 ? 1 : -1));
}, { passive: false });
document.addEventListener("keydown", (event) => {
  if (event.key === "ArrowUp") goToSlice(state.z + 1);
  if (event.key === "ArrowDown") goToSlice(state.z - 1);
});
$("slice-slider").addEventListener("input", (event) => goToSlice(Number(event.target.value)));
$("window-select").addEventListener("change", () => goToSlice(state.z));
$("file-input").addEventListener("change", (event) => event.target.files[0] && uploadFile(event.target.files[0]));
$("clear-btn").addEventListener("click", () => {
  state.points = []; state.box = null; state.overlay = null; state.has3d = false; clearMeasurements(); draw();
});
$("propagate-btn").addEventListener("click", propagate);
$("save-btn").addEventListener("click", save);
$("token-save").addEventListener("click", () => {
  sessionStorage.setItem("oncoseg-token", $("token-input").value.trim());
  $("token-box").hidden = true;
  loadWindows();
  loadSeries();
});

loadWindows();
loadSeries().then(() => status("Ready: pick a series or upload an image"));
