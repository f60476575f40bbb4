// The app's page (nst-ext serve): the form, the queue's table, the running job's live view.
"use strict";
const form = document.getElementById("new-job");
const formError = document.getElementById("form-error");

function option(select, name) {
  const item = document.createElement("option");
  item.value = item.textContent = name;
  select.appendChild(item);
}

function stateText(job) {
  if (job.state === "waiting") return `waiting (${job.place === 1 ? "next" : "place " + job.place} in the queue)`;
  return job.message ? `${job.state}: ${job.message}` : job.state;
}

function cell(row, content) {
  const td = row.insertCell();
  if (typeof content === "string") td.textContent = content; else if (content) td.appendChild(content);
  return td;
}

let shownJobs = "";

async function refreshJobs() {
  const response = await fetch("/jobs");
  const { jobs } = await response.json();
  if (JSON.stringify(jobs) === shownJobs) return;  // unchanged: keep the rows (and their thumbnails)
  shownJobs = JSON.stringify(jobs);
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of jobs.slice().reverse()) {
    const row = body.insertRow();
    row.id = `job-${job.number}`;
    row.dataset.state = job.state;
    cell(row, String(job.number));
    cell(row, stateText(job)).className = "state";
    cell(row, Object.entries(job.settings).map(([k, v]) => `${k}: ${v}`).join("; "));
    let link = null;
    if (job.result) {
      link = document.createElement("a");
      link.href = job.result;
      link.download = job.result.split("/").pop();
      link.className = "download";
      const thumb = document.createElement("img");
      thumb.src = job.result;
      thumb.alt = "result";
      link.appendChild(thumb);
    }
    cell(row, link);
    let stop = null;
    if (job.state === "waiting" || job.state === "running") {
      stop = document.createElement("button");
      stop.textContent = job.state === "running" ? "Stop" : "Remove";
      stop.className = "stop";
      stop.onclick = () => fetch(`/jobs/${job.number}/stop`, { method: "POST" }).then(refreshJobs);
    }
    cell(row, stop);
  }
}

form.onsubmit = async (submitted) => {
  submitted.preventDefault();
  formError.textContent = "";
  const response = await fetch("/jobs", { method: "POST", body: new FormData(form) });
  if (!response.ok) {
    let text = `the server answered ${response.status}`;
    try { text = (await response.json()).error || text; } catch (ignored) { /* not JSON */ }
    formError.textContent = text;
  }
  refreshJobs();
};

fetch("/jobs").then((r) => r.json()).then(({ samples, form: fields }) => {
  samples.forEach((name) => {
    option(document.getElementById("content-sample"), name);
    option(document.getElementById("style-samples"), name);
  });
  // The form's defaults and bounds are the server's (nst_ext/web/uploads.py, form_fields).
  Object.entries(fields).forEach(([name, limits]) => {
    const field = form.elements[name];
    Object.entries(limits).forEach(([key, value]) => field.setAttribute(key, String(value)));
  });
});
watchRun(document.getElementById("run"), "/events", { endsWithRun: false, onState: () => refreshJobs() });
refreshJobs();
setInterval(refreshJobs, 1000);
