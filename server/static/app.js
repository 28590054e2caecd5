// The TRM web page: enter or generate a puzzle, POST /solve with stream: true, and render each supervision
// step as its Server-Sent Event arrives. Plain browser JavaScript, no build step, no network beyond this server.
"use strict";

const ARC_COLORS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
  "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"];
const KINDS = ["sudoku", "maze", "arc"];
const REFERENCE_THRESHOLD = 0.5; // the reference's q_halt > 0, for a server too old to say its own
const PLAY_MS = 450;

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const state = {
  kind: "sudoku",
  models: [],
  run: null, // {kind, input, steps: [], result, error, controller, maxSteps, views, threshold}
  view: 0, // 0 = the input, k = supervision step k
  follow: true, // keep the view on the newest step while streaming
  timer: null,
};

// ------------------------------------------------------------------ helpers
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of [].concat(children)) if (child) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
}

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function apiError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!body || typeof body !== "object") body = { message: res.statusText || "request failed" };
  return { status: res.status, error: body.error || "error", message: body.message || JSON.stringify(body), field: body.field || null };
}

function showError(err) {
  const box = $("#error");
  box.replaceChildren(
    el("strong", { text: `${err.status ? err.status + " " : ""}${err.error || "error"}` }),
    el("span", { text: err.message || "" }),
  );
  if (err.field) box.append(el("span", { class: "field-name", text: `field: ${err.field}` }));
  box.dataset.field = err.field || "";
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").replaceChildren();
}

// ------------------------------------------------------------------ inputs
function sudokuValues() {
  const text = $("#sudoku-text").value.replace(/\s+/g, "");
  const values = [];
  for (let i = 0; i < 81; i++) {
    const ch = text[i];
    values.push(ch && ch >= "1" && ch <= "9" ? Number(ch) : 0);
  }
  return values;
}

function sudokuGrid(values) {
  return Array.from({ length: 9 }, (_, r) => values.slice(r * 9, r * 9 + 9));
}

function buildSudokuEditor() {
  const editor = $("#sudoku-input");
  for (let r = 0; r < 9; r++) {
    for (let c = 0; c < 9; c++) {
      const input = el("input", {
        type: "text", inputmode: "numeric", maxlength: "1", "data-r": r, "data-c": c,
        "aria-label": `row ${r + 1} column ${c + 1}`, autocomplete: "off",
        class: `${c % 3 === 2 && c < 8 ? "edge-r " : ""}${r % 3 === 2 && r < 8 ? "edge-b" : ""}`.trim(),
      });
      editor.append(input);
    }
  }
  editor.addEventListener("input", (ev) => {
    const input = ev.target;
    const digit = input.value.replace(/[^1-9]/g, "").slice(-1);
    input.value = digit;
    const values = $$("input", editor).map((i) => (i.value ? i.value : "0"));
    $("#sudoku-text").value = values.join("");
    inputChanged();
    if (digit) focusCell(Number(input.dataset.r), Number(input.dataset.c) + 1);
  });
  editor.addEventListener("keydown", (ev) => {
    const input = ev.target;
    const r = Number(input.dataset.r);
    const c = Number(input.dataset.c);
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[ev.key]) {
      ev.preventDefault();
      focusCell(r + moves[ev.key][0], c + moves[ev.key][1]);
    } else if (ev.key === "Backspace" && !input.value) {
      focusCell(r, c - 1);
    }
  });
}

function focusCell(r, c) {
  if (c > 8) { r += 1; c = 0; }
  if (c < 0) { r -= 1; c = 8; }
  if (r < 0 || r > 8) return;
  const input = $(`#sudoku-input input[data-r="${r}"][data-c="${c}"]`);
  if (input) { input.focus(); input.select(); }
}

function syncSudokuEditor() {
  const values = sudokuValues();
  $$("#sudoku-input input").forEach((input, i) => {
    input.value = values[i] ? String(values[i]) : "";
    input.classList.toggle("has-value", values[i] > 0);
  });
}

