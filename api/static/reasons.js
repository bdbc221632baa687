// Error codes in plain words. The server's own message is always shown beside them.
import { h } from "./dom.js";

// One table for the page and the CLI: shared/reasons.py, embedded in the page by api/web.py.
const SENTENCES = JSON.parse(document.getElementById("reasons")?.textContent ?? "{}");

// Failures the worker marks retryable (POST .../retry requeues them); bad input never is.
export const RETRYABLE = new Set(["internal_error", "storage_unavailable"]);

export function describe(error) {
  return SENTENCES[error.code] ?? "Something went wrong.";
}

export function reasonBlock(error) {
  const known = error ?? { code: "unknown", message: "no reason was recorded" };
  return h("div", { class: "reason" },
    h("p", {}, h("strong", {}, describe(known))),
    h("p", { class: "server-message" }, "Server: ", known.message, " ", h("code", {}, known.code)));
}
