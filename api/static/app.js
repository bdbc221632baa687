// The page: the API key prompt, picking or dropping files, and the batch being followed.
import { apiKey, postJson, uploadFiles } from "./api.js";
import { byId, say } from "./dom.js";
import { JobView } from "./job.js";
import { describe } from "./reasons.js";

const keysRequired = document.body.dataset.keysRequired === "true";
const maxUploadBytes = Number(document.body.dataset.maxUploadBytes);
const megabytes = (bytes) => `${(bytes / 1048576).toFixed(1)} MB`;
const jobView = new JobView(askForKey);

/** Without a (valid) key: the prompt, and no data at all. */
function askForKey(error) {
  if (error) apiKey.clear();
  jobView.hide();
  byId("upload-section").hidden = true;
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
  const followed = location.hash.match(/^#job=([\w-]+)$/);
  if (followed) jobView.follow(followed[1]);
}

function forgetKey() {
  apiKey.clear();
  history.replaceState(null, "", location.pathname);
  askForKey();
}

// Originals this browser can show beside their heatmaps; archive entries have none.
function localPhotos(files) {
  const photos = new Map();
  for (const file of files) {
    if (file.type.startsWith("image/") && !photos.has(file.name)) {
      photos.set(file.name, URL.createObjectURL(file));
    }
  }
  return photos;
}

function showUploadProgress(loaded, total) {
  byId("upload-progress").value = loaded / total;
  if (loaded === total) say("upload-status", "Sent. The server is checking and storing the files…");
}

async function submit(files) {
  if (!files.length) return;
  const bytes = files.reduce((sum, file) => sum + file.size, 0);
  say("upload-problem", "");
  if (bytes > maxUploadBytes) {
    say("upload-problem", `These files total ${megabytes(bytes)}; this server takes at most ` +
        `${megabytes(maxUploadBytes)} per upload. Send them in smaller groups.`);
    return;
  }
  setUploading(true);
  say("upload-status", `Uploading ${files.length} file(s), ${megabytes(bytes)}…`);
  try {
    const job = await uploadFiles(files, showUploadProgress);
    history.replaceState(null, "", `#job=${job.id}`);
    jobView.follow(job.id, localPhotos(files));
    say("upload-status", `Sent ${files.length} file(s) as a batch of ${job.total} item(s).`);
  } catch (err) {
    say("upload-status", "");
    if (err.status === 401) return askForKey(err);
    say("upload-problem", `Upload refused. ${describe(err)} (Server: ${err.message})`);
  } finally {
    setUploading(false);
  }
}

function setUploading(uploading) {
  byId("file-input").disabled = uploading;
  byId("drop-zone").setAttribute("aria-busy", String(uploading));
  byId("upload-progress").hidden = !uploading;
  byId("upload-progress").value = 0;
}

function wireUpload() {
  const input = byId("file-input");
  const zone = byId("drop-zone");
  input.addEventListener("change", () => {
    submit([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (!input.disabled) submit([...event.dataTransfer.files]);
  });
  // A file dropped beside the zone must not replace the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
}

byId("key-form").addEventListener("submit", useKey);
byId("key-forget").addEventListener("click", forgetKey);
wireUpload();
if (keysRequired && !apiKey.get()) askForKey();
else unlock();