function mazeRows(text) {
  const lines = text.replace(/\r/g, "").split("\n");
  while (lines.length && lines[lines.length - 1] === "") lines.pop();
  while (lines.length && lines[0] === "") lines.shift();
  // Editors often strip trailing spaces; a missing trailing cell is an open cell, so pad to the widest row.
  const width = Math.max(0, ...lines.map((l) => l.length));
  return lines.map((l) => l.padEnd(width, " "));
}

function arcInput() {
  const text = $("#arc-text").value.trim();
  if (!text) return { task: null, taskId: null, problem: null };
  try {
    let task = JSON.parse(text);
    let taskId = $("#arc-task-id").value.trim() || null;
    if (task && typeof task === "object" && task.task && !task.train) {
      taskId = taskId || task.task_id || null;
      task = task.task;
    }
    return { task, taskId, problem: null };
  } catch (e) {
    return { task: null, taskId: null, problem: `task is not valid JSON: ${e.message}` };
  }
}

// The current input as something the board can draw (the "step 0" view).
function currentInput() {
  if (state.kind === "sudoku") return sudokuGrid(sudokuValues());
  if (state.kind === "maze") return mazeRows($("#maze-text").value);
  return arcInput().task;
}

// ------------------------------------------------------------------ models and kind
async function loadModels() {
  try {
    const res = await fetch("/models", { headers: authHeaders() });
    if (!res.ok) throw await apiError(res);
    const body = await res.json();
    state.models = body.models || [];
  } catch (err) {
    state.models = [];
    $("#model-note").textContent = `Could not list models: ${err.message || err}`;
  }
  fillModels();
}

async function checkHealth() {
  const pill = $("#server-status");
  try {
    const res = await fetch("/health/ready");
    pill.dataset.state = res.ok ? "ready" : "not-ready";
    pill.textContent = res.ok ? `ready · ${state.models.length} model${state.models.length === 1 ? "" : "s"}` : "not ready";
  } catch (_) {
    pill.dataset.state = "down";
    pill.textContent = "server unreachable";
  }
}

// What the server halts at for this model and view count (calibrated per model, see GET /models). Until the
// result names the model that answered, an "auto" request shows the first model's.
function modelThreshold(model, views) {
  if (!model) return REFERENCE_THRESHOLD;
  const byViews = model.halt_threshold_by_views || {};
  const t = views > 1 && byViews[String(views)] !== undefined ? byViews[String(views)] : model.halt_threshold;
  return typeof t === "number" ? t : REFERENCE_THRESHOLD;
}

function haltThreshold() {
  return state.run ? state.run.threshold : modelThreshold(selectedModel(), Number($("#views").value) || 1);
}

function modelsOfKind() {
  return state.models.filter((m) => m.puzzle === state.kind);
}

function selectedModel() {
  const name = $("#model").value;
  const models = modelsOfKind();
  return models.find((m) => m.name === name) || models[0] || null;
}

function fillModels() {
  const select = $("#model");
  const models = modelsOfKind();
  const previous = select.value;
  select.replaceChildren();
  if (!models.length) {
    select.append(el("option", { value: "", text: `no ${state.kind} model loaded` }));
    select.disabled = true;
  } else {
    select.disabled = false;
    select.append(el("option", { value: "", text: "auto: trained on this size, else smallest that fits" }));
    for (const m of models) {
      const params = m.trainable_parameters ? ` · ${(m.trainable_parameters / 1e6).toFixed(2)}M params` : "";
      const size = (m.canvases || []).length ? `any size to ${m.max_side}` : `${m.grid_size}×${m.grid_size}`;
      select.append(el("option", { value: m.name, text: `${m.name} (${size}${params})` }));
    }
    if (models.some((m) => m.name === previous)) select.value = previous;
  }
  describeModel();
}

