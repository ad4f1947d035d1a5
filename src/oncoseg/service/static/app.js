// Onco-Seg web page: pick a series, scroll slices, click/drag prompts, see the mask and measurements,
// propagate in 3D (a job: progress, cancel, the mask filling in as slices finish), correct a 3D result by
// clicking on any slice, download the result.
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
  has3d: false,       // a propagated result exists: clicks and boxes on any slice correct it
  hasResult: false,   // the server holds a non-empty result (download, save)
  sliceScores: null,  // per-slice scores of the 3D result {z: score}
  job: null,          // id of the 3D job running (propagation or correction)
  jobDrawn: new Set(),  // slices whose finished mask of the running job is drawn
  cancelPending: false,  // Cancel was pressed before the job's id came back
  choosing: false,    // a Smaller/Larger request is on its way (on a 3D result it walks the volume again)
  sliceRequest: 0,
  alternatives: { smaller: 0, larger: 0 },  // other answers to the clicks on this slice (Smaller / Larger)
  ready: null,        // from /ready: the slices whose embedding is computed (a click there is fast)
  readyPolling: false,
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
  state.job = null;  // a job on the previous image finishes on its own; its page loop sees the image changed
  const [h, w] = image.is_3d ? image.shape.slice(1) : image.shape;
  const scale = Math.min(640 / w, 640 / h);
  canvas.width = Math.round(w * scale);
  canvas.height = Math.round(h * scale);
  state.scale = scale;
  const slider = $("slice-slider");
  slider.max = Math.max(0, image.num_slices - 1);
  slider.disabled = !image.is_3d;
  state.has3d = false;
  state.sliceScores = null;
  state.ready = null;
  setHasResult(false);
  setAlternatives(null);
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
  setAlternatives(null);
  $("slice-slider").value = z;
  // slices are numbered from 0, as in the CLI, the API and napari: "z / last"
  $("slice-label").textContent = state.image.is_3d ? `${z} / ${state.image.num_slices - 1}` : "2D";
  const request = ++state.sliceRequest;
  const window = $("window-select").value;
  const query = window ? `?window=${encodeURIComponent(window)}` : "";
  try {
    const slice = await bitmapFrom(await api(`/api/images/${state.image.image_id}/slices/${z}${query}`));
    let overlay = null;
    if (state.job) {  // the running job's mask: finished slices new, the others as before
      overlay = await bitmapFrom(await api(`/api/images/${state.image.image_id}/jobs/${state.job}/result/${z}`));
    } else if (state.has3d) {
      overlay = await bitmapFrom(await api(`/api/images/${state.image.image_id}/result/${z}`));
    }
    if (request !== state.sliceRequest) return;  // the user scrolled on meanwhile
    state.slice = slice;
    state.overlay = overlay;
    if (state.has3d && !state.job) refreshAlternatives();
    showSliceScore();
    draw();
    pollReady();  // showing the slice made the server encode it and its neighbours ahead
  } catch (error) { status(error.message, true); }
}

// ---------------------------------------------------------------- slices ready (encoded ahead)
function drawReady() {
  const bar = $("ready-bar");
  const c = bar.getContext("2d");
  c.clearRect(0, 0, bar.width, bar.height);
  if (!state.image || !state.ready) return;
  const n = state.image.num_slices;
  const w = bar.width / n;
  c.fillStyle = "#3ddc5a";
  for (const z of state.ready.ready) c.fillRect(z * w, 0, Math.max(1, w), bar.height);
  c.fillStyle = "#ffffff";
  if (state.image.is_3d) c.fillRect(state.z * w, 0, Math.max(2, w), 2);
  bar.dataset.ready = state.ready.ready.join(",");
}

