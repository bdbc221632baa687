// Following one batch: status polling, the progress bar, paged results, failures, retry, cancel.
import { deleteJson, getJson, postJson, sameOrigin } from "./api.js";
import { byId, h, say } from "./dom.js";
import { BlobCache, cardKey, downloadLink, renderCard } from "./items.js";
import { describe, reasonBlock, RETRYABLE } from "./reasons.js";

const PAGE_SIZE = 12;
const POLL_MS = 1000;
const MAX_BACKOFF_MS = 30000;
const SCAN_LIMIT = 1000;
const SCAN_PAGES = 20; // failures among the first 20,000 items; the manifest has every item
const LISTED_FAILURES = 200;

const STATUS_TEXT = {
  queued: "Queued: waiting for a worker",
  running: "Running",
  succeeded: "Done",
  partial: "Done; some items failed",
  failed: "Failed: no item succeeded",
  cancelled: "Cancelled",
};

// An archive or bucket prefix may still be adding items while the first ones finish.
const isFinished = (status) => status.pending === 0 && !status.ingesting;

function countsText(status) {
  const parts = [`${status.total - status.pending} of ${status.total} done`,
                 `${status.succeeded} succeeded`, `${status.failed} failed`];
  if (status.pending) parts.push(`${status.pending} to go`);
  if (status.cancelled) parts.push(`${status.cancelled} cancelled`);
  if (status.ingesting) parts.push("still adding items");
  return parts.join(" · ");
}

// Replace only the cards whose item changed, so focus and loaded images elsewhere stay put.
function reconcile(list, items, makeCard) {
  items.forEach((item, position) => {
    const current = list.children[position];
    if (current?.dataset.key === cardKey(item)) return;
    const card = makeCard(item);
    if (current) current.replaceWith(card);
    else list.append(card);
  });
  while (list.children.length > items.length) list.lastElementChild.remove();
}

export class JobView {
  constructor(onUnauthorized) {
    this.onUnauthorized = onUnauthorized;
    this.generation = 0; // bumped per batch followed, so late answers for another are dropped
    this.photos = new Map();
    this.blobs = new BlobCache();
    this.manifestBlobs = new BlobCache();
    byId("retry-button").addEventListener("click", () => this.retry());
    byId("cancel-button").addEventListener("click", () => this.cancel());
    byId("prev-page").addEventListener("click", () => this.turnPage(-PAGE_SIZE));
    byId("next-page").addEventListener("click", () => this.turnPage(PAGE_SIZE));
  }

  /** Show ``jobId``; ``photos`` maps item names to blob: URLs of local originals (owned now). */
  follow(jobId, photos = new Map()) {
    this.hide();
    this.jobId = jobId;
    this.photos = photos;
    this.offset = 0;
    this.errorsInRow = 0;
    byId("job-id").textContent = `Batch ${jobId}`;
    byId("job-section").hidden = false;
    this.poll();
  }