function describeModel() {
  const m = selectedModel();
  const note = $("#model-note");
  // A size-agnostic maze model takes any size up to its max_side: let Generate make mazes that big.
  const anySize = modelsOfKind().filter((x) => (x.canvases || []).length && (!$("#model").value || x === m));
  $("#maze-size-field").hidden = !anySize.length;
  if (anySize.length) $("#maze-size").title = `up to ${Math.max(...anySize.map((x) => x.max_side))} a side`;
  if (!m) {
    note.textContent = `The server has no ${state.kind} model loaded; solving will return an error.`;
    $("#max-steps").placeholder = "model default";
    return;
  }
  const steps = m.max_steps;
  $("#max-steps").placeholder = steps ? `model default (${steps})` : "model default";
  const card = m.card || {};
  const acc = Object.entries(card).find(([k, v]) => /acc/i.test(k) && typeof v === "number");
  const size = (m.canvases || []).length ? `any size up to ${m.max_side}×${m.max_side}` : `${m.grid_size}×${m.grid_size}`;
  const parts = [`${m.name}: ${m.arch || "trm"}, ${size}`, `${m.backend} on ${m.provider}`];
  const sides = m.trained_sides;
  if (sides && sides[0] !== sides[1]) parts.push(`trained on ${sides[0]}×${sides[0]} to ${sides[1]}×${sides[1]} mazes`);
  if (acc) parts.push(`${acc[0]} ${(acc[1] <= 1 ? acc[1] * 100 : acc[1]).toFixed(1)}%`);
  note.textContent = parts.join(" · ");
}

function setKind(kind) {
  if (!KINDS.includes(kind)) return;
  stopPlay();
  state.kind = kind;
  $("#kind").dataset.value = kind;
  $$("#kind [data-kind]").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.kind === kind)));
  $$(".panel").forEach((p) => { p.hidden = p.dataset.panel !== kind; });
  $("#views-field").hidden = kind === "arc"; // an ARC task is voted over its own variants
  $("#sample-note").textContent = "";
  fillModels();
  resetRun();
}

// ------------------------------------------------------------------ generate
async function generate() {
  clearError();
  const params = new URLSearchParams({ kind: state.kind });
  const size = state.kind === "maze" && !$("#maze-size-field").hidden ? $("#maze-size").value.trim() : "";
  if (size) {
    const [h, w] = size.toLowerCase().split(/[x×*, ]+/);
    params.set("side", h);
    if (w) params.set("width", w);
  } else if (state.kind === "maze" || state.kind === "arc") {
    const m = selectedModel();
    const sides = $("#model").value && m ? [m.grid_size] : modelsOfKind().map((x) => x.grid_size);
    if (sides.length) params.set("max_side", String(Math.max(...sides)));
  }
  const button = $("#generate");
  button.disabled = true;
  try {
    const res = await fetch(`/puzzles/random?${params}`);
    if (!res.ok) throw await apiError(res);
    const sample = await res.json();
    if (sample.puzzle === "sudoku") {
      $("#sudoku-text").value = sample.grid.flat().join("");
      syncSudokuEditor();
      const givens = sample.grid.flat().filter((v) => v > 0).length;
      $("#sample-note").textContent = `${givens} givens`;
    } else if (sample.puzzle === "maze") {
      $("#maze-text").value = sample.grid.join("\n");
      $("#sample-note").textContent = `${sample.grid.length}×${sample.grid[0].length} maze`;
    } else {
      $("#arc-text").value = JSON.stringify(sample.task);
      $("#arc-task-id").value = "";
      $("#sample-note").textContent = `ARC-AGI-1 evaluation task ${sample.task_id}`;
    }
    resetRun();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

function clearInput() {
  if (state.kind === "sudoku") { $("#sudoku-text").value = ""; syncSudokuEditor(); }
  if (state.kind === "maze") $("#maze-text").value = "";
  if (state.kind === "arc") { $("#arc-text").value = ""; $("#arc-task-id").value = ""; }
  $("#sample-note").textContent = "";
  clearError();
  resetRun();
}

let inputTimer = null;
function inputChanged() {
  clearTimeout(inputTimer);
  inputTimer = setTimeout(() => { if (!state.run || !state.run.controller) resetRun(); }, 150);
}

// ------------------------------------------------------------------ solve
function buildRequest() {
  const body = { puzzle: state.kind, halt: $("#halt").value, stream: true };
  const model = $("#model").value;
  if (model) body.model = model;
  const maxSteps = $("#max-steps").value.trim();
  if (maxSteps) body.max_steps = Number(maxSteps);
  const views = Number($("#views").value);
  if (state.kind !== "arc" && views > 1) body.views = views;
  if (state.kind === "sudoku") {
    body.grid = $("#sudoku-text").value.replace(/\s+/g, "");
    return { body, input: sudokuGrid(sudokuValues()) };
  }
  if (state.kind === "maze" || state.kind === "arc") {
    body.grid = mazeRows($("#maze-text").value);
    return { body, input: body.grid };
  }
  const arc = arcInput();
  if (arc.problem) throw { status: 0, error: "invalid_json", message: arc.problem, field: "task" };
  body.task = arc.task;
  if (arc.taskId) body.task_id = arc.taskId;
  return { body, input: arc.task };
}

function parseEvent(chunk) {
  let event = "message";
  const data = [];
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
}

async function solve() {
  if (state.run && state.run.controller) {
    state.run.controller.abort();
    return;
  }
  clearError();
  stopPlay();
  let request;
  try {
    request = buildRequest();
  } catch (err) {
    showError(err);
    return;
  }
  const controller = new AbortController();
  const model = selectedModel();
  state.run = {
    kind: state.kind, input: request.input, steps: [], result: null, error: null, controller,
    maxSteps: request.body.max_steps || (model ? model.max_steps : 0),
    views: request.body.views || 1,
    threshold: modelThreshold(model, request.body.views || 1),
  };
  state.view = 0;
  state.follow = true;
  setRunning(true);
  render();
  try {
    const res = await fetch("/solve", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(request.body),
      signal: controller.signal,
    });
    if (!res.ok) throw await apiError(res);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (chunk.trim()) handleEvent(parseEvent(chunk));
      }
    }
    if (!state.run.result && !state.run.error) throw { status: 0, error: "stream_ended", message: "the stream ended before a result" };
  } catch (err) {
    if (err && err.name === "AbortError") state.run.error = { error: "cancelled", message: "stopped" };
    else state.run.error = err && err.message ? err : { error: "network", message: String(err) };
    showError(state.run.error);
  } finally {
    state.run.controller = null;
    setRunning(false);
    render();
  }
}

