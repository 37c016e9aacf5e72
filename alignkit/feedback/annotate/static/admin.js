// alignkit annotate: the admin page. All server data is shown with textContent, never parsed as HTML.
"use strict";
const KEY = "alignkit-admin-token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(KEY);
let timer = null;

async function api(path, options = {}) {
  const headers = Object.assign({"Authorization": "Bearer " + token}, options.body ? {"Content-Type": "application/json"} : {});
  const response = await fetch(path, Object.assign({}, options, {headers}));
  if (response.status === 401 || response.status === 403) { logout("That is not the admin token."); throw new Error("unauthorised"); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function logout(message) {
  sessionStorage.removeItem(KEY); token = null;
  if (timer) clearInterval(timer);
  $("admin").hidden = true; $("login").hidden = false; $("logout").hidden = true;
  $("login-error").textContent = message || "";
}

function fmt(x, digits) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits); }

async function refresh() {
  const s = await (await api("/api/admin/stats")).json();
  const a = s.agreement;
  const method = {cohen_kappa: "Cohen's kappa", krippendorff_alpha: "Krippendorff's alpha"}[a.method] || "agreement";
  const lines = [
    s.votes + " votes on " + s.pairs_done + " of " + s.pairs + " pairs (" + s.labels_wanted + " labels wanted; " +
      s.overlap_pairs + " pairs go to several annotators); " + s.ties + " ties",
    a.items + " pairs labelled by 2+ annotators: " + method + " " + fmt(a.value, 3) +
      ", raw agreement " + (a.percent_agreement === null ? "n/a" : fmt(100 * a.percent_agreement, 1) + "%"),
  ];
  if (s.agreement_with_source_labels !== null) lines.push("agreement with the file's own labels: " + fmt(100 * s.agreement_with_source_labels, 1) + "%");
  const summary = $("summary");
  summary.replaceChildren(...lines.map((t) => { const p = document.createElement("p"); p.textContent = t; return p; }));
  const body = document.querySelector("#annotators tbody");
  body.replaceChildren(...s.annotators.map((row) => {
    const tr = document.createElement("tr");
    for (const value of [row.id, row.name, row.votes]) { const td = document.createElement("td"); td.textContent = String(value); tr.appendChild(td); }
    return tr;
  }));
}

async function start() {
  await refresh();
  $("login").hidden = true; $("admin").hidden = false; $("logout").hidden = false;
  timer = setInterval(() => refresh().catch(() => {}), 3000);
}

async function download(aggregate) {
  const ties = $("export-ties").checked ? "1" : "0";
  const response = await api("/api/admin/export?aggregate=" + aggregate + "&ties=" + ties);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url; link.download = "annotations-" + aggregate + ".jsonl";
  document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value.trim(); $("token").value = "";
  sessionStorage.setItem(KEY, token);
  try { await start(); } catch (e) { if (token) $("login-error").textContent = "Could not open: " + e.message; }
});
$("new-annotator").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const created = await (await api("/api/admin/annotators", {method: "POST", body: JSON.stringify({name: $("new-name").value})})).json();
    $("new-token").textContent = "Token for " + created.name + " (shown once): " + created.token;
    $("new-name").value = "";
    await refresh();
  } catch (e) { $("new-token").textContent = "Not created: " + e.message; }
});
$("export-votes").addEventListener("click", () => download("votes"));
$("export-majority").addEventListener("click", () => download("majority"));
$("logout").addEventListener("click", () => logout());
if (token) start().catch(() => {});
