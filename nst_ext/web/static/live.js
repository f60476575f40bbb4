// The live view's page (--web): the run as it goes, and its Stop button.
"use strict";
const run = document.getElementById("run");
const stop = document.getElementById("stop");
watchRun(run, "/events", {
  endsWithRun: true,
  onState: (state) => { if (FINAL.includes(state.status)) stop.disabled = true; },
});
stop.onclick = async () => {
  stop.disabled = true;
  document.getElementById("message").textContent = "stopping: the best picture so far is being saved…";
  await fetch("/stop", { method: "POST" });
};