function handleEvent({ event, data }) {
  const run = state.run;
  if (event === "step") {
    run.steps.push(data);
    if (state.follow) state.view = run.steps.length;
  } else if (event === "result") {
    run.result = data;
    if (typeof data.halt_threshold === "number") run.threshold = data.halt_threshold; // the model that answered
    if (state.follow) state.view = run.steps.length;
  } else if (event === "error") {
    run.error = data;
    if (data.partial) run.result = data.partial;
    showError(data);
  }
  render();
}

function setRunning(running) {
  const button = $("#solve");
  button.textContent = running ? "Stop" : "Solve";
  button.classList.toggle("running", running);
  $("#generate").disabled = running;
  const status = $("#run-status");
  if (running) {
    status.dataset.state = "running";
  } else if (state.run && state.run.result && !state.run.error) {
    status.dataset.state = "done";
  } else if (state.run && state.run.error) {
    status.dataset.state = "error";
  } else {
    status.dataset.state = "idle";
  }
}

function resetRun() {
  stopPlay();
  state.run = null;
  state.view = 0;
  state.follow = true;
  setRunning(false);
  render();
}

// ------------------------------------------------------------------ rendering
function render() {
  renderSummary();
  renderBoard();
  renderScrubber();
  renderChart();
  renderSteps();
}

