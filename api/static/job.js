// Following one batch: status polling, the progress bar, paged results, failures, retry, cancel,
// download-all, and the large view of its results.
import { deleteJson, getJson, postJson, sameOrigin } from "./api.js";
import { byId, h, say } from "./dom.js";
import { BlobCache, cardKey, renderCard, savedLink, withQuery } from "./items.js";
import { describe, reasonBlock, RETRYABLE } from "./reasons.js";
import { STATUS_TEXT } from "./status.js";
import { Viewer } from "./viewer.js";

const PAGE_SIZE = 12;
const POLL_MS = 1000;
const MAX_BACKOFF_MS = 30000;
const STALL_MS = 15000; // no change for this long while items wait: say why that may be
const SCAN_LIMIT = 1000;
const SCAN_PAGES = 20; // failures among the first 20,000 items; the manifest has every item
const LISTED_FAILURES = 200;

// An archive or bucket prefix may still be adding items while the first ones finish.
const isFinished = (status) => status.pending === 0 && !status.ingesting;

// Cancelled items are not done: the bar and the counts show only what was processed.
const processed = (status) => status.succeeded + status.failed;

function countsText(status) {
  const parts = [`${processed(status)} of ${status.total} done`,
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
  /** ``onUnauthorized(err)`` asks for a key; ``onChanged()`` when a batch changes state. */
  constructor(onUnauthorized, onChanged) {
    this.onUnauthorized = onUnauthorized;
    this.onChanged = onChanged;
    this.jobId = null;
    this.generation = 0; // bumped per batch followed, so late answers for another are dropped
    this.items = [];
    this.manifestBlobs = new BlobCache();
    this.viewer = new Viewer();
    byId("retry-button").addEventListener("click", () => this.retry());
    byId("cancel-button").addEventListener("click", () => this.cancel());
    byId("zip-outputs").addEventListener("change", () => this.showZipLink());
    const pagers = document.querySelectorAll(".pager");
    for (const button of document.querySelectorAll(".pager button")) {
      const fromBottom = button.closest(".pager") === pagers[pagers.length - 1];
      button.addEventListener("click", () =>
        this.turnPage(Number(button.dataset.turn) * PAGE_SIZE, fromBottom));
    }
  }

  /** Show ``jobId`` from a clean slate: nothing of the batch shown before lingers. */
  follow(jobId) {
    this.hide();
    this.jobId = jobId;
    this.offset = 0;
    this.errorsInRow = 0;
    this.movedAt = Date.now();
    byId("job-id").textContent = `Batch ${jobId}`;
    this.renderUnknown();
    byId("job-section").hidden = false;
    this.poll();
  }

  /** Stop following and drop everything shown (also when the API key is refused). */
  hide() {
    this.generation += 1;
    this.jobId = null;
    clearTimeout(this.timer);
    this.last = null;
    this.scanned = false;
    this.viewer.close();
    this.items = [];
    this.manifestBlobs.release();
    byId("items").replaceChildren();
    byId("failure-list").replaceChildren();
    byId("failures").hidden = true;
    byId("retry-button").hidden = true;
    byId("manifest-link").replaceChildren();
    this.showZipLink();
    for (const id of ["job-problem", "job-message", "job-stall"]) say(id, "");
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
    if (err.status === 404) {
      keepPolling = false;
      text += " This address names no batch of yours: it may have expired, or belong to " +
        "another API key.";
      byId("job-state").textContent = "Not found";
      byId("job-state").dataset.status = "failed";
      byId("job-counts").textContent = "";
    }
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
    const stateChanged = this.last && this.last.status !== status.status;
    if (changed) this.movedAt = Date.now();
    this.renderStatus(status);
    this.last = status;
    if (stateChanged) this.onChanged();
    if (changed) await this.loadPage(generation);
    if (isFinished(status) && !this.scanned) await this.finish(generation);
  }

  /** Before the batch's first status arrives: no state, no count, no bar. */
  renderUnknown() {
    const state = byId("job-state");
    state.textContent = "Loading…";
    state.dataset.status = "loading";
    const progress = byId("job-progress");
    progress.max = 1;
    progress.value = 0;
    progress.setAttribute("aria-valuetext", "not known yet");
    byId("job-counts").textContent = "Asking the server about this batch…";
    byId("cancel-button").hidden = true;
    for (const pager of document.querySelectorAll(".pager")) pager.hidden = true;
  }

  renderStatus(status) {
    const done = processed(status);
    const progress = byId("job-progress");
    progress.max = Math.max(status.total, 1);
    progress.value = done;
    progress.classList.toggle("cut-short", status.cancelled > 0);
    progress.setAttribute("aria-valuetext", `${done} of ${status.total} items done` +
      (status.cancelled ? `, ${status.cancelled} cancelled` : ""));
    const state = byId("job-state");
    state.textContent = STATUS_TEXT[status.status] ?? status.status;
    state.dataset.status = status.status;
    byId("job-counts").textContent = countsText(status);
    byId("cancel-button").hidden = isFinished(status);
    this.showStall(status);
    this.announce(status, done);
  }

  // Nothing moving for a while is normal under load but also what "no worker" looks like.
  showStall(status) {
    const still = Date.now() - this.movedAt;
    if (isFinished(status) || still < STALL_MS) return say("job-stall", "");
    const seconds = STALL_MS / 1000;
    say("job-stall", processed(status) === 0
      ? `Nothing has moved for over ${seconds} s. The workers may be busy with other batches, or ` +
        "none may be running. The batch stays queued and starts when a worker is free; you " +
        "can close this page and come back to its address."
      : `No item has finished for over ${seconds} s. The workers may be busy with other batches ` +
        "or with a large photo; the rest stays queued.");
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
    this.items = page.items;
    const list = byId("items");
    list.dataset.count = String(page.items.length);
    reconcile(list, page.items, (item) => renderCard(item, () => this.open(item)));
    const first = page.items.length ? this.offset + 1 : 0;
    for (const pager of document.querySelectorAll(".pager")) {
      pager.hidden = page.total <= PAGE_SIZE;
      pager.querySelector(".page-info").textContent =
        `Items ${first}–${this.offset + page.items.length} of ${page.total}`;
      pager.querySelector("[data-turn='-1']").disabled = this.offset === 0;
      pager.querySelector("[data-turn='1']").disabled = !page.next;
    }
    this.showZipLink();
  }

  /** The large view of ``item``, stepping through this page's results. */
  open(item) {
    const results = this.items.filter((each) => each.status === "succeeded");
    this.viewer.open(results, results.findIndex((each) => each.index === item.index));
  }

  /** Another page of results; from the bottom pager, back up to the first of them. */
  async turnPage(delta, fromBottom) {
    this.offset = Math.max(0, this.offset + delta);
    try {
      await this.loadPage(this.generation);
      if (fromBottom) document.querySelector(".pager").scrollIntoView({ block: "start" });
    } catch (err) {
      this.failed(err, false);
    }
  }

  /** Every result of the batch in one streamed zip, named after the photos. */
  showZipLink() {
    const results = this.last && isFinished(this.last) ? this.last.succeeded : 0;
    const outputs = byId("zip-outputs");
    for (const element of [byId("zip-link"), outputs, outputs.labels[0]]) {
      element.hidden = !results;
    }
    if (!results) return;
    const url = withQuery(sameOrigin(this.last.links.results_zip),
                          `outputs=${encodeURIComponent(outputs.value)}`);
    savedLink(byId("zip-link"), url, `depthfleet-${this.jobId}.zip`);
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
    const manifest = savedLink(h("a", {}, "Download the manifest (JSON lines)"),
                               sameOrigin(this.url("/manifest.jsonl")),
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
    this.movedAt = Date.now();
    byId("failures").hidden = true;
    byId("manifest-link").replaceChildren();
    this.poll();
  }
}
