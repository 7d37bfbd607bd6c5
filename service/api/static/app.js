// The playground page: wires the controls to the API and draws what comes back.
//
// Search: POST /embed (pooling "none", unnormalised) gives the per-step context vectors for
// the heat map; pooled as the collection pools (mean, last or stats) and L2-normalised, they
// are exactly the collection's item vector, so that is the query of POST /search and the
// point placed on GET /collections/{name}/map.
// Add: POST /collections/{name}/items as multipart, so the service embeds the input itself
// and keeps its original.

import {
  ApiError,
  call,
  collectionPath,
  forgetKey,
  needsKey,
  storedKey,
  storeKey,
} from "./api.js";
import { drawMatrix, drawPatchGrid } from "./heatmap.js";
import { MAX_RECORD_SECONDS, startRecording } from "./recorder.js";
import { showResults } from "./results.js";
import { drawMap } from "./scatter.js";
import { normalize, pool, project } from "./vectors.js";

const MAP_POINTS = 500;
const $ = (id) => document.getElementById(id);
const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;

const state = {
  collections: new Map(), // name -> description
  modalities: new Map(), // model -> modality
  recorder: null,
  recorded: null, // the last recording, a WAV Blob
  autoId: true, // the item id was filled in by the page, not typed
  previewUrls: {}, // preview box id -> its blob: URL
  query: null, // {vector, neighbours} of the last search, for the map
};

class UserError extends Error {}

// -- messages -------------------------------------------------------------------------------

function say(text) {
  $("status").textContent = text;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) {
    forgetKey();
    askForKey(`${err.detail}. Enter the key again.`);
    return;
  }
  const text = err instanceof ApiError ? err.describe() : err.message || String(err);
  $("error").textContent = text;
  $("error").hidden = false;
  say("");
}

/**
 * Run `work` for `button`, once at a time. The button is marked busy rather than disabled,
 * so that it keeps the keyboard focus.
 */
async function busy(button, work) {
  if (button.getAttribute("aria-disabled") === "true") return;
  button.setAttribute("aria-disabled", "true");
  button.setAttribute("aria-busy", "true");
  clearError();
  try {
    await work();
  } catch (err) {
    showError(err);
  } finally {
    button.removeAttribute("aria-disabled");
    button.removeAttribute("aria-busy");
  }
}

// -- the API key ----------------------------------------------------------------------------

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-error").textContent = message || "";
  $("key-input").value = "";
  $("key-input").focus();
}

function onKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) {
    $("key-error").textContent = "Enter the key first.";
    return;
  }
  storeKey(key);
  $("key-panel").hidden = true;
  $("key-error").textContent = "";
  loadCollections().catch(showError);
}

// -- collections ----------------------------------------------------------------------------

function selected() {
  return state.collections.get($("collection").value);
}

function modalityOf(coll) {
  return coll ? state.modalities.get(coll.model) : undefined;
}

async function loadCollections(keep) {
  const [models, collections] = await Promise.all([
    call("GET", "/models"),
    call("GET", "/collections"),
  ]);
  state.modalities = new Map(models.models.map((m) => [m.name, m.modality]));
  state.collections = new Map(collections.collections.map((c) => [c.name, c]));
  const select = $("collection");
  const previous = keep || select.value;
  select.replaceChildren();
  for (const coll of state.collections.values()) {
    const option = document.createElement("option");
    option.value = coll.name;
    const modality = modalityOf(coll) || "model not loaded";
    option.textContent = `${coll.name} (${modality}, ${count(coll.count, "item", "items")})`;
    select.appendChild(option);
  }
  if (state.collections.has(previous)) select.value = previous;
  select.disabled = state.collections.size === 0;
  say(`${count(state.collections.size, "collection", "collections")} to choose from.`);
  onCollection(Boolean(keep));
}

function onCollection(keepQuery) {
  const coll = selected();
  if (!keepQuery) state.query = null;
  if (!coll) {
    $("collection-info").textContent = "No collection yet.";
    return;
  }
  const modality = modalityOf(coll);
  $("collection-info").textContent =
    `Model ${coll.model}` +
    (modality ? ` (${modality})` : ", not loaded: only vectors can be searched") +
    `, ${coll.pooling} pooling, ${coll.dim} dimensions, ${count(coll.count, "item", "items")}, ` +
    `${coll.index} index.`;
  if (!keepQuery && modality) setKind(modality === "text" ? "text" : "file");
  loadMap().catch(showError);
}

