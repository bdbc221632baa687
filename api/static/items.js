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
const PREVIEW_SIDE = 512;
export const DOWNLOADS = [
  ["depth_png", "16-bit depth PNG", "depth.png"],
  ["depth_pfm", "Depth PFM (float32)", "depth.pfm"],
  ["heatmap_png", "Heatmap PNG", "heatmap.png"],
  ["depth_raw", "Network output, float32 TIFF", "depth_raw.tiff"],
  ["parallax_mp4", "Parallax video (MP4)", "parallax.mp4"],
  ["mesh_glb", "3D relief mesh (glTF .glb)", "mesh.glb"],
];

// Images and downloads use the signed ``links`` (plain URLs on a keyless server): an <img> or
// an <a href> opened in a new tab cannot send the bearer key. ``inline=1`` has the API send the
// bytes itself rather than redirect to storage, another origin this page may not load from.
export const withQuery = (url, query) => `${url}${url.includes("?") ? "&" : "?"}${query}`;

/** The address of the item's artifact ``name`` that opens without the key, plus ``query``. */
export function artifactUrl(item, name, query = "inline=1") {
  return sameOrigin(withQuery(item.links?.[name] ?? item.artifacts[name], query));
}

/** API URL -> promise of a blob: URL, for the few files that need the key (the manifest). */
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
export function renderCard(item, onOpen) {
  const card = h("li", { class: "card", "data-key": cardKey(item), "data-status": item.status },
                 h("h4", { class: "card-name", title: item.name }, item.name));
  if (item.status === "succeeded") {
    card.append(comparison(item, onOpen), downloads(item));
  } else if (item.status === "failed") {
    card.append(reasonBlock(item.error));
  } else {
    card.append(h("p", { class: "card-state" }, WAITING_TEXT[item.status] ?? item.status));
  }
  return card;
}

function comparison(item, onOpen) {
  const caption = h("figcaption", {}, `${item.width} × ${item.height} px`);
  const heatmap = ["heatmap_preview", "heatmap_png"].find((name) => item.artifacts[name]); // older
  if (!heatmap) {
    return h("figure", { class: "compare" },
             h("p", { class: "card-state" }, "No heatmap was requested for this item."), caption);
  }
  const photo = previewPhoto(item);
  const preview = heatmap === "heatmap_png" ? `inline=1&max_side=${PREVIEW_SIDE}` : "inline=1";
  const { frame, slider } = compareFrame(item, artifactUrl(item, heatmap, preview),
                                         photo && artifactUrl(item, photo));
  frame.addEventListener("click", (event) => event.target.closest("input") || onOpen());
  const enlarge = h("button", { type: "button", class: "secondary small",
                                "aria-label": `Enlarge ${item.name}` }, "Enlarge");
  enlarge.addEventListener("click", onOpen);
  caption.append(enlarge);
  return h("figure", { class: "compare" }, frame, slider, caption);
}

// The grid's photo: the stored preview (a JPEG of ≤ 512 px even for HEIC, TIFF and archive
// entries); results from before previews were stored have none, and the card says so.
const previewPhoto = (item) => ["thumbnail", "photo"].find((name) => item.artifacts[name]);

/**
 * The photo under its heatmap, with a slider for the divider (photo left, depth right); the
 * grid and the large view both use it. ``photoUrl`` may be missing: the heatmap alone, said.
 */
export function compareFrame(item, heatmapUrl, photoUrl) {
  const heatmap = h("img", { class: "heatmap", alt: `Depth heatmap of ${item.name}`,
                             draggable: "false" });
  const state = h("p", { class: "card-state" });
  const frame = h("div", { class: "frame" }, heatmap, state);
  frame.style.aspectRatio = `${item.width} / ${item.height}`;
  frame.style.setProperty("--ratio", String(item.width / item.height));
  showImage(heatmap, heatmapUrl, state, "heatmap");
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
  showImage(photo, photoUrl, photoState, "photo").then((shown) => {
    if (!shown) slider.hidden = true;
  });
  split();
  return { frame, slider };
}

/** A decoded image of ``url``. */
export async function loadImage(url) {
  const image = new Image();
  image.src = url;
  await image.decode();
  return image;
}

/** Fill ``img`` from ``url``, saying so while it loads or if it cannot; true once decoded. */
export async function showImage(img, url, state, what) {
  state.textContent = `Loading ${what}…`;
  img.src = url;
  try {
    await img.decode();
    state.textContent = "";
    return true;
  } catch {
    img.hidden = true;
    state.textContent = `Could not load the ${what}; reload the page to try again.`;
    state.classList.add("error");
    return false;
  }
}

/** Links saving the item's files under the photo's name ("chelsea.depth.png"). */
export function downloads(item, choices = DOWNLOADS) {
  const stem = stemOf(item);
  const links = choices.filter(([name]) => item.artifacts[name]).map(([name, label, suffix]) =>
    h("li", {}, savedLink(h("a", {}, label), artifactUrl(item, name, "download=1"),
                          `${stem}.${suffix}`)));
  return h("ul", { class: "downloads", "aria-label": `Downloads for ${item.name}` }, ...links);
}

/**
 * Point ``link`` at ``url``, saved as ``filename``. Signed URLs open anywhere, a new tab too;
 * one the API only answers with the key (give ``blobs``) is fetched with it on a click.
 */
export function savedLink(link, url, filename, blobs = null) {
  link.href = url;
  link.download = filename;
  link.onclick = blobs && keyInUse() ? (event) => saveThroughFetch(event, link, url, blobs) : null;
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
