// One card per item: the photo beside its heatmap with a compare slider and downloads, or the
// item's state and, when it failed, why. The grid shows the stored compact previews (longer side
// at most 512 px); full-size files are rendered by the API when they are asked for.
import { fetchBlob, sameOrigin } from "./api.js";
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
  ["parallax_mp4", "Parallax video (MP4)", "parallax.mp4"],
  ["mesh_glb", "3D relief mesh (glTF .glb)", "mesh.glb"],
];
// The larger heatmap: as large as the screen shows it, never more than a 4 MP render.
const ZOOM_MAX_SIDE = 2048;

// Artifacts through the API itself: <img> cannot send the bearer key, and the default 302 to
// presigned storage URLs would be a cross-origin fetch.
const withQuery = (url, query) => `${url}${url.includes("?") ? "&" : "?"}${query}`;
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

export function renderCard(item, photoUrl, blobs) {
  const card = h("li", { class: "card", "data-key": cardKey(item), "data-status": item.status },
                 h("h4", { class: "card-name", title: item.name }, item.name));
  if (item.status === "succeeded") {
    card.append(comparison(item, photoUrl, blobs), downloads(item, blobs));
  } else if (item.status === "failed") {
    card.append(reasonBlock(item.error));
  } else {
    card.append(h("p", { class: "card-state" }, WAITING_TEXT[item.status] ?? item.status));
  }
  return card;
}

function comparison(item, photoUrl, blobs) {
  const caption = h("figcaption", {}, `${item.width} × ${item.height} px`);
  const source = item.artifacts.heatmap_preview ?? item.artifacts.heatmap_png; // older results
  if (!source) {
    return h("figure", { class: "compare" },
             h("p", { class: "card-state" }, "No heatmap was requested for this item."), caption);
  }
  const heatmap = h("img", { class: "heatmap", alt: `Depth heatmap of ${item.name}` });
  const frame = h("div", { class: "frame" }, heatmap);
  frame.style.aspectRatio = `${item.width} / ${item.height}`;
  const state = h("p", { class: "card-state" });
  const figure = h("figure", { class: "compare" }, frame, state, caption);
  showArtifact(heatmap, source, blobs, state, "heatmap");
  const photo = photoSource(item, photoUrl, blobs);
  if (photo) addPhoto(figure, frame, photo, item.name);
  if (item.artifacts.heatmap_png) caption.append(zoomButton(item, blobs));
  return figure;
}

async function showArtifact(img, source, blobs, state, what) {
  state.textContent = `Loading ${what}…`;
  try {
    img.src = await blobs.url(inline(source));
    await img.decode();
    state.textContent = "";
  } catch (err) {
    state.textContent = `Could not load the ${what}: ${err.message}`;
    state.classList.add("error");
  }
}

// The stored thumbnail: small, and a JPEG even for HEIC or TIFF originals and archive entries;
// else the original picked in this tab, if any.
function photoSource(item, photoUrl, blobs) {
  const thumbnail = item.artifacts.thumbnail;
  if (!thumbnail) return photoUrl && Promise.resolve(photoUrl);
  const fetched = blobs.url(inline(thumbnail));
  return photoUrl ? fetched.catch(() => photoUrl) : fetched;
}

// The photo sits under the heatmap; the slider is the divider: photo on its left, depth right.
function addPhoto(figure, frame, pendingUrl, name) {
  const photo = h("img", { class: "photo", alt: `Photo ${name}` });
  const slider = h("input", { type: "range", min: "0", max: "100", value: "50",
                              "aria-label": `Share of the photo shown for ${name}` });
  const row = h("div", { class: "slider-row" }, h("span", { "aria-hidden": "true" }, "Photo"),
                slider, h("span", { "aria-hidden": "true" }, "Depth"));
  const split = () => {
    frame.style.setProperty("--split", `${slider.value}%`);
    slider.setAttribute("aria-valuetext", `${slider.value}% photo, ${100 - slider.value}% depth`);
  };
  const unavailable = (text) => { // the heatmap alone
    photo.remove();
    row.replaceWith(h("p", { class: "card-state" }, text));
  };
  slider.addEventListener("input", split);
  photo.addEventListener("error", () => unavailable("This browser cannot show the photo."));
  pendingUrl.then((url) => { photo.src = url; },
                  (err) => unavailable(`Could not load the photo: ${err.message}`));
  frame.prepend(photo);
  figure.insertBefore(row, frame.nextSibling);
  split();
}

/** A button that opens the heatmap in a dialog, rendered by the API to fit this screen. */
function zoomButton(item, blobs) {
  const button = h("button", { type: "button", class: "secondary small",
                               "aria-label": `View larger heatmap of ${item.name}` },
                   "View larger");
  button.addEventListener("click", () => showLarger(item, blobs));
  return button;
}

function showLarger(item, blobs) {
  const side = Math.min(ZOOM_MAX_SIDE,
                        Math.ceil(Math.max(screen.width, screen.height) * devicePixelRatio));
  const image = h("img", { alt: `Larger depth heatmap of ${item.name}` });
  const state = h("p", { class: "card-state" });
  const close = h("button", { type: "submit" }, "Close");
  const dialog = h("dialog", { class: "zoom", "aria-label": `Heatmap of ${item.name}` },
                   image, state, h("form", { method: "dialog" }, close));
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  showArtifact(image, withQuery(item.artifacts.heatmap_png, `max_side=${side}`), blobs, state,
               "larger heatmap");
}

function downloads(item, blobs) {
  const stem = item.name.split("/").pop().replace(/\.[^.]*$/, "") || `item-${item.index}`;
  const links = DOWNLOADS.filter(([name]) => item.artifacts[name]).map(([name, label, suffix]) =>
    h("li", {}, downloadLink(inline(item.artifacts[name]), label, `${stem}.${suffix}`, blobs)));
  return h("ul", { class: "downloads", "aria-label": `Downloads for ${item.name}` }, ...links);
}

/** A real link to the API URL; a click fetches it with the key and saves it from a blob: URL. */
export function downloadLink(source, label, filename, blobs) {
  const link = h("a", { href: sameOrigin(source), download: filename }, label);
  link.addEventListener("click", (event) => saveThroughFetch(event, link, source, blobs));
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
