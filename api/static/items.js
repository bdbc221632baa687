// One card per item: the photo beside its heatmap with a compare slider and downloads, or the
// item's state and, when it failed, why.
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
];

// Artifacts through the API itself: <img> cannot send the bearer key, and the default 302 to
// presigned storage URLs would be a cross-origin fetch.
const inline = (url) => `${url}${url.includes("?") ? "&" : "?"}inline=1`;

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
  const source = item.artifacts.heatmap_png;
  if (!source) {
    return h("figure", { class: "compare" },
             h("p", { class: "card-state" }, "No heatmap was requested for this item."), caption);
  }
  const heatmap = h("img", { class: "heatmap", alt: `Depth heatmap of ${item.name}` });
  const frame = h("div", { class: "frame" }, heatmap);
  frame.style.aspectRatio = `${item.width} / ${item.height}`;
  const state = h("p", { class: "card-state" });
  const figure = h("figure", { class: "compare" }, frame, state, caption);
  showArtifact(heatmap, source, blobs, state);
  if (photoUrl) addPhoto(figure, frame, photoUrl, item.name);
  return figure;
}

async function showArtifact(img, source, blobs, state) {
  state.textContent = "Loading heatmap…";
  try {
    img.src = await blobs.url(inline(source));
    await img.decode();
    state.textContent = "";
  } catch (err) {
    state.textContent = `Could not load the heatmap: ${err.message}`;
    state.classList.add("error");
  }
}

// The photo sits under the heatmap; the slider is the divider: photo on its left, depth right.
function addPhoto(figure, frame, photoUrl, name) {
  const photo = h("img", { class: "photo", alt: `Photo ${name}`, src: photoUrl });
  const slider = h("input", { type: "range", min: "0", max: "100", value: "50",
                              "aria-label": `Share of the photo shown for ${name}` });
  const row = h("div", { class: "slider-row" }, h("span", { "aria-hidden": "true" }, "Photo"),
                slider, h("span", { "aria-hidden": "true" }, "Depth"));
  const split = () => {
    frame.style.setProperty("--split", `${slider.value}%`);
    slider.setAttribute("aria-valuetext", `${slider.value}% photo, ${100 - slider.value}% depth`);
  };
  slider.addEventListener("input", split);
  photo.addEventListener("error", () => { // e.g. HEIC or TIFF: the heatmap alone
    photo.remove();
    row.replaceWith(h("p", { class: "card-state" }, "This browser cannot show the original photo."));
  });
  frame.prepend(photo);
  figure.insertBefore(row, frame.nextSibling);
  split();
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