function renderSummary() {
  const run = state.run;
  const result = run && run.result;
  const status = $("#run-status");
  if (!run) status.textContent = "Nothing solved yet. Enter or generate a puzzle, then press Solve.";
  else if (run.controller) status.textContent = `Solving… ${run.steps.length} step${run.steps.length === 1 ? "" : "s"} so far`;
  else if (result && !run.error) {
    const how = {
      verified: "the answer passed the puzzle's rule check",
      q_head: "the halting head fired",
      max_steps: "the step limit was reached",
      deadline: "the deadline passed",
    };
    status.textContent = `Finished after ${result.steps_used} step${result.steps_used === 1 ? "" : "s"}: ${how[result.halted_by] || result.halted_by}.`;
    const views = result.views_tried || run.views;
    if (result.votes) status.textContent += ` ${result.votes} of ${views} orientations gave this answer.`;
    if (result.views_tried > run.views) {
      status.textContent += ` The first answer failed the rule check, so ${result.views_tried} orientations were tried (${result.steps_total} steps in all).`;
    }
  }
  else if (run.error) status.textContent = `Stopped: ${run.error.message || run.error.error}`;

  const verified = $("#verified");
  const v = result ? result.verified : undefined;
  verified.dataset.verified = v === undefined ? "" : String(v);
  verified.textContent = v === true ? "✓ verified" : v === false ? "✗ rule check failed" : v === null ? "no rule check" : "not checked";
  verified.title = v === null ? "This puzzle kind has no rule check (ARC answers are graded against hidden outputs)" : "Rule check of the final answer";

  const reason = $("#halt-reason");
  reason.dataset.reason = result ? result.halted_by : "";
  reason.textContent = result ? result.halted_by : "–";

  const last = run && run.steps.length ? run.steps[run.steps.length - 1] : null;
  $("#steps-used").textContent = result ? String(result.steps_used) : run ? String(run.steps.length) : "–";
  const p = result ? result.halt_probability : last ? last.halt_probability : null;
  $("#halt-prob").textContent = p === null ? "–" : p.toFixed(3);
  $("#time-total").textContent = result ? fmtMs(result.timing.total_ms) : "–";
  $("#time-compute").textContent = result ? fmtMs(result.timing.compute_ms) : "–";
  $("#time-queue").textContent = result ? fmtMs(result.timing.queue_ms) : "–";
  $("#model-used").textContent = result ? result.model : "–";
  $("#result-json").textContent = result ? JSON.stringify(result, null, 1) : "";
}

// The grid to draw for the current view and the cells that changed since the view before it.
function viewGrid() {
  const run = state.run;
  const kind = run ? run.kind : state.kind;
  const input = run ? run.input : currentInput();
  if (!run || state.view === 0 || !run.steps.length) return { kind, input, grid: kind === "arc" ? null : input, changed: null };
  const step = run.steps[state.view - 1];
  const before = state.view > 1 ? run.steps[state.view - 2].solution : kind === "arc" ? null : input;
  // With several orientations the steps are the unturned puzzle's; the last frame shows the voted answer.
  const grid = isFinalView() && run.result.votes ? run.result.solution : step.solution;
  return { kind, input, grid, changed: diffCells(before, grid, step.changed_cells) };
}

function diffCells(before, after, fallback) {
  const changed = new Set();
  if (!Array.isArray(before) || !Array.isArray(after) || before.length !== after.length) {
    for (const [r, c] of fallback || []) changed.add(`${r},${c}`);
    return changed;
  }
  after.forEach((row, r) => {
    for (let c = 0; c < row.length; c++) if (!before[r] || before[r][c] !== row[c]) changed.add(`${r},${c}`);
  });
  return changed;
}

function renderBoard() {
  const { kind, input, grid, changed } = viewGrid();
  const board = $("#board");
  board.dataset.kind = kind;
  $(".stage").dataset.kind = kind;
  const run = state.run;
  const caption = $("#board-caption");
  if (!run || state.view === 0) caption.textContent = kind === "arc" ? "Test input" : "Input";
  else {
    const step = run.steps[state.view - 1];
    caption.textContent = `Step ${step.step} · ${changed ? changed.size : 0} cell${changed && changed.size === 1 ? "" : "s"} changed`;
  }
  $("#arc-train").hidden = kind !== "arc";
  $("#arc-test").hidden = kind !== "arc";
  board.style.aspectRatio = "";
  board.classList.remove("big");
  if (kind === "sudoku") drawSudoku(board, grid, input, changed, isFinalView());
  else if (kind === "maze") drawMaze(board, grid, input, changed);
  else drawArc(board, input, grid, changed);
}

function isFinalView() {
  const run = state.run;
  return Boolean(run && run.result && state.view === run.steps.length && run.steps.length > 0);
}

function sudokuConflicts(grid) {
  const bad = new Set();
  const groups = [];
  for (let i = 0; i < 9; i++) {
    groups.push(Array.from({ length: 9 }, (_, j) => [i, j]));
    groups.push(Array.from({ length: 9 }, (_, j) => [j, i]));
    groups.push(Array.from({ length: 9 }, (_, j) => [3 * Math.floor(i / 3) + Math.floor(j / 3), 3 * (i % 3) + (j % 3)]));
  }
  for (const cells of groups) {
    const seen = new Map();
    for (const [r, c] of cells) {
      const v = grid[r][c];
      if (!v) continue;
      if (seen.has(v)) { bad.add(`${r},${c}`); bad.add(seen.get(v)); } else seen.set(v, `${r},${c}`);
    }
  }
  return bad;
}

