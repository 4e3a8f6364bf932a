// The explorer's page, written for this project: plain JavaScript, no library, nothing fetched
// from anywhere but the explore.py server that serves it.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"];
// A dark-to-bright colour map for the uncertainty and loss maps (stops of matplotlib's inferno).
const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

const state = {
  info: null, points: null, bounds: null, background: null,
  pointer: null, inFlight: false, pending: null, latencies: [],
  selected: null, own: null, pathEnds: [], pathMode: false,
  // Each click, upload or path gets a ticket: an answer that arrives after a newer request was
  // made is dropped, so a slow answer never overwrites a newer one.
  tickets: { selected: 0, path: 0 },
};
window.explorerLatencies = state.latencies;  // read by the browser test

const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    throw new Error(`The server answered ${response.status} without a readable body.`);
  }
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

function colour(label) {
  if (label === null || label === undefined) return PALETTE[0];
  if (label < PALETTE.length) return PALETTE[label];
  return `hsl(${(label * 137.5) % 360}, 60%, 45%)`;
}

// ---- images ---------------------------------------------------------------------------------
function pixelsOf(encoded) {
  const raw = atob(encoded.pixels);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function heat(value) {
  const position = (value / 255) * (HEAT.length - 1);
  const low = Math.min(Math.floor(position), HEAT.length - 2);
  const t = position - low;
  return HEAT[low].map((c, i) => Math.round(c + t * (HEAT[low + 1][i] - c)));
}

// Draws an image ({height, width, channels, pixels}) or a map ({height, width, pixels}, drawn
// in HEAT) onto a canvas, each pixel as a square block.
function drawPixels(canvas, encoded, isMap) {
  const bytes = pixelsOf(encoded);
  const { width, height } = encoded;
  const channels = isMap ? 1 : encoded.channels;
  const frame = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    let rgb;
    if (isMap) rgb = heat(bytes[i]);
    else if (channels === 1) rgb = [bytes[i], bytes[i], bytes[i]];
    else rgb = [bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2]];
    frame.data.set([...rgb, 255], 4 * i);
  }
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  scratch.getContext("2d").putImageData(frame, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

// ---- the latent plane -----------------------------------------------------------------------
function toPixels(x, y) {
  const { xMin, xMax, yMin, yMax } = state.bounds;
  const canvas = $("plane");
  return [(x - xMin) / (xMax - xMin) * canvas.width, (yMax - y) / (yMax - yMin) * canvas.height];
}

function toLatent(px, py) {
  const { xMin, xMax, yMin, yMax } = state.bounds;
  const canvas = $("plane");
  return [xMin + px / canvas.width * (xMax - xMin), yMax - py / canvas.height * (yMax - yMin)];
}

function computeBounds(points) {
  // Every test point, and at least the prior's +-3 standard deviations, with a margin.
  let xMin = -3, xMax = 3, yMin = -3, yMax = 3;
  for (let i = 0; i < points.x.length; i++) {
    xMin = Math.min(xMin, points.x[i]); xMax = Math.max(xMax, points.x[i]);
    yMin = Math.min(yMin, points.y[i]); yMax = Math.max(yMax, points.y[i]);
  }
  const pad = 0.04;
  return { xMin: xMin - pad * (xMax - xMin), xMax: xMax + pad * (xMax - xMin),
           yMin: yMin - pad * (yMax - yMin), yMax: yMax + pad * (yMax - yMin) };
}

function drawBackground() {
  // The test points are drawn once, onto a canvas of their own; each frame copies it.
  const canvas = $("plane");
  const background = document.createElement("canvas");
  background.width = canvas.width;
  background.height = canvas.height;
  const context = background.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = "#ddd";
  const [ox, oy] = toPixels(0, 0);
  context.beginPath();
  context.moveTo(ox, 0); context.lineTo(ox, canvas.height);
  context.moveTo(0, oy); context.lineTo(canvas.width, oy);
  context.stroke();
  context.globalAlpha = 0.55;
  const { x, y, labels } = state.points;
  for (let i = 0; i < x.length; i++) {
    const [px, py] = toPixels(x[i], y[i]);
    context.fillStyle = colour(labels ? labels[i] : null);
    context.fillRect(px - 1.5, py - 1.5, 3, 3);
  }
  state.background = background;
}

function redrawPlane() {
  const canvas = $("plane");
  const context = canvas.getContext("2d");
  context.drawImage(state.background, 0, 0);
  const [d0, d1] = state.info.dims;
  if (state.pathEnds.length) {
    context.strokeStyle = "#000";
    context.lineWidth = 2;
    context.beginPath();
    state.pathEnds.forEach((z, i) => {
      const [px, py] = toPixels(z[d0], z[d1]);
      if (i === 0) context.moveTo(px, py); else context.lineTo(px, py);
    });
    context.stroke();
    state.pathEnds.forEach((z) => {
      const [px, py] = toPixels(z[d0], z[d1]);
      context.fillStyle = "#000";
      context.fillRect(px - 4, py - 4, 8, 8);
    });
  }
  if (state.selected !== null) {
    const [px, py] = toPixels(state.points.x[state.selected], state.points.y[state.selected]);
    context.strokeStyle = "#000";
    context.lineWidth = 2;
    context.beginPath();
    context.arc(px, py, 7, 0, 2 * Math.PI);
    context.stroke();
  }
  if (state.own) {
    // q(z|x) of the image: its mean, and an ellipse at +-2 standard deviations.
    const { zMean, zSigma } = state.own;
    const [cx, cy] = toPixels(zMean[d0], zMean[d1]);
    const [ex] = toPixels(zMean[d0] + 2 * zSigma[d0], zMean[d1]);
    const [, ey] = toPixels(zMean[d0], zMean[d1] + 2 * zSigma[d1]);
    context.strokeStyle = "#d00";
    context.lineWidth = 2;
    context.beginPath();
    context.ellipse(cx, cy, Math.max(Math.abs(ex - cx), 2), Math.max(Math.abs(cy - ey), 2), 0, 0,
                    2 * Math.PI);
    context.stroke();
    context.fillStyle = "#d00";
    context.fillRect(cx - 3, cy - 3, 6, 6);
  }
}

function latentAt(px, py) {
  // The full code of a point of the plane: its two shown dimensions, the others from the sliders.
  const z = new Array(state.info.latent_dim).fill(0);
  document.querySelectorAll("#sliders input").forEach((slider) => {
    z[Number(slider.dataset.dim)] = Number(slider.value);
  });
  const [x, y] = toLatent(px, py);
  z[state.info.dims[0]] = x;
  z[state.info.dims[1]] = y;
  return z;
}

function classLabel() {
  return state.info.conditional ? Number($("class-select").value) : null;
}

// ---- decoding under the pointer: the latest position wins, one request at a time -------------
function requestDecode(z, started) {
  if (state.inFlight) {
    state.pending = { z, started };
    return;
  }
  state.inFlight = true;
  api("/api/decode", { method: "POST", body: JSON.stringify({ z: [z], label: classLabel() }) })
    .then((answer) => {
      drawPixels($("decoded"), answer.images[0], false);
      if ($("message").textContent.startsWith("decode: ")) showMessage("");
      state.latencies.push(performance.now() - started);
      showLatency();
    })
    .catch((error) => showMessage(`decode: ${error.message}`))
    .finally(() => {
      state.inFlight = false;
      if (state.pending) {
        const { z: next, started: when } = state.pending;
        state.pending = null;
        requestDecode(next, when);
      }
    });
}

function showLatency() {
  const sorted = [...state.latencies].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  $("latency").textContent = `Pointer to decoded image: median ${median.toFixed(1)} ms over ` +
    `${sorted.length} moves.`;
}

// The pointer's position in the canvas's own pixels (its border and any CSS scaling left out).
function canvasPoint(event) {
  const canvas = event.target;
  return [event.offsetX * canvas.width / canvas.clientWidth,
          event.offsetY * canvas.height / canvas.clientHeight];
}

function onPointerMove(event) {
  const started = performance.now();
  const z = latentAt(...canvasPoint(event));
  const [d0, d1] = state.info.dims;
  $("pointer-z").textContent = `z[${d0}] = ${z[d0].toFixed(2)}, z[${d1}] = ${z[d1].toFixed(2)}`;
  requestDecode(z, started);
}

function nearestTestPoint(px, py) {
  let best = null;
  let bestDistance = 64;  // within 8 pixels
  for (let i = 0; i < state.points.x.length; i++) {
    const [qx, qy] = toPixels(state.points.x[i], state.points.y[i]);
    const distance = (qx - px) ** 2 + (qy - py) ** 2;
    if (distance < bestDistance) { best = i; bestDistance = distance; }
  }
  return best;
}

function onPlaneClick(event) {
  const [px, py] = canvasPoint(event);
  if ($("path-mode").checked) {
    addPathEnd(latentAt(px, py));
    return;
  }
  const index = nearestTestPoint(px, py);
  if (index === null) return;
  state.selected = index;
  state.own = null;  // the ellipse belongs to the image shown, and this one is not yours
  redrawPlane();
  const ticket = ++state.tickets.selected;
  api(`/api/test_point?index=${index}`)
    .then((answer) => {
      if (ticket !== state.tickets.selected) return;
      showSelected(answer, `Test image ${index}` + (answer.label !== null &&
        state.info.class_names ? ` (${state.info.class_names[answer.label]})` : ""));
    })
    .catch((error) => showMessage(error.message));
}

function showSelected(answer, title) {
  showMessage("");
  $("selected").hidden = false;
  $("selected-title").textContent = title;
  drawPixels($("sel-image"), answer.image, false);
  drawPixels($("sel-reconstruction"), answer.reconstruction, false);
  drawPixels($("sel-uncertainty"), answer.uncertainty, true);
  drawPixels($("sel-loss"), answer.loss, true);
  $("cap-uncertainty").textContent = `uncertainty (0 to ${answer.uncertainty.max.toFixed(3)})`;
  $("cap-loss").textContent = `loss (0 to ${answer.loss.max.toFixed(2)} nats)`;
  const flag = answer.anomalous ?
    '<span class="anomalous">anomalous</span>' : "not anomalous";
  const anomaly = answer.anomaly_score === undefined ? "" :
    `; anomaly score ${answer.anomaly_score.toFixed(2)} nats`;
  $("numbers").innerHTML =
    `Negative ELBO <b id="score-value">${answer.score.toFixed(2)}</b> nats ` +
    `(${answer.bits_per_dim.toFixed(4)} bits per dimension)${anomaly}; percentile ` +
    `<b id="percentile-value">${answer.percentile.toFixed(1)}</b> of the ` +
    `${state.info.test_images} test scores: ${flag} (${state.info.rule}).`;
  state.lastCode = answer.z_mean;
}

// ---- your own image -------------------------------------------------------------------------
async function scoreBlob(blob, name) {
  const label = classLabel();
  const ticket = ++state.tickets.selected;
  try {
    const answer = await api(`/api/score${label === null ? "" : `?label=${label}`}`,
                             { method: "POST", body: blob });
    if (ticket !== state.tickets.selected) return;
    state.selected = null;
    state.own = { zMean: answer.z_mean, zSigma: answer.z_sigma };
    redrawPlane();
    showSelected(answer, `Your image: ${name}`);
  } catch (error) {
    showMessage(`${name}: ${error.message}`);
  }
}

function setUpDrawing() {
  const canvas = $("draw");
  const context = canvas.getContext("2d");
  const clear = () => { context.fillStyle = "#000"; context.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  context.strokeStyle = "#fff";
  context.lineWidth = 18;
  context.lineCap = "round";
  context.lineJoin = "round";
  let drawing = false;
  const at = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    context.beginPath();
    context.moveTo(...at(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    context.lineTo(...at(event));
    context.stroke();
  });
  window.addEventListener("pointerup", () => { drawing = false; });
  $("clear-drawing").addEventListener("click", clear);
  $("score-drawing").addEventListener("click", () => {
    canvas.toBlob((blob) => scoreBlob(blob, "your drawing"), "image/png");
  });
}

function setUpUploads() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) scoreBlob(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) scoreBlob(file, file.name);
  });
}

