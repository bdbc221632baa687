// Sending files as a batch: the size check, upload progress, drops anywhere on the page (queued
// while another upload is under way, never ignored), and a full queue's Retry-After waited out.
import { uploadFiles } from "./api.js";
import { byId, say } from "./dom.js";
import { describe } from "./reasons.js";

const BUSY_STATUSES = new Set([429, 503]);
const DEFAULT_RETRY_S = 30;
const MAX_RETRY_S = 600;
const megabytes = (bytes) => `${(bytes / 1048576).toFixed(1)} MB`;
const fileCount = (files) => `${files.length} file${files.length === 1 ? "" : "s"}`;

export class Uploader {
  /** ``onCreated(jobId)`` shows the new batch; ``onUnauthorized(err)`` asks for a key. */
  constructor(maxBytes, onUnauthorized, onCreated) {
    this.maxBytes = maxBytes;
    this.onUnauthorized = onUnauthorized;
    this.onCreated = onCreated;
    this.queue = [];
    this.busy = false;
    this.wireInput();
    this.wireDrops();
  }

  /** Send ``files`` now, or after the upload under way. */
  add(files) {
    if (!files.length) return;
    if (this.busy) this.queue.push(files);
    else this.send(files);
    this.showQueue();
  }

  showQueue() {
    const waiting = this.queue.map(fileCount).join(", then ");
    say("upload-queue", waiting ? `Waiting to send as the next batch: ${waiting}.` : "");
  }

  async send(files) {
    const bytes = files.reduce((sum, file) => sum + file.size, 0);
    say("upload-problem", "");
    if (bytes > this.maxBytes) {
      say("upload-problem", `These files total ${megabytes(bytes)}; this server takes at most ` +
          `${megabytes(this.maxBytes)} per upload. Send them in smaller groups.`);
      return this.next();
    }
    this.setBusy(true);
    say("upload-status", `Uploading ${fileCount(files)}, ${megabytes(bytes)}…`);
    try {
      const job = await this.sendUntilAccepted(files);
      if (job) {
        say("upload-status", job.ingesting
          ? `Sent ${fileCount(files)}; the server is unpacking the archive into a batch.`
          : `Sent ${fileCount(files)} as a batch of ${job.total} item(s).`);
        this.onCreated(job.id);
      } else {
        say("upload-status", "Not sent: you stopped retrying.");
      }
    } catch (err) {
      say("upload-status", "");
      if (err.status === 401) {
        this.queue = [];
        return this.onUnauthorized(err);
      }
      say("upload-problem", `Upload refused. ${describe(err)} (Server: ${err.message})`);
    } finally {
      this.setBusy(false);
    }
    this.next();
  }

  next() {
    const files = this.queue.shift();
    this.showQueue();
    if (files) this.send(files);
  }

  /** The job, or null if the user stopped waiting for a busy server. */
  async sendUntilAccepted(files) {
    for (;;) {
      try {
        return await uploadFiles(files, (loaded, total) => this.showProgress(loaded, total));
      } catch (err) {
        if (!BUSY_STATUSES.has(err.status)) throw err;
        if (!(await this.waitOut(err))) return null;
        say("upload-status", `Sending ${fileCount(files)} again…`);
      }
    }
  }

  /** Count down the server's Retry-After, visibly; false if the user stops it. */
  waitOut(err) {
    const seconds = Math.min(MAX_RETRY_S, err.retryAfterSeconds || DEFAULT_RETRY_S);
    const until = Date.now() + seconds * 1000;
    const stop = byId("upload-stop");
    return new Promise((resolve) => {
      const done = (go) => {
        clearInterval(timer);
        stop.hidden = true;
        stop.removeEventListener("click", stopped);
        say("upload-problem", "");
        resolve(go);
      };
      const stopped = () => done(false);
      const tick = () => {
        const left = Math.ceil((until - Date.now()) / 1000);
        if (left <= 0) return done(true);
        say("upload-problem", `${describe(err)} (Server: ${err.message}) Sending again in ` +
            `${left} s, as the server asked.`);
      };
      const timer = setInterval(tick, 250);
      stop.hidden = false;
      stop.addEventListener("click", stopped);
      say("upload-status", "Waiting for room in the server's queue…");
      tick();
    });
  }

  showProgress(loaded, total) {
    byId("upload-progress").value = loaded / total;
    if (loaded === total) say("upload-status", "Sent. The server is checking and storing the files…");
  }

  setBusy(busy) {
    this.busy = busy;
    byId("drop-zone").setAttribute("aria-busy", String(busy));
    byId("upload-progress").hidden = !busy;
    byId("upload-progress").value = 0;
  }

  wireInput() {
    const input = byId("file-input");
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
  }

  // The whole window takes drops; the overlay says so while files are dragged over it.
  wireDrops() {
    const overlay = byId("drop-overlay");
    const open = () => !byId("upload-section").hidden; // no key, no upload
    const carriesFiles = (event) => event.dataTransfer?.types?.includes("Files");
    let depth = 0; // dragenter/dragleave pairs over nested elements
    window.addEventListener("dragenter", (event) => {
      if (!carriesFiles(event)) return;
      depth += 1;
      overlay.hidden = !open();
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) overlay.hidden = true;
    });
    window.addEventListener("dragover", (event) => {
      event.preventDefault(); // a file dropped anywhere must not replace the page
      if (event.dataTransfer) event.dataTransfer.dropEffect = open() ? "copy" : "none";
    });
    window.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      overlay.hidden = true;
      if (open()) this.add([...(event.dataTransfer?.files ?? [])]);
    });
  }
}
