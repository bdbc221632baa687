// One card per item: the photo under its heatmap with a compare slider and downloads, or the
// item's state and, when it failed, why. The grid shows the stored compact previews (longer side
// at most 512 px); larger files only in the large view (viewer.js) or when downloaded.
import { fetchBlob, keyInUse, sameOrigin } from "./api.js";
import { h } from "./dom.js";
import { describe, reasonBlock } from "./reasons.js";

const WAITING_TEXT = {
  queued: "Waiting for a worker…",
  running: "Computing depth…",
  cancelled: "Cancelled before it started.",
};
const DOWNLOADS = [
  ["depth_png", "16-bit depth PNG", "depth.png"],
  ["depth_pfm", "Depth PFM (float32)", "depth.pfm"],
  ["heatmap_png", "Heatmap PNG", "heatmap.png"],
  ["depth_raw", "Network output, float32 TIFF", "depth_raw.tiff"],
];

// Artifacts through the API itself: <img> cannot send the bearer key, and the default 302 to
// presigned storage URLs would be a cross-origin fetch.
export const withQuery = (url, query) => `${url}${url.includes("?") ? "&" : "?"}${query}`;
const inline = (url) => withQuery(url, "inline=1");

/** API URL -> promise of a blob: URL, revoked together when the cards using them go. */
export class BlobCache {
  constructor() {
    this.urls = new Map();
  }

  url(source) {
    if (!this.urls.has(source)) {
      const pending = fetchBlob(source).then((blob) => URL.createObjectURL(blob));
      pending.catch(() => this.urls.delete(source)); // a later click tries again
      this.urls.set(source, pending);
    }
    return this.urls.get(source);
  }

  release() {
    for (const pending of this.urls.values()) {
      pending.then((url) => URL.revokeObjectURL(url), () => {});
    }
    this.urls.clear();
  }
}

export const cardKey = (item) => `${item.index}:${item.status}`;

/** The photo's name without folders or extension, for file names ("chelsea.depth.png"). */
export const stemOf = (item) =>
  item.name.split("/").pop().replace(/\.[^.]*$/, "") || `item-${item.index}`;

/** ``onOpen()`` shows the item in the large view. */
export function renderCard(item, blobs, onOpen) {
  const card = h("li", { class: "card", "data-key": cardKey(item), "data-status": item.status },
                 h("h4", { class: "card-name", title: item.name }, item.name));
  if (item.status === "succeeded") {
    card.append(comparison(item, blobs, onOpen), downloads(item, blobs));
  } else if (item.status === "failed") {
    card.append(reasonBlock(item.error));
  } else {
    card.append(h("p", { class: "card-state" }, WAITING_TEXT[item.status] ?? item.status));
  }
  return card;
}

function comparison(item, blobs, onOpen) {
  const caption = h("figcaption", {}, `${item.width} × ${item.height} px`);
  const heatmapUrl = item.artifacts.heatmap_preview ?? item.artifacts.heatmap_png; // older results
  if (!heatmapUrl) {
    return h("figure", { class: "compare" },
             h("p", { class: "card-state" }, "No heatmap was requested for this item."), caption);
  }
  const { frame, slider } = compareFrame(item, blobs, heatmapUrl, previewPhoto(item));
  frame.addEventListener("click", (event) => event.target.closest("input") || onOpen());
  const enlarge = h("button", { type: "button", class: "secondary small",
                                "aria-label": `Enlarge ${item.name}` }, "Enlarge");
  enlarge.addEventListener("click", onOpen);
  caption.append(enlarge);
  return h("figure", { class: "compare" }, frame, slider, caption);
}

// The grid's photo: the stored preview (a JPEG of ≤ 512 px even for HEIC, TIFF and archive
// entries); results from before previews were stored have none, and the card says so.
const previewPhoto = (item) => item.artifacts.photo_preview ?? item.artifacts.thumbnail;

/**
 * The photo under its heatmap, with a slider for the divider (photo left, depth right); the
 * grid and the large view both use it. ``photoUrl`` may be missing: the heatmap alone, said.
 */
