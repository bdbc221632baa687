// The 3D look: the photo raised by its depth map, turning with the pointer, a drag or swipe, or
// the device's tilt. WebGL where the browser has it, else layered canvas 2D parallax; nothing
// is loaded from elsewhere. The depth is MiDaS's relative depth, and the caption says so.
import { h } from "./dom.js";
import { artifactUrl, loadImage } from "./items.js";

const DEPTH_SIDE = 256; // the mesh: one vertex per pixel of a depth map ≤ 256 px a side
const FLAT_SIDE = 960; // the 2D fallback's photo
const LAYERS = 10; // the 2D fallback's depth slices
const MAX_YAW = 0.55; // radians either way
const MAX_PITCH = 0.35;
const IDLE_MS = 2500; // then, unless reduced motion is asked for, a slow sway
const EASE = 0.12;
const CAPTION = "Relative depth, not a measurement: from this one photo, MiDaS guesses which " +
  "parts are nearer or farther, without units or scale, so shapes come out stretched or " +
  "flattened. Move the pointer or drag, swipe, or tilt your phone to turn it.";

const clamp = (value, limit) => Math.max(-limit, Math.min(limit, value));

export class DepthView {
  constructor(host, item, photoUrl) {
    this.canvas = h("canvas", { class: "depth-canvas", role: "img", "data-yaw": "0",
                                "aria-label": `${item.name} in 3D, raised by its estimated depth` });
    this.canvas.style.aspectRatio = `${item.width} / ${item.height}`;
    this.canvas.style.setProperty("--ratio", String(item.width / item.height));
    this.state = h("p", { class: "card-state" }, "Loading the photo and its depth…");
    this.strength = h("input", { type: "range", min: "0", max: "100", value: "50",
                                 id: "depth-strength" });
    this.controls = h("div", { class: "depth-controls" },
                      h("label", { for: "depth-strength" }, "Depth effect"), this.strength);
    this.offerTilt();
    host.append(this.canvas, this.state, h("p", { class: "depth-caption" }, CAPTION));
    this.view = { yaw: 0, pitch: 0 };
    this.target = { yaw: 0, pitch: 0 };
    this.inputAt = 0;
    this.calm = matchMedia("(prefers-reduced-motion: reduce)").matches;
    this.alive = true;
    this.wireInput();
    this.load(item, photoUrl);
  }

  async load(item, photoUrl) {
    const depthUrl = artifactUrl(item, "depth_png", `inline=1&max_side=${DEPTH_SIDE}`);
    try {
      const [photo, depth] = await Promise.all([loadImage(photoUrl), loadImage(depthUrl)]);
      if (!this.alive) return;
      const field = depthField(depth);
      this.renderer = WebGlRenderer.create(this.canvas, photo, field) ??
        new FlatRenderer(this.canvas, photo, field);
      this.canvas.dataset.renderer = this.renderer.kind;
      this.state.textContent = "";
      this.frame();
    } catch (err) {
      this.state.textContent = `Could not build the 3D view: ${err.message || "no image"}`;
      this.state.classList.add("error");
    }
  }

  destroy() {
    this.alive = false;
    cancelAnimationFrame(this.raf);
    window.removeEventListener("deviceorientation", this.onTilt);
    this.renderer?.destroy();
  }

  aim(yaw, pitch) {
    this.target = { yaw: clamp(yaw, MAX_YAW), pitch: clamp(pitch, MAX_PITCH) };
    this.inputAt = performance.now();
    this.wake();
  }

  wireInput() {
    // Where the pointer is over the picture sets the angle: hover, drag and touch alike.
    const follow = (event) => {
      const box = this.canvas.getBoundingClientRect();
      this.aim(((event.clientX - box.left) / box.width - 0.5) * 2 * MAX_YAW,
               ((event.clientY - box.top) / box.height - 0.5) * 2 * MAX_PITCH);
    };
    this.canvas.addEventListener("pointermove", follow);
    this.canvas.addEventListener("pointerdown", follow);
    this.strength.addEventListener("input", () => this.wake());
    let level = null; // the first tilt is "straight"
    this.onTilt = (event) => {
      if (event.gamma === null || event.beta === null) return;
      level ??= event.beta;
      this.aim((event.gamma / 30) * MAX_YAW, ((event.beta - level) / 30) * MAX_PITCH);
    };
    window.addEventListener("deviceorientation", this.onTilt);
  }