// ---- a path between two codes ---------------------------------------------------------------
function addPathEnd(z) {
  if (state.pathEnds.length === 2) state.pathEnds = [];
  state.pathEnds.push(z);
  redrawPlane();
  if (state.pathEnds.length === 2) decodePath();
}

async function decodePath() {
  const [start, end] = state.pathEnds;
  const ticket = ++state.tickets.path;
  try {
    const answer = await api("/api/path", { method: "POST",
      body: JSON.stringify({ start, end, label: classLabel() }) });
    if (ticket !== state.tickets.path) return;
    const strip = $("path-strip");
    strip.innerHTML = "";
    answer.images.forEach((image) => {
      const canvas = document.createElement("canvas");
      canvas.width = 52;
      canvas.height = 52;
      drawPixels(canvas, image, false);
      strip.appendChild(canvas);
    });
  } catch (error) {
    showMessage(error.message);
  }
}

function codeOfSelection() {
  // The full z_mean of the image on show (a clicked test image, or yours).
  return state.lastCode || null;
}

// ---- start ----------------------------------------------------------------------------------
function setUpControls() {
  const info = state.info;
  if (info.conditional) {
    $("class-control").hidden = false;
    info.class_names.forEach((name, i) => {
      const option = document.createElement("option");
      option.value = i;
      option.textContent = name;
      $("class-select").appendChild(option);
    });
  }
  if (info.latent_dim > 2) {
    $("sliders-box").hidden = false;
    for (let d = 0; d < info.latent_dim; d++) {
      if (info.dims.includes(d)) continue;
      const label = document.createElement("label");
      label.innerHTML = `z[${d}] <input type="range" min="-3" max="3" step="0.1" value="0" ` +
        `data-dim="${d}">`;
      $("sliders").appendChild(label);
    }
  }
  if (info.image_shape[2] === 1) {
    $("draw-box").hidden = false;
    setUpDrawing();
  }
  const legend = $("legend");
  if (state.points.labels && info.class_names) {
    info.class_names.forEach((name, i) => {
      const item = document.createElement("span");
      item.style.setProperty("--colour", colour(i));
      item.textContent = name;
      legend.appendChild(item);
    });
  }
  $("plane").addEventListener("pointermove", onPointerMove);
  $("plane").addEventListener("click", onPlaneClick);
  $("path-start").addEventListener("click", () => {
    const z = codeOfSelection();
    if (z) { state.pathEnds = [z]; redrawPlane(); }
  });
  $("path-end").addEventListener("click", () => {
    const z = codeOfSelection();
    if (z && state.pathEnds.length === 1) addPathEnd(z);
  });
  setUpUploads();
}

async function start() {
  try {
    state.info = await api("/api/info");
    state.points = await api("/api/latents");
  } catch (error) {
    showMessage(error.message);
    return;
  }
  const info = state.info;
  const [h, w, c] = info.image_shape;
  $("summary").textContent = `${info.architecture} model, ${h}×${w}×${c} images, latent size ` +
    `${info.latent_dim}${info.conditional ? ", conditional" : ""}; ${info.test_images} test images.`;
  $("dims-note").textContent = info.latent_dim > 2 ?
    `(dimensions ${info.dims[0]} and ${info.dims[1]}: the two with the largest KL)` : "";
  state.bounds = computeBounds(state.points);
  drawBackground();
  redrawPlane();
  setUpControls();
  document.body.dataset.ready = "true";  // the browser test waits for this
}

start();
