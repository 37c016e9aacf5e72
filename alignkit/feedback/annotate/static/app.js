// alignkit annotate: the annotator page. All server data is shown with textContent, never parsed as HTML.
"use strict";
const KEY = "alignkit-annotator-token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(KEY);
let task = null;
let choice = null;
let busy = false;

async function api(path, options = {}) {
  const headers = Object.assign({"Authorization": "Bearer " + token}, options.body ? {"Content-Type": "application/json"} : {});
  const response = await fetch(path, Object.assign({}, options, {headers}));
  if (response.status === 401) { logout("Your token was not accepted; log in again."); throw new Error("unauthorised"); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response.json();
}

function asText(value) {
  if (Array.isArray(value)) return value.map((m) => (m.role ? m.role + ": " : "") + (m.content ?? "")).join("\n\n");
  return value == null ? "" : String(value);
}

function showProgress(p) {
  if (p) $("progress").textContent = p.done + " done · " + p.remaining + " left";
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  token = null;
  $("work").hidden = true; $("login").hidden = false; $("logout").hidden = true;
  $("who").textContent = ""; $("progress").textContent = "";
  $("login-error").textContent = message || "";
}

async function start() {
  const me = await api("/api/me");
  $("who").textContent = "· " + me.name;
  showProgress(me);
  $("guidelines").textContent = (await api("/api/guidelines")).text;
  $("login").hidden = true; $("work").hidden = false; $("logout").hidden = false;
  await loadTask();
}

async function loadTask() {
  const next = await api("/api/task");
  showProgress(next.progress);
  choice = null;
  $("comment").value = "";
  document.querySelector('input[name="strength"][value="2"]').checked = true;
  render();
  if (next.done) { task = null; $("task").hidden = true; $("done").hidden = false; return; }
  task = next;
  $("task").hidden = false; $("done").hidden = true;
  $("prompt").textContent = asText(task.prompt);
  $("left").textContent = asText(task.left);
  $("right").textContent = asText(task.right);
  $("task").dataset.taskId = String(task.task_id);
}

function render() {
  for (const side of ["A", "B"]) {
    $("card-" + side).classList.toggle("selected", choice === side);
    $("card-" + side).classList.toggle("tie", choice === "tie");
  }
  for (const c of ["A", "B", "tie"]) $("choose-" + c).classList.toggle("selected", choice === c);
  $("submit").disabled = !choice || busy;
  $("status").textContent = choice ? "choice: " + choice : "";
}

function choose(c) { if (task) { choice = c; render(); } }

function setStrength(level) {
  const input = document.querySelector('input[name="strength"][value="' + level + '"]');
  if (input) input.checked = true;
}

async function submit() {
  if (!task || !choice || busy) return;
  busy = true; render();
  const strength = Number(document.querySelector('input[name="strength"]:checked').value);
  try {
    await api("/api/vote", {method: "POST", body: JSON.stringify({task_id: task.task_id, choice, strength, comment: $("comment").value})});
    await loadTask();
  } catch (e) {
    $("status").textContent = "Not saved: " + e.message + " (press Enter to retry)";
  } finally {
    busy = false; render();
  }
}

document.addEventListener("keydown", (event) => {
  if (!token || $("work").hidden) return;
  const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement && event.target.type !== "radio";
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    a: () => choose("A"), ArrowLeft: () => choose("A"),
    b: () => choose("B"), ArrowRight: () => choose("B"),
    t: () => choose("tie"), ArrowDown: () => choose("tie"),
    "1": () => setStrength(1), "2": () => setStrength(2), "3": () => setStrength(3),
    c: () => $("comment").focus(),
    Enter: () => submit(),
  };
  const action = actions[event.key] || actions[event.key.toLowerCase()];
  if (action) { event.preventDefault(); action(); }
});

for (const c of ["A", "B", "tie"]) $("choose-" + c).addEventListener("click", () => choose(c));
$("submit").addEventListener("click", submit);
$("logout").addEventListener("click", () => logout());
$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(KEY, token);
  try { await start(); } catch (e) { if (token) $("login-error").textContent = "Could not start: " + e.message; }
});

if (token) start().catch(() => {});