  // iOS asks before a page may read the tilt, and only from a tap.
  offerTilt() {
    if (typeof globalThis.DeviceOrientationEvent?.requestPermission !== "function" ||
        !matchMedia("(pointer: coarse)").matches) return;
    const ask = h("button", { type: "button", class: "secondary small" }, "Turn by tilting");
    ask.addEventListener("click", async () => {
      ask.hidden = (await DeviceOrientationEvent.requestPermission()) === "granted";
    });
    this.controls.append(ask);
  }

  wake() {
    if (this.renderer && !this.raf) this.raf = requestAnimationFrame(() => this.frame());
  }

  // Ease towards the target; keep drawing only while something moves.
  frame() {
    this.raf = 0;
    if (!this.alive) return;
    const now = performance.now();
    const swaying = !this.calm && now - this.inputAt > IDLE_MS;
    if (swaying) {
      this.target = { yaw: Math.sin(now / 1600) * MAX_YAW * 0.6,
                      pitch: Math.sin(now / 2300) * MAX_PITCH * 0.3 };
    }
    const moving = Math.abs(this.target.yaw - this.view.yaw) > 1e-4 ||
      Math.abs(this.target.pitch - this.view.pitch) > 1e-4;
    this.view.yaw += (this.target.yaw - this.view.yaw) * EASE;
    this.view.pitch += (this.target.pitch - this.view.pitch) * EASE;
    this.canvas.dataset.yaw = this.view.yaw.toFixed(3);
    this.canvas.dataset.pitch = this.view.pitch.toFixed(3);
    this.renderer.draw(this.view, Number(this.strength.value) / 100);
    if (moving || swaying || this.strength.value !== this.drawnStrength) this.wake();
    this.drawnStrength = this.strength.value;
  }
}

/** The depth map as 0..1 (1 = near), lightly smoothed so the mesh has no spikes. */
function depthField(image) {
  const width = image.naturalWidth;
  const height = image.naturalHeight;
  const context = h("canvas", { width, height }).getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const raw = new Float32Array(width * height);
  for (let i = 0; i < raw.length; i += 1) raw[i] = rgba[4 * i] / 255;
  const data = new Float32Array(raw.length);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      let sum = 0;
      let count = 0;
      for (let dy = -1; dy <= 1; dy += 1) {
        for (let dx = -1; dx <= 1; dx += 1) {
          const [sx, sy] = [x + dx, y + dy];
          if (sx < 0 || sy < 0 || sx >= width || sy >= height) continue;
          sum += raw[sy * width + sx];
          count += 1;
        }
      }
      data[y * width + x] = sum / count;
    }
  }
  return { width, height, data, at: (x, y) => data[y * width + x] };
}

// Column-major 4x4 matrices, only what the camera needs.
function multiply(a, b) {
  const out = new Float32Array(16);
  for (let col = 0; col < 4; col += 1) {
    for (let row = 0; row < 4; row += 1) {
      let sum = 0;
      for (let k = 0; k < 4; k += 1) sum += a[k * 4 + row] * b[col * 4 + k];
      out[col * 4 + row] = sum;
    }
  }
  return out;
}

function perspective(fovY, aspect, near, far) {
  const f = 1 / Math.tan(fovY / 2);
  return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / (near - far), -1,
                           0, 0, (2 * far * near) / (near - far), 0]);
}