async function pollReady() {
  // while the server encodes ahead, show which slices are ready about twice a second
  if (state.readyPolling || !state.image) return;
  state.readyPolling = true;
  try {
    for (;;) {
      const imageId = state.image.image_id;
      const ready = await (await api(`/api/images/${imageId}/ready`)).json();
      if (!state.image || state.image.image_id !== imageId) continue;
      state.ready = ready;
      drawReady();
      if (!ready.encoding) break;
      await sleep(500);
    }
  } catch (error) { /* the image was closed: nothing to show */ }
  state.readyPolling = false;
}

function setAlternatives(alternatives) {
  state.alternatives = alternatives || { smaller: 0, larger: 0 };
  const idle = !state.choosing && !state.job;
  $("smaller-btn").disabled = !state.alternatives.smaller || !idle;
  $("larger-btn").disabled = !state.alternatives.larger || !idle;
}

async function refreshAlternatives() {
  // a 3D result offers other sizes only on the slices whose clicks found them (the start slice of a
  // propagation from clicks): ask for the slice on screen
  const imageId = state.image.image_id;
  const z = state.image.is_3d ? state.z : 0;
  try {
    const offered = await (await api(`/api/images/${imageId}/alternatives/${z}`)).json();
    if (z === (state.image.is_3d ? state.z : 0) && state.image.image_id === imageId) setAlternatives(offered);
  } catch (error) { /* no result any more: the buttons stay off */ }
}