function drawSudoku(board, grid, input, changed, final) {
  const rows = Array.isArray(grid) && grid.length === 9 ? grid : sudokuGrid(Array(81).fill(0));
  const conflicts = final ? sudokuConflicts(rows) : new Set();
  board.style.setProperty("--n", 9);
  board.replaceChildren();
  for (let r = 0; r < 9; r++) {
    for (let c = 0; c < 9; c++) {
      const v = rows[r][c];
      const given = input && input[r] && input[r][c] > 0;
      const key = `${r},${c}`;
      const classes = ["cell", given ? "given" : v ? "filled" : "blank"];
      if (given && v !== input[r][c]) classes.push("overwritten");
      if (changed && changed.has(key)) classes.push("changed");
      if (conflicts.has(key)) classes.push("conflict");
      if (c % 3 === 2 && c < 8) classes.push("edge-r");
      if (r % 3 === 2 && r < 8) classes.push("edge-b");
      board.append(el("div", {
        class: classes.join(" "), "data-r": r, "data-c": c, "data-v": v, text: v ? String(v) : "",
        "data-given": given && v !== input[r][c] ? input[r][c] : null,
        title: given && v !== input[r][c] ? `given ${input[r][c]}, model wrote ${v || "blank"}` : null,
      }));
    }
  }
}

const MAZE_CLASS = { "#": "wall", " ": "open", S: "start", G: "goal", o: "path" };

// Mazes of any size and shape: one cell per character, the board as wide as the longest row and as tall as the
// rows; past BIG_MAZE a side the gaps go and the board grows (and scrolls in its frame on a narrow screen).
const BIG_MAZE = 40;

function drawMaze(board, rows, input, changed) {
  rows = Array.isArray(rows) ? rows : [];
  const n = Math.max(...rows.map((r) => r.length), 1);
  board.style.setProperty("--n", n);
  board.style.aspectRatio = `${n} / ${Math.max(rows.length, 1)}`;
  board.classList.toggle("big", Math.max(n, rows.length) > BIG_MAZE);
  board.replaceChildren();
  if (!rows.length) {
    board.append(el("div", { class: "empty", text: "Paste a maze or press Generate." }));
    return;
  }
  rows.forEach((row, r) => {
    for (let c = 0; c < n; c++) {
      const ch = row[c] === undefined ? " " : row[c];
      // S and G stay marked where the question had them, even if a (badly trained) model wrote over them.
      const asked = Array.isArray(input) && input[r] ? input[r][c] : undefined;
      const classes = ["cell", MAZE_CLASS[ch] || "unknown"];
      if (asked === "S" && ch !== "S") classes.push("at-start");
      if (asked === "G" && ch !== "G") classes.push("at-goal");
      if (changed && changed.has(`${r},${c}`)) classes.push("changed");
      const label = ch === "S" || ch === "G" || ch === "?" ? ch : asked === "S" || asked === "G" ? asked : "";
      board.append(el("div", { class: classes.join(" "), "data-r": r, "data-c": c, "data-v": ch, text: label }));
    }
  });
}

function arcGrid(grid, { changed = null, label = "", small = false } = {}) {
  const rows = Array.isArray(grid) ? grid : [];
  const h = rows.length;
  const w = Math.max(0, ...rows.map((r) => (Array.isArray(r) ? r.length : 0)));
  const node = el("div", { class: `arc-grid${small ? " small" : ""}`, style: `--w:${w || 1};--h:${h || 1}` });
  if (!h || !w) node.append(el("div", { class: "empty", text: "empty" }));
  rows.forEach((row, r) => {
    for (let c = 0; c < w; c++) {
      const v = Array.isArray(row) ? row[c] : undefined;
      const classes = ["cell"];
      if (changed && changed.has(`${r},${c}`)) classes.push("changed");
      node.append(el("div", {
        class: classes.join(" "), "data-r": r, "data-c": c, "data-v": v === undefined ? "" : v,
        style: `background:${ARC_COLORS[v] || "#fff"}`,
      }));
    }
  });
  return label ? el("figure", { class: "arc-fig" }, [el("figcaption", { text: label }), node]) : node;
}