function rotations(yaw, pitch, distance) {
  const [cy, sy, cp, sp] = [Math.cos(yaw), Math.sin(yaw), Math.cos(pitch), Math.sin(pitch)];
  // translate(0, 0, -distance) · rotateX(pitch) · rotateY(yaw)
  return new Float32Array([cy, sp * sy, -cp * sy, 0, 0, cp, sp, 0, sy, -sp * cy, cp * cy, 0,
                           0, 0, -distance, 1]);
}

const VERTEX_SHADER = `
attribute vec3 position;
attribute vec2 uv;
uniform mat4 matrix;
uniform float strength;
varying vec2 vUv;
void main() {
  vUv = uv;
  gl_Position = matrix * vec4(position.xy, position.z * strength, 1.0);
}`;
const FRAGMENT_SHADER = `
precision mediump float;
uniform sampler2D photo;
varying vec2 vUv;
void main() { gl_FragColor = texture2D(photo, vUv); }`;
const FOV = Math.PI / 6;

/** A grid mesh over the depth map, textured with the photo. */
class WebGlRenderer {
  static create(canvas, photo, field) {
    const gl = canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: true });
    if (!gl || gl.getParameter(gl.MAX_TEXTURE_SIZE) < 512) return null;
    return new WebGlRenderer(canvas, gl, photo, field);
  }

  constructor(canvas, gl, photo, field) {
    this.kind = "webgl";
    this.canvas = canvas;
    this.gl = gl;
    this.program = program(gl);
    const longer = Math.max(field.width, field.height);
    this.half = [field.width / longer, field.height / longer];
    this.count = mesh(gl, this.program, field, this.half);
    texture(gl, photo);
  }

  draw(view, strength) {
    const { gl, canvas } = this;
    const scale = Math.min(2, devicePixelRatio);
    const width = Math.round(canvas.clientWidth * scale) || 1;
    const height = Math.round(canvas.clientHeight * scale) || 1;
    if (canvas.width !== width || canvas.height !== height) [canvas.width, canvas.height] = [width, height];
    gl.viewport(0, 0, width, height);
    gl.clearColor(20 / 255, 18 / 255, 25 / 255, 1); // the large view's #141219
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    const aspect = width / height;
    const distance = 1.1 * Math.max(this.half[1], this.half[0] / aspect) / Math.tan(FOV / 2) + 0.6;
    const matrix = multiply(perspective(FOV, aspect, 0.1, 20),
                            rotations(view.yaw, view.pitch, distance));
    gl.uniformMatrix4fv(gl.getUniformLocation(this.program, "matrix"), false, matrix);
    gl.uniform1f(gl.getUniformLocation(this.program, "strength"), 0.9 * strength);
    gl.drawElements(gl.TRIANGLES, this.count, gl.UNSIGNED_SHORT, 0);
  }

  destroy() {
    this.gl.getExtension("WEBGL_lose_context")?.loseContext();
  }
}

function program(gl) {
  const shader = (type, source) => {
    const made = gl.createShader(type);
    gl.shaderSource(made, source);
    gl.compileShader(made);
    if (!gl.getShaderParameter(made, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(made));
    return made;
  };
  const linked = gl.createProgram();
  gl.attachShader(linked, shader(gl.VERTEX_SHADER, VERTEX_SHADER));
  gl.attachShader(linked, shader(gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
  gl.linkProgram(linked);
  if (!gl.getProgramParameter(linked, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(linked));
  gl.useProgram(linked);
  return linked;
}

/** Vertices (x, y, depth - 0.5, u, v), one per depth pixel; returns the index count. */
function mesh(gl, linked, field, [halfX, halfY]) {
  const { width, height } = field;
  const vertices = new Float32Array(width * height * 5);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const [u, v] = [x / (width - 1), y / (height - 1)];
      vertices.set([(u - 0.5) * 2 * halfX, (0.5 - v) * 2 * halfY, field.at(x, y) - 0.5, u, v],
                   (y * width + x) * 5);
    }
  }
  const indices = new Uint16Array((width - 1) * (height - 1) * 6);
  let i = 0;
  for (let y = 0; y < height - 1; y += 1) {
    for (let x = 0; x < width - 1; x += 1) {
      const corner = y * width + x;
      indices.set([corner, corner + width, corner + 1, corner + 1, corner + width,
                   corner + width + 1], i);
      i += 6;
    }
  }
  gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ARRAY_BUFFER, vertices, gl.STATIC_DRAW);
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, indices, gl.STATIC_DRAW);
  for (const [name, size, offset] of [["position", 3, 0], ["uv", 2, 12]]) {
    const location = gl.getAttribLocation(linked, name);
    gl.enableVertexAttribArray(location);
    gl.vertexAttribPointer(location, size, gl.FLOAT, false, 20, offset);
  }
  return indices.length;
}

