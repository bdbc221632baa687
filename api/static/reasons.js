// Error codes in plain words. The server's own message is always shown beside them.
import { h } from "./dom.js";

const SENTENCES = {
  empty_file: "The file is empty.",
  not_an_image: "This file is not an image.",
  unsupported_format: "This format is not supported: documents and drawings (PDF, SVG) are not converted.",
  corrupt_image: "The image is damaged or incomplete, so it cannot be decoded.",
  invalid_dimensions: "The image claims to have no width or no height.",
  too_many_pixels: "The image has more pixels than this server accepts.",
  file_too_large: "The file is larger than this server accepts.",
  storage_unavailable: "Storage could not be reached. Retrying may help.",
  internal_error: "Processing failed on the server. Retrying may help.",
  corrupt_archive: "The archive is damaged and cannot be read.",
  unsupported_entry: "This archive entry is not a regular file.",
  unsafe_path: "This archive entry's path points outside the archive.",
  too_many_entries: "The archive holds more files than this server accepts.",
  source_missing: "The uploaded file is no longer in storage.",
  no_files: "Choose at least one file.",
  queue_full: "The server has too much work queued. Try again in a little while.",
  unavailable: "The server cannot reach its job store right now.",
  missing_api_key: "This server needs an API key.",
  invalid_api_key: "The server did not accept this API key.",
  forbidden: "Without API keys this server only serves its own machine.",
  not_found: "Not found: it may have expired, or belong to another API key.",
  network_error: "The server could not be reached.",
};

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