  /** Stop following and drop everything shown (also when the API key is refused). */
  hide() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.last = null;
    this.scanned = false;
    for (const url of this.photos.values()) URL.revokeObjectURL(url);
    this.photos = new Map();
    this.blobs.release();
    this.manifestBlobs.release();
    byId("items").replaceChildren();
    byId("failure-list").replaceChildren();
    byId("failures").hidden = true;
    byId("retry-button").hidden = true;
    byId("manifest-link").replaceChildren();
    say("job-problem", "");
    say("job-message", "");
    byId("job-section").hidden = true;
  }

  url(path) {
    return `/v1/jobs/${encodeURIComponent(this.jobId)}${path}`;
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    const generation = this.generation;
    try {
      const status = await getJson(this.url(""));
      if (generation !== this.generation) return;
      this.errorsInRow = 0;
      say("job-problem", "");
      await this.show(status, generation);
      if (!isFinished(status)) this.schedule(POLL_MS);
    } catch (err) {
      if (generation === this.generation) this.failed(err, true);
    }
  }

  /** Say what went wrong, plainly; a polling failure retries with a growing, visible delay. */
  failed(err, keepPolling) {
    if (err.status === 401) return this.onUnauthorized(err);
    let text = `${describe(err)} (Server: ${err.message})`;
    if (err.status === 404) keepPolling = false;
    if (keepPolling) {
      const delay = Math.min(MAX_BACKOFF_MS,
                             Math.max(err.retryAfterSeconds * 1000, 2000 * 2 ** this.errorsInRow));
      this.errorsInRow += 1;
      text += ` Trying again in ${Math.round(delay / 1000)} s.`;
      this.schedule(delay);
    }
    say("job-problem", text);
  }

  async show(status, generation) {
    const changed = this.last?.updated_at !== status.updated_at ||
      this.last?.status !== status.status;
    this.renderStatus(status);
    this.last = status;
    if (changed) await this.loadPage(generation);
    if (isFinished(status) && !this.scanned) await this.finish(generation);
  }

  renderStatus(status) {
    const done = status.total - status.pending;
    const progress = byId("job-progress");
    progress.max = Math.max(status.total, 1);
    progress.value = done;
    progress.setAttribute("aria-valuetext", `${done} of ${status.total} items done`);
    const state = byId("job-state");
    state.textContent = STATUS_TEXT[status.status] ?? status.status;
    state.dataset.status = status.status;
    byId("job-counts").textContent = countsText(status);
    byId("cancel-button").hidden = isFinished(status);
    this.announce(status, done);
  }

  // Screen readers hear the state and each tenth of the way, not every poll.
  announce(status, done) {
    const step = `${status.status}:${Math.floor((10 * done) / Math.max(status.total, 1))}`;
    if (step === this.announced) return;
    this.announced = step;
    byId("job-live").textContent = `${STATUS_TEXT[status.status] ?? status.status}: ` +
      `${done} of ${status.total} items done.`;
  }

  async loadPage(generation) {
    const page = await getJson(this.url(`/items?offset=${this.offset}&limit=${PAGE_SIZE}`));
    if (generation !== this.generation) return;
    reconcile(byId("items"), page.items,
              (item) => renderCard(item, this.photos.get(item.name), this.blobs));
    const first = page.items.length ? this.offset + 1 : 0;
    byId("page-info").textContent =
      `Items ${first}–${this.offset + page.items.length} of ${page.total}`;
    byId("prev-page").disabled = this.offset === 0;
    byId("next-page").disabled = !page.next;
  }

  async turnPage(delta) {
    this.offset = Math.max(0, this.offset + delta);
    this.blobs.release();
    this.blobs = new BlobCache();
    try {
      await this.loadPage(this.generation);
    } catch (err) {
      this.failed(err, false);
    }
  }

  async finish(generation) {
    this.scanned = true;
    try {
      await this.showOutcome(generation);
    } catch (err) {
      this.scanned = false; // the next poll tries again
      throw err;
    }
  }

  async showOutcome(generation) {
    const manifest = downloadLink(this.url("/manifest.jsonl"), "Download the manifest (JSON lines)",
                                  `${this.jobId}.manifest.jsonl`, this.manifestBlobs);
    byId("manifest-link").replaceChildren(manifest);
    if (this.last.failed > 0) await this.listFailures(generation);
  }

  /** Every failed item with its reason, collected once the batch is done. */
  async listFailures(generation) {
    byId("failures").hidden = false;
    say("failure-note", "Collecting the failed items…");
    const failures = [];
    let url = this.url(`/items?offset=0&limit=${SCAN_LIMIT}`);
    for (let pages = 0; url && pages < SCAN_PAGES; pages += 1) {
      const page = await getJson(url);
      if (generation !== this.generation) return;
      failures.push(...page.items.filter((item) => item.status === "failed"));
      url = page.next && sameOrigin(page.next);
    }
    byId("failure-list").replaceChildren(...failures.slice(0, LISTED_FAILURES).map((item) =>
      h("li", {}, h("span", { class: "failure-name" }, item.name), reasonBlock(item.error))));
    const shown = Math.min(failures.length, LISTED_FAILURES);
    say("failure-note", url || failures.length > shown
      ? `Showing ${shown} failed items; the manifest lists every item.`
      : `${failures.length} item(s) failed.`);
    byId("retry-button").hidden = !(url || failures.some((item) => RETRYABLE.has(item.error?.code)));
  }

  async retry() {
    const button = byId("retry-button");
    button.disabled = true;
    try {
      const result = await postJson(this.url("/retry"));
      button.hidden = true;
      say("job-message", result.requeued
        ? `Requeued ${result.requeued} failed item(s).`
        : "Nothing to retry: the failed items were refused for their input and would fail again.");
      if (result.requeued) this.restartPolling();
    } catch (err) {
      this.failed(err, false);
    } finally {
      button.disabled = false;
    }
  }

  async cancel() {
    if (!window.confirm("Cancel every item of this batch that has not started yet?")) return;
    try {
      await deleteJson(this.url(""));
      say("job-message", "Cancelled what had not started yet.");
    } catch (err) {
      this.failed(err, false);
    }
    this.poll();
  }

  restartPolling() {
    this.scanned = false;
    this.last = null;
    byId("failures").hidden = true;
    byId("manifest-link").replaceChildren();
    this.poll();
  }
}
