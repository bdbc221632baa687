// The page: the API key prompt, the batch named in the address, recent batches and uploads.
import { apiKey, postJson } from "./api.js";
import { BatchList } from "./batches.js";
import { byId, say } from "./dom.js";
import { JobView } from "./job.js";
import { describe } from "./reasons.js";
import { Uploader } from "./upload.js";

const keysRequired = document.body.dataset.keysRequired === "true";
const batches = new BatchList(askForKey);
const jobView = new JobView(askForKey, () => batches.refresh());
new Uploader(Number(document.body.dataset.maxUploadBytes), askForKey, openJob);

/** The batch this address names (``#job=<id>``), or null for the landing page. */
function jobInAddress() {
  return location.hash.match(/^#job=([\w-]+)$/)?.[1] ?? null;
}

/** Show what the address names. Back, forward, a pasted link and a clicked one all end here. */
function route() {
  const jobId = jobInAddress();
  batches.mark(jobId);
  byId("welcome-section").hidden = Boolean(jobId);
  document.title = jobId ? `Batch ${jobId.slice(0, 8)} · DepthFleet`
    : "DepthFleet: depth maps for your photos";
  if (!jobId) jobView.hide();
  else if (jobId !== jobView.jobId) jobView.follow(jobId);
}

/** A new history entry per batch, so Back returns to the one before. */
function openJob(jobId) {
  history.pushState(null, "", `#job=${jobId}`);
  route();
  batches.refresh();
}

/** Without a (valid) key: the prompt, and no data at all. */
function askForKey(error) {
  if (error) apiKey.clear();
  jobView.hide();
  batches.hide();
  for (const id of ["upload-section", "welcome-section"]) byId(id).hidden = true;
  byId("key-section").hidden = false;
  byId("key-form").hidden = false;
  byId("key-forget").hidden = true;
  say("key-problem", error ? `${describe(error)} (Server: ${error.message})` : "");
  say("key-status", "");
  byId("key-input").focus();
}

async function useKey(event) {
  event.preventDefault();
  const key = byId("key-input").value.trim();
  if (!key) return;
  apiKey.set(key);
  say("key-status", "Checking the key…");
  try {
    await postJson("/v1/uploads/check", { sha256: [] }); // a no-op that needs a valid key
    byId("key-input").value = "";
    unlock();
  } catch (err) {
    askForKey(err);
  }
}

function unlock() {
  byId("key-section").hidden = !keysRequired;
  byId("key-form").hidden = true;
  byId("key-forget").hidden = false;
  say("key-problem", "");
  say("key-status", "Using your API key. It is kept in this browser tab only.");
  byId("upload-section").hidden = false;
  batches.refresh();
  route();
}

function forgetKey() {
  apiKey.clear();
  history.pushState(null, "", location.pathname);
  askForKey();
}

byId("key-form").addEventListener("submit", useKey);
byId("key-forget").addEventListener("click", forgetKey);
byId("home-link").addEventListener("click", (event) => {
  event.preventDefault();
  if (jobInAddress()) history.pushState(null, "", location.pathname);
  route();
});
// Both: Chromium fires popstate for a hash typed into the address bar, older browsers only
// hashchange; route() ignores the second call for the batch already shown.
window.addEventListener("popstate", () => !byId("upload-section").hidden && route());
window.addEventListener("hashchange", () => !byId("upload-section").hidden && route());
if (keysRequired && !apiKey.get()) askForKey();
else unlock();