function texture(gl, photo) {
  const limit = gl.getParameter(gl.MAX_TEXTURE_SIZE);
  const source = fitted(photo, limit);
  gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, source);
  for (const [name, value] of [[gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE],
                               [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE],
                               [gl.TEXTURE_MIN_FILTER, gl.LINEAR],
                               [gl.TEXTURE_MAG_FILTER, gl.LINEAR]]) {
    gl.texParameteri(gl.TEXTURE_2D, name, value);
  }
}

/** ``image``, or a canvas copy of it with the longer side at most ``side``. */
function fitted(image, side) {
  const scale = Math.min(1, side / Math.max(image.naturalWidth, image.naturalHeight));
  if (scale === 1) return image;
  const width = Math.round(image.naturalWidth * scale);
  const height = Math.round(image.naturalHeight * scale);
  const canvas = h("canvas", { width, height });
  canvas.getContext("2d").drawImage(image, 0, 0, width, height);
  return canvas;
}

/** Without WebGL: the photo cut into depth slices, nearer ones shifted further. */
class FlatRenderer {
  constructor(canvas, photo, field) {
    this.kind = "2d";
    const base = fitted(photo, FLAT_SIDE);
    [canvas.width, canvas.height] = [base.width || base.naturalWidth, base.height || base.naturalHeight];
    this.context = canvas.getContext("2d");
    this.layers = slices(base, canvas.width, canvas.height, field);
  }

  draw(view, strength) {
    const { context } = this;
    const { width, height } = context.canvas;
    const reach = 0.06 * Math.max(width, height) * strength;
    context.fillStyle = "#141219";
    context.fillRect(0, 0, width, height);
    this.layers.forEach((layer, k) => {
      const near = (k + 0.5) / LAYERS - 0.5;
      const grow = 1 + 0.04 * strength; // hides the edges the shifts uncover
      context.drawImage(layer, (width * (1 - grow)) / 2 + near * reach * (view.yaw / MAX_YAW),
                        (height * (1 - grow)) / 2 + near * reach * (view.pitch / MAX_PITCH),
                        width * grow, height * grow);
    });
  }

  destroy() {
    this.layers = [];
  }
}

/** ``LAYERS`` canvases, the k-th holding the pixels at least k/LAYERS near (the first: all). */
function slices(image, width, height, field) {
  const context = h("canvas", { width, height }).getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0, width, height);
  const pixels = context.getImageData(0, 0, width, height);
  const near = new Float32Array(width * height);
  for (let y = 0; y < height; y += 1) {
    const fy = Math.min(field.height - 1, Math.floor((y * field.height) / height));
    for (let x = 0; x < width; x += 1) {
      near[y * width + x] = field.at(Math.min(field.width - 1, Math.floor((x * field.width) / width)), fy);
    }
  }
  return Array.from({ length: LAYERS }, (_, k) => {
    const layer = new ImageData(new Uint8ClampedArray(pixels.data), width, height);
    for (let i = 0; i < near.length; i += 1) {
      if (near[i] < k / LAYERS) layer.data[4 * i + 3] = 0;
    }
    const canvas = h("canvas", { width, height });
    canvas.getContext("2d").putImageData(layer, 0, 0);
    return canvas;
  });
}
