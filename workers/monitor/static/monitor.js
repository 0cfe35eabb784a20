// framefarm monitor: keeps the server-rendered page current by polling the JSON API
// once a second, and sends actions (with the token, asked for once per tab).
"use strict";

const TOKEN_KEY = "framefarm-monitor-token";
const POLL_MS = 1000;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function askToken(why) {
  const given = window.prompt(why + "\nThe monitor's token (--token or $FRAMEFARM_MONITOR_TOKEN):");
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  return given;
}

function say(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status" + (bad ? " bad" : "");
}

async function call(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const reply = await fetch(path, Object.assign({}, options, { headers }));
  const body = await reply.json().catch(() => ({ error: "not JSON (HTTP " + reply.status + ")" }));
  return { status: reply.status, body };
}

async function read(path) {
  const { status, body } = await call(path);
  if (status === 401 || status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (askToken(body.error)) return read(path);
  }
  if (status !== 200) throw new Error(body.error || "HTTP " + status);
  return body;
}

// -- showing values

function pad(n) { return String(n).padStart(2, "0"); }

const FORMATS = {
  fps: (v) => (v == null ? "–" : v >= 10 ? v.toFixed(0) : v.toFixed(2)),
  duration: (v) => {
    if (v == null) return "–";
    const s = Math.round(v);
    return s >= 3600 ? Math.floor(s / 3600) + "h " + pad(Math.floor(s / 60) % 60) + "m"
         : s >= 60 ? Math.floor(s / 60) + "m " + pad(s % 60) + "s" : (v < 10 ? v.toFixed(1) : s) + "s";
  },
  time: (v) => {
    if (v == null) return "–";
    const d = new Date(v * 1000);
    return d.toLocaleDateString() + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  },
  host: (v) => (v ? "@" + v : ""),   // after the submitter's name
  age: (v) => (v == null ? "–" : Math.round(v) + " s ago"),
  list: (v) => (v && v.length ? v.join(", ") : ""),
  kind: (v) => (v === "frames" ? "" : v),   // only the video task is marked
  gpu: (v) => (v == null ? "–" : Math.round(100 * v.utilisation) + "% · " + (v.memory_used / 2 ** 30).toFixed(1) +
               " / " + (v.memory_total / 2 ** 30).toFixed(0) + " GiB · " + v.temperature_c + " °C"),
};

// Each element with data-field shows that field of `item`; data-format says how.
function fill(root, item) {
  const fields = root.matches("[data-field]") ? [root] : [];
  fields.push(...root.querySelectorAll("[data-field]"));
  for (const el of fields) {
    const value = item[el.dataset.field];
    const format = el.dataset.format;
    if (format === "bar") {
      el.style.width = (100 * (value || 0)).toFixed(1) + "%";
    } else if (format === "state") {
      el.textContent = value;
      el.className = "state state-" + value;
    } else if (format === "cell") {
      el.className = "cell state-" + value;
      el.title = "frames " + item.first + "-" + item.last + ": " + value +
                 (item.worker ? " (" + item.worker + ")" : "") + (item.error ? "\n" + item.error : "");
    } else if (el.dataset.link) {
      el.textContent = value;
      el.href = el.dataset.link + encodeURIComponent(value);
    } else {
      el.textContent = format ? FORMATS[format](value) : (value == null ? "" : value);
    }
  }
}

// Make `container`'s keyed children match `items` (in order), cloning the template for new ones.
function sync(container, templateId, items, keyOf) {
  const template = document.getElementById(templateId);
  const existing = new Map([...container.children].map((el) => [el.dataset.key, el]));
  let previous = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let el = existing.get(key);
    existing.delete(key);
    if (!el) {
      el = template.content.firstElementChild.cloneNode(true);
      el.dataset.key = key;
      const button = el.querySelector("[data-worker]");
      if (button) button.dataset.worker = key;
    }
    fill(el, item);
    const want = previous ? previous.nextElementSibling : container.firstElementChild;
    if (want !== el) container.insertBefore(el, want);
    previous = el;
  }
  for (const el of existing.values()) el.remove();
}

// -- pages

