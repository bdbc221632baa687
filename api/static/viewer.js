// The large view: one result at the size of the screen, photo and heatmap under one slider, or
// its 3D look; arrows, swipes and buttons step through the page's results, Escape closes.
// Only here are the larger files fetched (photo.jpg ≤ 2048 px, heatmap.png at screen size).
import { h } from "./dom.js";
import { DepthView } from "./depth3d.js";
import { artifactUrl, compareFrame, downloads } from "./items.js";

const LARGE_MAX_SIDE = 2048; // as large as the screen shows it, never more than a 4 MP render
const SWIPE_PX = 50;

const LARGE_DOWNLOADS = [["depth_png", "16-bit depth PNG", "depth.png"],
                         ["heatmap_png", "Heatmap PNG", "heatmap.png"]];

/** The largest photo the API offers for the large view (photo.jpg, ≤ 2048 px). */
function largePhoto(item) {
  const name = ["photo", "thumbnail"].find((each) => item.artifacts[each]);
  return name && artifactUrl(item, name);
}

function largeHeatmap(item) {
  if (!item.artifacts.heatmap_png) return artifactUrl(item, "heatmap_preview");
  const side = Math.min(LARGE_MAX_SIDE,
                        Math.ceil(Math.max(screen.width, screen.height) * devicePixelRatio));
  return artifactUrl(item, "heatmap_png", `inline=1&max_side=${side}`);
}

export class Viewer {
  constructor() {
    this.items = [];
    this.position = 0;
    this.mode = "compare";
    this.build();
  }

  build() {
    this.title = h("h2", { class: "viewer-title" });
    this.counter = h("span", { class: "viewer-counter" });
    this.modes = {
      compare: h("button", { type: "button", class: "secondary", "aria-pressed": "true" },
                 "Photo and depth"),
      depth3d: h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "3D"),
    };
    const close = h("button", { type: "button", class: "secondary" }, "Close");
    this.previous = h("button", { type: "button", class: "secondary",
                                  "aria-label": "Previous result" }, "‹ Previous");
    this.next = h("button", { type: "button", class: "secondary",
                              "aria-label": "Next result" }, "Next ›");
    this.stage = h("div", { class: "viewer-stage" });
    this.below = h("div", { class: "viewer-below" });
    this.dialog = h("dialog", { class: "viewer", "aria-labelledby": "viewer-title" },
      h("div", { class: "viewer-bar" }, this.title, this.counter,
        h("div", { class: "row", role: "group", "aria-label": "View" }, ...Object.values(this.modes)),
        close),
      this.stage, this.below,
      h("div", { class: "viewer-steps" }, this.previous, this.next));
    this.title.id = "viewer-title";
    close.addEventListener("click", () => this.close());
    this.previous.addEventListener("click", () => this.step(-1));
    this.next.addEventListener("click", () => this.step(1));
    for (const [mode, button] of Object.entries(this.modes)) {
      button.addEventListener("click", () => this.show(mode));
    }
    this.dialog.addEventListener("keydown", (event) => this.onKey(event));
    this.dialog.addEventListener("close", () => this.release());
    this.wireSwipes();
    document.body.append(this.dialog);
  }

  /** Show ``items[position]`` large. */
  open(items, position) {
    if (position < 0) return;
    this.items = items;
    this.position = position;
    this.mode = "compare";
    if (!this.dialog.open) this.dialog.showModal();
    this.render();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
    this.release();
  }

  release() {
    this.depthView?.destroy();
    this.depthView = null;
    this.stage.replaceChildren();
  }

  step(delta) {
    const position = this.position + delta;
    if (position < 0 || position >= this.items.length) return;
    this.position = position;
    this.render();
  }

  show(mode) {
    this.mode = mode;
    this.render();
  }

  render() {
    const item = this.items[this.position];
    this.release();
    this.title.textContent = item.name;
    this.counter.textContent = `${this.position + 1} of ${this.items.length}`;
    this.previous.disabled = this.position === 0;
    this.next.disabled = this.position === this.items.length - 1;
    for (const [mode, button] of Object.entries(this.modes)) {
      button.setAttribute("aria-pressed", String(mode === this.mode));
    }
    const solid = Boolean(item.artifacts.depth_png && largePhoto(item));
    this.modes.depth3d.hidden = !solid;
    if (this.mode === "depth3d" && solid) this.render3d(item);
    else this.renderCompare(item);
  }

  renderCompare(item) {
    const { frame, slider } = compareFrame(item, largeHeatmap(item), largePhoto(item));
    this.stage.replaceChildren(frame);
    this.below.replaceChildren(slider, downloads(item, LARGE_DOWNLOADS));
  }

  render3d(item) {
    const host = h("div", { class: "depth3d" });
    this.stage.replaceChildren(host);
    this.depthView = new DepthView(host, item, largePhoto(item));
    this.below.replaceChildren(this.depthView.controls, downloads(item, LARGE_DOWNLOADS));
  }

  onKey(event) {
    if (event.target.matches?.("input[type=range]")) return; // the slider's own arrows
    if (event.key === "ArrowLeft") this.step(-1);
    else if (event.key === "ArrowRight") this.step(1);
    else return;
    event.preventDefault();
  }

  // A horizontal swipe on the photo steps; in 3D a drag turns the model instead.
  wireSwipes() {
    let start = null;
    this.stage.addEventListener("pointerdown", (event) => {
      start = this.mode === "compare" && event.isPrimary ? [event.clientX, event.clientY] : null;
    });
    this.stage.addEventListener("pointerup", (event) => {
      if (!start) return;
      const [dx, dy] = [event.clientX - start[0], event.clientY - start[1]];
      start = null;
      if (Math.abs(dx) >= SWIPE_PX && Math.abs(dx) > 1.5 * Math.abs(dy)) this.step(dx < 0 ? 1 : -1);
    });
    this.stage.addEventListener("pointercancel", () => { start = null; });
  }
}