export function compareFrame(item, blobs, heatmapUrl, photoUrl) {
  const heatmap = h("img", { class: "heatmap", alt: `Depth heatmap of ${item.name}`,
                             draggable: "false" });
  const state = h("p", { class: "card-state" });
  const frame = h("div", { class: "frame" }, heatmap, state);
  frame.style.aspectRatio = `${item.width} / ${item.height}`;
  frame.style.setProperty("--ratio", String(item.width / item.height));
  showArtifact(heatmap, heatmapUrl, blobs, state, "heatmap");
  if (!photoUrl) {
    return { frame, slider: h("p", { class: "card-state" },
                              "No photo preview was stored for this older result.") };
  }
  const photo = h("img", { class: "photo", alt: `Photo ${item.name}`, draggable: "false" });
  const photoState = h("p", { class: "card-state" });
  const input = h("input", { type: "range", min: "0", max: "100", value: "50",
                             "aria-label": `Share of the photo shown for ${item.name}` });
  const slider = h("div", { class: "slider-row" }, h("span", { "aria-hidden": "true" }, "Photo"),
                   input, h("span", { "aria-hidden": "true" }, "Depth"));
  const split = () => {
    frame.style.setProperty("--split", `${input.value}%`);
    input.setAttribute("aria-valuetext", `${input.value}% photo, ${100 - input.value}% depth`);
  };
  input.addEventListener("input", split);
  frame.prepend(photo);
  frame.append(photoState);
  showArtifact(photo, photoUrl, blobs, photoState, "photo").then((shown) => {
    if (!shown) slider.hidden = true;
  });
  split();
  return { frame, slider };
}

/** A decoded image of an API URL (fetched through the key). */
export async function artifactImage(source, blobs) {
  const image = new Image();
  image.src = await blobs.url(inline(source));
  await image.decode();
  return image;
}

/** Fill ``img`` from an API URL (through the key); true once it is decoded. */
export async function showArtifact(img, source, blobs, state, what) {
  state.textContent = `Loading ${what}…`;
  try {
    img.src = await blobs.url(inline(source));
    await img.decode();
    state.textContent = "";
    return true;
  } catch (err) {
    img.hidden = true;
    state.textContent = `Could not load the ${what}: ${err.message ?? "the browser cannot show it"}`;
    state.classList.add("error");
    return false;
  }
}

function downloads(item, blobs) {
  const stem = stemOf(item);
  const links = DOWNLOADS.filter(([name]) => item.artifacts[name]).map(([name, label, suffix]) =>
    h("li", {}, downloadLink(item.artifacts[name], label, `${stem}.${suffix}`, blobs)));
  return h("ul", { class: "downloads", "aria-label": `Downloads for ${item.name}` }, ...links);
}

/** A link to an API file that saves it under ``filename``. */
export function downloadLink(source, label, filename, blobs) {
  return savedLink(h("a", {}, label), source, filename, blobs);
}

/**
 * Point ``link`` at ``source`` so it saves as ``filename`` and also works opened in a new tab.
 * Without a key the URL itself does; with one, a click fetches it with the key and saves it
 * from a blob: URL (the API names the file after the photo either way).
 */
export function savedLink(link, source, filename, blobs) {
  link.href = sameOrigin(inline(source));
  link.download = filename;
  link.onclick = keyInUse() ? (event) => saveThroughFetch(event, link, inline(source), blobs)
    : null;
  return link;
}

async function saveThroughFetch(event, link, source, blobs) {
  if (link.href.startsWith("blob:")) return; // fetched already: the browser saves it
  event.preventDefault();
  link.setAttribute("aria-busy", "true");
  try {
    link.href = await blobs.url(source);
    link.click();
  } catch (err) {
    link.after(h("span", { class: "error", role: "alert" }, ` ${describe(err)} ${err.message}`));
  } finally {
    link.removeAttribute("aria-busy");
  }
}