async function refreshJobs() {
  const state = document.getElementById("state-filter").value;
  const jobs = await read("/api/jobs" + (state ? "?state=" + encodeURIComponent(state) : ""));
  document.getElementById("jobs-total").textContent = jobs.total;
  sync(document.querySelector("#jobs tbody"), "job-row", jobs.jobs, (job) => job.job_id);
  const workers = await read("/api/workers");
  sync(document.querySelector("#workers tbody"), "worker-row", workers.workers, (worker) => worker.name);
}

function jobId() { return document.getElementById("job").dataset.job; }

async function refreshJob() {
  const id = encodeURIComponent(jobId());
  const job = await read("/api/jobs/" + id);
  fill(document.getElementById("job-head"), job);
  const jobFile = document.getElementById("job-file");
  if (!jobFile.textContent) jobFile.textContent = job.job_file;
  await refreshThumbs(id);
  const tasks = (await read("/api/jobs/" + id + "/tasks")).tasks;
  sync(document.getElementById("strip"), "task-cell", tasks, (task) => task.task_id);
  sync(document.querySelector("#tasks tbody"), "task-row", tasks, (task) => task.task_id);
  if (shownLog) {
    const log = await read("/api/jobs/" + id + "/tasks/" + encodeURIComponent(shownLog) + "/log");
    document.getElementById("task-log").textContent = log.log || "(no log yet)";
  }
}

// The latest frames' thumbnails: fetched with the token (an <img src> could not send it) and shown as
// blob URLs; fetched again only when the list of frames (or a frame's time) changes.
async function refreshThumbs(id) {
  const list = (await read("/api/jobs/" + id + "/thumbnails")).thumbnails;
  const strip = document.getElementById("thumbs");
  const shown = list.map((t) => t.frame + "@" + t.time).join(",");
  if (strip.dataset.shown === shown) return;
  const figures = await Promise.all(list.map(async (t) => {
    const reply = await fetch(t.url, { headers: token() ? { Authorization: "Bearer " + token() } : {} });
    if (!reply.ok) return null;
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(await reply.blob());
    img.alt = "frame " + t.frame;
    const caption = document.createElement("figcaption");
    caption.textContent = t.frame;
    figure.append(img, caption);
    return figure;
  }));
  for (const old of strip.querySelectorAll("img")) URL.revokeObjectURL(old.src);
  strip.replaceChildren(...figures.filter((f) => f));
  strip.dataset.shown = shown;
}

let shownLog = null;   // the task whose log the job page shows

function showLog(row) {
  shownLog = row.dataset.key;
  document.getElementById("log-of").textContent = "of frames " + row.querySelector("[data-field=first]").textContent +
    "-" + row.querySelector("[data-field=last]").textContent;
  tick();
}

// -- actions

async function act(button) {
  const action = button.dataset.action;
  let path, body = {};
  if (action === "drain") {
    path = "/api/workers/" + button.dataset.worker.split("/").map(encodeURIComponent).join("/") + "/drain";
  } else {
    path = "/api/jobs/" + encodeURIComponent(jobId()) + "/" + action;
    if (action === "priority") {
      const given = window.prompt("New priority (-100 to 100, higher runs first):");
      if (given === null) return;
      body = { priority: Number(given) };
    }
    if (action === "cancel" && !window.confirm("Cancel job " + jobId() + "?")) return;
  }
  if (!token() && !askToken("'" + action + "' needs the monitor's token.")) return;
  let reply = await call(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(body) });
  if (reply.status === 401 || reply.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (!askToken(reply.body.error)) return;
    reply = await call(path, { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) });
  }
  if (reply.status === 200) say(action + ": done " + JSON.stringify(reply.body), false);
  else say(action + ": " + reply.body.error, true);
  await tick();
}

const refresh = document.body.dataset.page === "job" ? refreshJob : refreshJobs;
let polling = false;

async function tick() {
  if (polling) return;
  polling = true;
  try {
    await refresh();
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    say("cannot read the API: " + err.message, true);
  } finally {
    polling = false;
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button);
  const row = event.target.closest("#tasks tbody tr");
  if (row) showLog(row);
});
const filter = document.getElementById("state-filter");
if (filter) filter.addEventListener("change", tick);
tick();
setInterval(tick, POLL_MS);