// -- the input ------------------------------------------------------------------------------

function kind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

function setKind(value) {
  document.querySelector(`input[name="kind"][value="${value}"]`).checked = true;
  onKind();
}

function onKind() {
  const current = kind();
  for (const name of ["file", "mic", "text"]) $(`${name}-input`).hidden = name !== current;
}

/** Show `blob` (a picture or a sound) in the preview box `boxId`; null clears it. */
function setPreview(boxId, blob) {
  const old = state.previewUrls[boxId];
  if (old) URL.revokeObjectURL(old);
  delete state.previewUrls[boxId];
  const box = $(boxId);
  box.replaceChildren();
  if (!blob) return;
  const url = URL.createObjectURL(blob);
  state.previewUrls[boxId] = url;
  if (blob.type.startsWith("image/")) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "the chosen picture";
    box.appendChild(img);
  } else if (blob.type.startsWith("audio/")) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = url;
    audio.setAttribute("aria-label", "play the chosen sound");
    box.appendChild(audio);
  }
}

function suggestId(id) {
  if (state.autoId || !$("item-id").value) {
    $("item-id").value = id;
    state.autoId = true;
  }
}

function onFile() {
  const file = $("file").files[0];
  setPreview("file-preview", file || null);
  if (file) suggestId(file.name);
}

async function onRecord() {
  const button = $("record");
  if (state.recorder) {
    const recorder = state.recorder;
    state.recorder = null;
    clearTimeout(state.recordTimer);
    state.recorded = await recorder.stop();
    button.textContent = "Start recording";
    button.setAttribute("aria-pressed", "false");
    $("record-state").textContent = `Recorded ${Math.round(state.recorded.size / 1024)} kB.`;
    setPreview("mic-preview", state.recorded);
    suggestId(`recording-${new Date().toISOString().slice(0, 19)}`);
    return;
  }
  clearError();
  try {
    state.recorder = await startRecording();
  } catch (err) {
    showError(new Error(`Could not use the microphone: ${err.message || err}`));
    return;
  }
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  $("record-state").textContent = `Recording… (stops by itself after ${MAX_RECORD_SECONDS} s)`;
  state.recordTimer = setTimeout(() => {
    if (state.recorder) onRecord().catch(showError);
  }, MAX_RECORD_SECONDS * 1000);
}

/** What to embed: {text} or {blob, name}; a UserError says what is missing. */
function currentInput() {
  const current = kind();
  if (current === "text") {
    const text = $("text").value.trim();
    if (!text) throw new UserError("Type some text first.");
    return { text };
  }
  if (current === "mic") {
    if (state.recorder) throw new UserError("Stop the recording first.");
    if (!state.recorded) throw new UserError("Record something first.");
    return { blob: state.recorded, name: "recording.wav" };
  }
  const file = $("file").files[0];
  if (!file) throw new UserError("Choose an audio or image file first.");
  return { blob: file, name: file.name };
}

// -- search ---------------------------------------------------------------------------------

async function embedSteps(input, model) {
  if (input.text !== undefined) {
    return call("POST", "/embed", {
      body: { model, inputs: [input.text], pooling: "none", normalize: false },
    });
  }
  const form = new FormData();
  form.append("file", input.blob, input.name);
  form.append("model", model);
  form.append("pooling", "none");
  form.append("normalize", "false");
  return call("POST", "/embed", { body: form });
}

async function drawSteps(result, input) {
  const steps = result.embeddings[0];
  const canvas = $("heatmap");
  const list = $("sentences");
  list.replaceChildren();
  let caption;
  if (result.grid) {
    const bitmap = input.blob ? await createImageBitmap(input.blob).catch(() => null) : null;
    drawPatchGrid(canvas, steps, result.grid, bitmap);
    const [rows, cols] = result.grid;
    caption =
      `A ${rows} × ${cols} patch grid over the picture: each cell is coloured by the first ` +
      `three principal components of its ${result.dim}-dimensional context vector, so cells ` +
      `the model describes alike look alike.`;
  } else {
    drawMatrix(canvas, steps);
    const what =
      result.hop_seconds !== undefined && result.hop_seconds !== null
        ? `${steps.length} steps of ${Math.round(result.hop_seconds * 1000)} ms ` +
          `(${(steps.length * result.hop_seconds).toFixed(2)} s)`
        : `${steps.length} sentences`;
    caption =
      `${what} × ${result.dim} dimensions: time runs left to right, one row per dimension; ` +
      `red above zero, blue below.`;
    for (const sentence of (result.sentences && result.sentences[0]) || []) {
      const item = document.createElement("li");
      item.textContent = sentence;
      list.appendChild(item);
    }
  }
  $("heatmap-caption").textContent = caption;
  canvas.setAttribute("aria-label", caption);
}

