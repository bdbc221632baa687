// Recent batches: the caller's jobs from GET /v1/jobs, newest first, each a link to its address.
import { getJson } from "./api.js";
import { byId, h, say } from "./dom.js";
import { describe } from "./reasons.js";
import { STATUS_TEXT } from "./status.js";

const LIMIT = 10;
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function summary(job) {
  const counts = job.counts ?? job;
  const parts = [`${job.total} item${job.total === 1 ? "" : "s"}`];
  if (counts.failed) parts.push(`${counts.failed} failed`);
  if (counts.pending) parts.push(`${counts.pending} to go`);
  parts.push(job.id.slice(0, 8));
  return parts.join(" · ");
}

function entry(job) {
  const link = h("a", { href: `#job=${job.id}`, "data-job": job.id },
                 when.format(new Date(job.created_at)));
  const badge = h("span", { class: "badge small", "data-status": job.status },
                  STATUS_TEXT[job.status] ?? job.status);
  return h("li", {}, link, " ", badge, h("span", { class: "batch-summary" }, summary(job)));
}

export class BatchList {
  constructor(onUnauthorized) {
    this.onUnauthorized = onUnauthorized;
    this.shown = null;
    this.generation = 0;
    byId("batches-more").addEventListener("click", () => this.load(this.cursor));
  }

  /** The first page again: after an upload, and when the followed batch changes state. */
  refresh() {
    this.load(null);
  }

  async load(cursor) {
    const generation = ++this.generation;
    const query = `limit=${LIMIT}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    byId("batches-section").hidden = false;
    try {
      const page = await getJson(`/v1/jobs?${query}`);
      if (generation !== this.generation) return;
      if (!cursor) byId("batch-list").replaceChildren();
      byId("batch-list").append(...page.jobs.map(entry));
      this.cursor = page.next_cursor;
      byId("batches-more").hidden = !this.cursor;
      say("batches-note", byId("batch-list").children.length ? ""
        : "No batches yet: the ones you send appear here.");
      this.mark(this.shown);
    } catch (err) {
      if (generation !== this.generation) return;
      if (err.status === 401) return this.onUnauthorized(err);
      say("batches-note", `Could not list your batches. ${describe(err)} (Server: ${err.message})`);
    }
  }

  /** Mark the batch on screen in the list. */
  mark(jobId) {
    this.shown = jobId;
    for (const link of byId("batch-list").querySelectorAll("a[data-job]")) {
      if (link.dataset.job === jobId) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  hide() {
    this.generation += 1;
    byId("batch-list").replaceChildren();
    byId("batches-section").hidden = true;
  }
}
