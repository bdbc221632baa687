// Talking to /v1: the bearer key (kept in this tab's sessionStorage only) and error bodies.
const KEY_STORAGE = "depthfleet.apiKey";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE) || "",
  set: (key) => sessionStorage.setItem(KEY_STORAGE, key),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

export class ApiError extends Error {
  constructor(status, code, message, retryAfterSeconds = 0) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

function authHeaders() {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The contract's {"error": {"code", "message"}}; anything else (a proxy's page) still reads.
function apiError(status, body, statusText, retryAfter) {
  const error = body?.error ?? {};
  return new ApiError(status, error.code || `http_${status}`,
                      error.message || statusText || "no details", Number(retryAfter) || 0);
}

// The API's absolute links name the host it saw; behind a proxy that may not be ours.
export function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return new URL(parsed.pathname + parsed.search, location.origin).href;
}

async function send(url, options = {}) {
  let response;
  try {
    response = await fetch(sameOrigin(url),
                           { ...options, headers: { ...authHeaders(), ...options.headers } });
  } catch (err) {
    throw new ApiError(0, "network_error", err.message);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw apiError(response.status, body, response.statusText,
                   response.headers.get("Retry-After"));
  }
  return response;
}

export const getJson = async (url) => (await send(url)).json();
export const keyInUse = () => Boolean(apiKey.get());
export const deleteJson = async (url) => (await send(url, { method: "DELETE" })).json();
export const fetchBlob = async (url) => (await send(url)).blob();

export async function postJson(url, body) {
  const options = { method: "POST" };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  return (await send(url, options)).json();
}

// XMLHttpRequest rather than fetch: only it reports upload progress.
export function uploadFiles(files, onProgress) {
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) resolve(xhr.response);
      else reject(apiError(xhr.status, xhr.response, xhr.statusText,
                           xhr.getResponseHeader("Retry-After")));
    });
    xhr.addEventListener("error", () => reject(
      new ApiError(0, "network_error", "the upload did not reach the server")));
    xhr.send(form);
  });
}