async function choose(which) {
  // another answer to the same clicks: the next smaller or larger mask the model offered; on a 3D result the
  // volume is walked again from this slice (the answer carries the new volume's measurements)
  if (!state.image || state.choosing || state.job) return;
  const imageId = state.image.image_id;
  const volume = state.has3d;
  const body = { which, z: state.image.is_3d ? state.z : null, contours: false };
  const started = performance.now();
  state.choosing = true;
  setAlternatives(state.alternatives);  // both off until the answer comes
  $("propagate-btn").disabled = true;
  if (volume) {
    status(`Taking the ${which} answer on slice ${body.z} and walking the volume again…`);
    $("job-progress").removeAttribute("value");  // indeterminate: the walk reports no progress
    $("job-label").textContent = "walking the volume again…";
    $("cancel-btn").hidden = true;
    $("job-box").hidden = false;
  }
  let answer = null;
  try {
    answer = await (await api(`/api/images/${imageId}/choose`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
  } catch (error) { status(error.message, true); }
  state.choosing = false;
  $("job-box").hidden = true;
  $("cancel-btn").hidden = false;
  $("propagate-btn").disabled = !state.image.is_3d;
  if (state.image.image_id !== imageId) return;  // another image was opened meanwhile
  if (!answer) { setAlternatives(state.alternatives); return; }
  if (volume) {
    // the volume's numbers, the current slice's score; the other slices' scores from /measurements
    showMeasurements({ ...answer, measurements: answer.volume_measurements }, performance.now() - started);
    try {
      const measured = await (await api(`/api/images/${imageId}/measurements`)).json();
      state.sliceScores = measured.slice_scores || state.sliceScores;
    } catch (error) { /* keeps the scores shown */ }
  } else {
    showMeasurements(answer, performance.now() - started);
  }
  setHasResult(!answer.empty);
  status(`Took the ${which} answer on slice ${body.z ?? 0}` + (volume ? " (volume walked again)" : ""));
  if (body.z !== (state.image.is_3d ? state.z : null)) {  // scrolled on meanwhile: redraw the slice shown
    if (volume) { await showResultOverlay(); refreshAlternatives(); }
    return;
  }
  setAlternatives(answer.alternatives);
  state.overlay = await createImageBitmap(await (await fetch(`data:image/png;base64,${answer.overlay_png}`)).blob());
  draw();
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

function showSliceScore() {
  // a 3D result has one score per slice: show the current slice's
  if (!state.sliceScores) return;
  const score = state.sliceScores[String(state.z)];
  document.querySelector('td[data-field="score"]').textContent = score !== undefined ? score.toFixed(3) : "–";
}

function setHasResult(has) {
  state.hasResult = has;
  $("save-btn").disabled = !has || !state.image || !state.image.dicom;
  $("download-btn").disabled = !has;
  $("download-seg").disabled = !state.image || !state.image.dicom || !state.image.is_3d;
  if ($("download-seg").disabled && $("download-format").value === "seg") $("download-format").value = "nifti";
}

function showMeasurements(answer, latencyMs) {
  const m = answer.measurements;
  const set = (field, text) => { document.querySelector(`td[data-field="${field}"]`).textContent = text; };
  set("score", answer.score !== undefined ? answer.score.toFixed(3) : "–");
  const q = answer.quality;
  set("quality", q ? (q.review ? `REVIEW ${q.estimate.toFixed(2)}: ${q.reasons.join(", ")}` : q.estimate.toFixed(2)) : "–");
  document.querySelector('td[data-field="quality"]').classList.toggle("review", Boolean(q && q.review));
  const u = m && m.unit === "px" ? "px" : "mm";  // a picture without a physical pixel size: pixels
  set("area", m && m[`area_${u}2`] != null ? `${m[`area_${u}2`].toFixed(0)} ${u}²` : "–");
  set("volume", m && m.volume_ml != null ? `${m.volume_ml.toFixed(1)} mL`
    : m && m.volume_px3 != null ? `${m.volume_px3} px³` : "–");
  set("long", m ? `${m[`recist_long_${u}`].toFixed(1)} ${u}` : "–");
  set("short", m ? `${m[`recist_short_${u}`].toFixed(1)} ${u}` : "–");
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
    state.sliceScores = null;
    draw();
    showMeasurements(answer, performance.now() - started);
    setAlternatives(answer.alternatives);
    setHasResult(!answer.empty);
    status(answer.empty ? "Nothing found at this prompt" : `Segmented slice ${state.z}`);
  } catch (error) { status(error.message, true); }
}

function propagate() {
  if (!state.points.length && !state.box) { status("Click or drag on a slice first", true); return; }
  runJob({
    action: "propagate", z: state.z, points: state.points, box: state.box,
    max_slices: Number($("max-slices").value) || null,
  });
}

function correct() {
  // a click or box on any slice of the 3D result: that slice is segmented again and the volume re-walked from it
  runJob({ action: "refine", z: state.z, points: state.points, box: state.box });
}


function showProgress(job) {
  const bar = $("job-progress");
  bar.max = Math.max(1, job.total);
  bar.value = job.done;
  $("job-label").textContent = `${job.done} / ${job.total} slices`;
}

async function runJob(body) {
  const imageId = state.image.image_id;
  const started = performance.now();
  $("propagate-btn").disabled = true;
  setAlternatives(null);  // the job changes the answers: asked again when it ends
  $("job-progress").value = 0;
  $("job-label").textContent = "starting…";  // not the last job's count
  $("job-box").hidden = false;
  $("cancel-btn").disabled = false;
  state.cancelPending = false;
  status(body.action === "refine" ? `Correcting slice ${body.z} and propagating again…` : "Propagating through the volume…");
  let job = null;
  try {
    job = await (await api(`/api/images/${imageId}/jobs`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    state.job = job.job_id;
    state.jobDrawn = new Set();
    if (state.cancelPending) await api(`/api/images/${imageId}/jobs/${job.job_id}`, { method: "DELETE" });
    for (;;) {
      showProgress(job);
      // the mask fills in as slices finish: redraw the slice on screen once the job has finished it
      if (job.state === "running" && job.slices.includes(state.z) && !state.jobDrawn.has(state.z)) {
        const z = state.z;
        state.jobDrawn.add(z);
        const overlay = await bitmapFrom(await api(`/api/images/${imageId}/jobs/${job.job_id}/result/${z}`));
        if (z === state.z && state.image.image_id === imageId) { state.overlay = overlay; draw(); }
      }
      if (["done", "cancelled", "failed"].includes(job.state)) break;
      await sleep(250);
      job = await (await api(`/api/images/${imageId}/jobs/${job.job_id}`)).json();
    }
  } catch (error) {
    job = { state: "failed", error: { detail: error.message } };
  }
  state.job = null;
  $("job-box").hidden = true;
  $("propagate-btn").disabled = !state.image.is_3d;
  if (state.image.image_id !== imageId) return;  // another image was opened meanwhile
  if (job.state === "done" || body.action === "refine") {
    // the prompts are applied (or, for a correction that failed, dropped: the next click starts clean)
    state.points = [];
    state.box = null;
  }
  if (job.state === "done") {
    const result = job.result;
    state.has3d = true;
    setAlternatives(null);
    state.sliceScores = result.slice_scores;
    showMeasurements(result, performance.now() - started);
    showSliceScore();
    setHasResult(true);
    const where = body.action === "refine" ? ` (corrected on slice ${body.z})` : "";
    status(`3D result on slices ${result.slices[0]}–${result.slices[1]}${where}`);
  } else {
    if (job.state === "cancelled") status("Cancelled: the result is as it was before");
    else status(job.error ? job.error.detail : "the job failed", true);
  }
  // a propagation from clicks offers its start slice's other sizes; a cancelled one leaves those it had
  if (state.hasResult || state.has3d) refreshAlternatives();
  await showResultOverlay();
}

async function showResultOverlay() {
  // the image's current result on the slice on screen (none before any result)
  const imageId = state.image.image_id;
  const z = state.z;
  let overlay = null;
  if (state.hasResult || state.has3d) {
    try {
      overlay = await bitmapFrom(await api(`/api/images/${imageId}/result/${state.image.is_3d ? z : 0}`));
    } catch (error) { overlay = null; }
  }
  if (z !== state.z || state.image.image_id !== imageId) return;
  state.overlay = overlay;
  draw();
}

async function cancelJob() {
  $("cancel-btn").disabled = true;
  status("Cancelling…");
  if (!state.job) { state.cancelPending = true; return; }  // the job is being started: cancelled once it is
  try {
    await api(`/api/images/${state.image.image_id}/jobs/${state.job}`, { method: "DELETE" });
  } catch (error) { status(error.message, true); }
}

async function download() {
  const format = $("download-format").value;
  const name = encodeURIComponent($("save-name").value || "Lesion");
  try {
    const response = await api(`/api/images/${state.image.image_id}/download?format=${format}&name=${name}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = format === "seg" ? "oncoseg-result-seg.dcm" : "oncoseg-result.nii.gz";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status(`Downloaded ${link.download}`);
  } catch (error) { status(error.message, true); }
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
  if (state.job) { status("A 3D job is running: wait for it or cancel it"); return; }
  if (state.choosing) { status("Another size is being taken: wait for it"); return; }
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
  if (state.has3d) correct();  // a click or box on any slice of a 3D result corrects it there
  else segment();
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
  if (state.job || state.choosing) return;
  state.points = []; state.box = null; state.overlay = null; state.has3d = false; state.sliceScores = null;
  setHasResult(false); setAlternatives(null); clearMeasurements(); draw();
});
$("smaller-btn").addEventListener("click", () => choose("smaller"));
$("larger-btn").addEventListener("click", () => choose("larger"));
$("propagate-btn").addEventListener("click", propagate);
$("save-btn").addEventListener("click", save);
$("cancel-btn").addEventListener("click", cancelJob);
$("download-btn").addEventListener("click", download);
$("token-save").addEventListener("click", () => {
  sessionStorage.setItem("oncoseg-token", $("token-input").value.trim());
  $("token-box").hidden = true;
  loadWindows();
  loadSeries();
});

loadWindows();
loadSeries().then(() => status("Ready: pick a series or upload an image"));