function drawArc(board, task, grid, changed) {
  const train = $("#arc-train");
  const test = $("#arc-test");
  const valid = task && Array.isArray(task.train) && Array.isArray(task.test);
  train.replaceChildren();
  test.replaceChildren();
  board.replaceChildren();
  if (!valid) {
    board.style.removeProperty("--w");
    board.append(el("div", { class: "empty", text: "Paste an ARC task or press Generate." }));
    return;
  }
  train.append(el("h3", { text: `Demonstrations (${task.train.length})` }));
  const pairs = el("div", { class: "arc-pairs" });
  task.train.forEach((pair, i) => {
    pairs.append(el("div", { class: "arc-pair" }, [
      arcGrid(pair.input, { small: true, label: `${i + 1} in` }),
      el("span", { class: "arrow", text: "→" }),
      arcGrid(pair.output, { small: true, label: "out" }),
    ]));
  });
  train.append(pairs);
  const shown = grid || (task.test[0] && task.test[0].input);
  const inner = arcGrid(shown, { changed });
  board.append(inner);
  const run = state.run;
  const result = run && run.result;
  if (grid) test.append(arcGrid(task.test[0].input, { label: "Test input", small: true }));
  if (result && Array.isArray(result.solution)) {
    result.solution.forEach((answer, i) => {
      const suffix = result.solution.length > 1 ? ` (test ${i + 1})` : "";
      test.append(el("div", { class: "attempts" }, [
        arcGrid(answer.attempt_1, { label: `Attempt 1${suffix}`, small: true }),
        arcGrid(answer.attempt_2, { label: `Attempt 2${suffix}`, small: true }),
      ]));
    });
  }
}

function renderScrubber() {
  const run = state.run;
  const slider = $("#step-slider");
  const n = run ? run.steps.length : 0;
  slider.max = String(n);
  slider.value = String(state.view);
  slider.disabled = n === 0;
  slider.style.setProperty("--fill", n ? `${(state.view / n) * 100}%` : "0%");
  $("#play").disabled = n === 0 || Boolean(run && run.controller);
  $("#step-label").textContent = state.view === 0 ? "input" : `step ${state.view} / ${n}`;
}

function renderChart() {
  const chart = $("#halt-chart");
  chart.replaceChildren();
  const W = Math.max(240, Math.round(chart.getBoundingClientRect().width) || 480);
  const H = 150, L = 34, R = 10, T = 10, B = 24;
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const run = state.run;
  const steps = run ? run.steps : [];
  const total = Math.max(steps.length, run ? run.maxSteps || 0 : 0, 4);
  const x = (i) => L + ((i - 0.5) / total) * (W - L - R);
  const y = (p) => T + (1 - p) * (H - T - B);
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), class: "gridline" }));
    const label = svg("text", { x: L - 6, y: y(p) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = p.toFixed(p === 0 || p === 1 ? 0 : 2);
    chart.append(label);
  }
  const threshold = haltThreshold();
  const rule = svg("line", { x1: L, x2: W - R, y1: y(threshold), y2: y(threshold), class: "threshold", "data-threshold": threshold });
  const ruleTitle = svg("title", {});
  ruleTitle.textContent = `adaptive halting stops at p(halt) >= ${threshold}`;
  rule.append(ruleTitle);
  chart.append(rule);
  $("#halt-threshold").textContent = String(threshold);
  const every = Math.ceil(total / 16);
  for (let i = 1; i <= total; i++) {
    if (i % every && i !== 1) continue;
    const t = svg("text", { x: x(i), y: H - 6, class: "axis", "text-anchor": "middle" });
    t.textContent = String(i);
    chart.append(t);
  }
  if (!steps.length) {
    const t = svg("text", { x: (W + L) / 2, y: (y(0.5) + y(0.25)) / 2 + 4, class: "axis empty-note", "text-anchor": "middle" });
    t.textContent = "the halting head's confidence appears here, one point per step";
    chart.append(t);
    return;
  }
  const barW = Math.max(2, Math.min(22, ((W - L - R) / total) * 0.55));
  steps.forEach((s, i) => {
    const k = i + 1;
    const bar = svg("rect", {
      x: x(k) - barW / 2, y: y(s.halt_probability), width: barW, height: Math.max(0, y(0) - y(s.halt_probability)),
      class: `bar${k === state.view ? " current" : ""}${s.halt_probability >= threshold ? " over" : ""}`,
      "data-chart-step": k,
    });
    const title = svg("title", {});
    title.textContent = `step ${k}: p(halt) = ${s.halt_probability.toFixed(3)}`;
    bar.append(title);
    bar.addEventListener("click", () => selectStep(k));
    chart.append(bar);
  });
  const points = steps.map((s, i) => `${x(i + 1)},${y(s.halt_probability)}`).join(" ");
  chart.append(svg("polyline", { points, class: "line" }));
  steps.forEach((s, i) => {
    chart.append(svg("circle", { cx: x(i + 1), cy: y(s.halt_probability), r: i + 1 === state.view ? 4.5 : 3, class: `dot${i + 1 === state.view ? " current" : ""}` }));
  });
}