async function onSearch(event) {
  event.preventDefault();
  await busy($("search"), async () => {
    const coll = selected();
    if (!coll) throw new UserError("Choose a collection first.");
    const input = currentInput();
    say("Embedding…");
    const result = await embedSteps(input, coll.model);
    await drawSteps(result, input);
    const vector = normalize(pool(result.embeddings[0], coll.pooling));
    say("Searching…");
    const k = Number.parseInt($("k").value, 10) || 5;
    const found = await call("POST", "/search", {
      body: { collection: coll.name, vector, k, with_original: true },
    });
    state.query = { vector, neighbours: new Set(found.results.map((r) => r.id)) };
    await showResults($("results"), coll.name, found.results, showError);
    await loadMap();
    say(
      `Found ${count(found.results.length, "nearest item", "nearest items")} in ` +
        `${coll.name}; your input gave ${count(result.embeddings[0].length, "step", "steps")}.`,
    );
  });
}

async function loadMap() {
  const coll = selected();
  if (!coll) return;
  const map = await call("GET", `${collectionPath(coll.name, "map")}?limit=${MAP_POINTS}`);
  let query = null;
  if (state.query && map.mean.length) {
    const [x, y] = project(state.query.vector, map.mean, map.components);
    query = { x, y };
  }
  const text = drawMap($("map"), map.points, query, state.query ? state.query.neighbours : new Set());
  const share = map.explained_variance.reduce((a, b) => a + b, 0);
  $("map-caption").textContent =
    `${text} ${map.sampled} of ${count(map.count, "item", "items")} shown` +
    (map.sampled > 1 ? `; the two axes hold ${Math.round(100 * share)}% of their variance.` : ".");
}

// -- add ------------------------------------------------------------------------------------

function readMetadata() {
  const text = $("metadata").value.trim() || "{}";
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UserError(`The metadata is not valid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new UserError("The metadata must be a JSON object, such as {\"speaker\": \"m3\"}.");
  }
  return text;
}

async function onAdd(event) {
  event.preventDefault();
  await busy($("add"), async () => {
    const coll = selected();
    if (!coll) throw new UserError("Choose a collection first.");
    const id = $("item-id").value;
    if (!id) throw new UserError("Give the item an id.");
    const metadata = readMetadata();
    const input = currentInput();
    const form = new FormData();
    if (input.text !== undefined) form.append("text", input.text);
    else form.append("file", input.blob, input.name);
    form.append("id", id);
    form.append("metadata", metadata);
    form.append("keep_originals", $("keep-original").checked ? "true" : "false");
    say(`Adding ${id}…`);
    await call("POST", collectionPath(coll.name, "items"), { body: form });
    await loadCollections(coll.name);
    const now = count(selected().count, "item", "items");
    say(`Added ${id} to ${coll.name}, which now holds ${now}.`);
  });
}

// -- start ----------------------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", onKey);
  $("collection").addEventListener("change", () => onCollection(false));
  for (const radio of document.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", onKind);
  }
  $("file").addEventListener("change", onFile);
  $("record").addEventListener("click", () => onRecord().catch(showError));
  $("text").addEventListener("input", () => {
    const words = $("text").value.trim().split(/\s+/).slice(0, 4).join("-").toLowerCase();
    if (words) suggestId(words.slice(0, 64));
  });
  $("item-id").addEventListener("input", () => {
    state.autoId = false;
  });
  $("query-form").addEventListener("submit", onSearch);
  $("add-form").addEventListener("submit", onAdd);
  onKind();
  if (needsKey() && !storedKey()) {
    askForKey("");
    return;
  }
  loadCollections().catch(showError);
}

start();
