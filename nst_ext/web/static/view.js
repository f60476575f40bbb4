// A run's live view (nst_ext.web.preview): the picture, where the run is, the loss curves.
// watchRun(root, url, options) follows the Server-Sent Events at `url`; `root` holds elements
// with the classes picture, where, timing, chart (a canvas) and message.
"use strict";

const FINAL = ["done", "stopped", "failed"];
const SERIES = [["content", 1, "#1f77b4"], ["style", 2, "#d62728"], ["total", 3, "#222"]];

function describe(state) {
  if (state.status === "starting") return "starting…";
  const where = `stage ${state.stage} of ${state.stages}, step ${state.step} of ${state.steps}, ` +
    `${state.width}×${state.height} px`;
  const label = state.label ? `${state.label}: ` : "";
  return label + ({ done: "finished", stopped: "stopped", failed: "failed" }[state.status] || where);
}

function drawLosses(canvas, points) {
  const context = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height, pad = 28;
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#bbb";
  context.strokeRect(pad, 4, width - pad - 4, height - pad);
  const usable = points.filter((p) => p[3] > 0);
  if (usable.length < 2) return;
  const logs = usable.flatMap((p) => [p[1], p[2], p[3]].filter((v) => v > 0).map(Math.log10));
  const low = Math.min(...logs), high = Math.max(...logs) + 1e-9;
  const first = usable[0][0], last = usable[usable.length - 1][0] + 1e-9;
  const x = (step) => pad + (width - pad - 4) * (step - first) / (last - first);
  const y = (value) => 4 + (height - pad) * (1 - (Math.log10(value) - low) / (high - low));
  context.font = "11px sans-serif";
  context.fillStyle = "#555";
  context.fillText(Number(10 ** high).toPrecision(2), 0, 12);
  context.fillText(Number(10 ** low).toPrecision(2), 0, height - pad);
  context.fillText(`step ${usable[usable.length - 1][0]}`, width - 60, height - 8);
  SERIES.forEach(([name, column, colour], index) => {
    context.strokeStyle = colour;
    context.beginPath();
    usable.filter((p) => p[column] > 0).forEach((p, i) => {
      (i ? context.lineTo : context.moveTo).call(context, x(p[0]), y(p[column]));
    });
    context.stroke();
    context.fillStyle = colour;
    context.fillText(name, pad + 8 + index * 60, height - 8);
  });
}

function watchRun(root, url, options = {}) {
  const part = (name) => root.querySelector("." + name);
  let points = [];
  let label = null;
  const source = new EventSource(url);
  source.onmessage = (message) => {
    const state = JSON.parse(message.data);
    if (state.label !== label) {  // another run (the app's next job): nothing of the last one stays
      label = state.label;
      part("picture").removeAttribute("src");
      delete part("picture").dataset.frame;
    }
    if (state.picture) {
      part("picture").src = state.picture;
      part("picture").dataset.frame = state.frame;
    }
    if (state.losses_from === 0) points = [];
    points = points.concat(state.losses);
    part("where").textContent = describe(state);
    part("timing").textContent = state.seconds_per_step
      ? `${state.seconds_per_step.toFixed(2)} s per step, ${state.steps_done} steps done` : "";
    part("message").textContent = state.message || "";
    drawLosses(part("chart"), points);
    root.dataset.status = state.status;
    if (options.onState) options.onState(state);
    if (options.endsWithRun && FINAL.includes(state.status)) source.close();
  };
  source.onerror = () => {
    if (options.endsWithRun && FINAL.includes(root.dataset.status)) return;
    part("message").textContent = source.readyState === EventSource.CLOSED
      ? "the run's server has gone" : "reconnecting…";
  };
  return source;
}