function renderSteps() {
  const list = $("#steps");
  const run = state.run;
  list.replaceChildren();
  if (!run) return;
  const threshold = haltThreshold();
  let previous = run.kind === "arc" ? null : run.input;
  run.steps.forEach((s, i) => {
    const k = i + 1;
    const changed = diffCells(previous, s.solution, s.changed_cells).size;
    previous = s.solution;
    const item = el("li", {
      class: `step${k === state.view ? " current" : ""}${s.halt_probability >= threshold ? " over" : ""}`,
      "data-step": s.step, tabindex: "0", title: `step ${s.step}: p(halt) ${s.halt_probability.toFixed(3)}, ${changed} changed`,
    }, [
      el("span", { class: "num", text: String(s.step) }),
      el("span", { class: "meter" }, el("i", { style: `width:${(s.halt_probability * 100).toFixed(1)}%` })),
      el("span", { class: "delta", text: `Δ${changed}` }),
    ]);
    item.addEventListener("click", () => selectStep(k));
    item.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectStep(k); } });
    list.append(item);
  });
}

function selectStep(k) {
  stopPlay();
  const n = state.run ? state.run.steps.length : 0;
  state.view = Math.max(0, Math.min(n, k));
  state.follow = state.view === n;
  render();
}

function play() {
  if (state.timer) { stopPlay(); return; }
  const n = state.run ? state.run.steps.length : 0;
  if (!n) return;
  state.view = 0;
  state.follow = false;
  $("#play").classList.add("playing");
  render();
  state.timer = setInterval(() => {
    if (state.view >= n) { stopPlay(); state.follow = true; return; }
    state.view += 1;
    render();
  }, PLAY_MS);
}

function stopPlay() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  const button = $("#play");
  if (button) button.classList.remove("playing");
}

// ------------------------------------------------------------------ wiring
function init() {
  buildSudokuEditor();
  $$("#kind [data-kind]").forEach((b) => b.addEventListener("click", () => setKind(b.dataset.kind)));
  $("#generate").addEventListener("click", generate);
  $("#clear").addEventListener("click", clearInput);
  $("#solve").addEventListener("click", solve);
  $("#play").addEventListener("click", play);
  $("#model").addEventListener("change", describeModel);
  $("#sudoku-text").addEventListener("input", () => { syncSudokuEditor(); inputChanged(); });
  $("#maze-text").addEventListener("input", inputChanged);
  $("#arc-text").addEventListener("input", inputChanged);
  $("#step-slider").addEventListener("input", (ev) => selectStep(Number(ev.target.value)));
  $("#api-key").addEventListener("change", loadModels);
  $("#api-key-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadModels(); });
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); solve(); }
  });
  const fromHash = location.hash.replace("#", "");
  setKind(KINDS.includes(fromHash) ? fromHash : "sudoku");
  loadModels().then(checkHealth);
  setInterval(checkHealth, 15000);
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(renderChart, 100); });
}

document.addEventListener("DOMContentLoaded", init);
