"""``mesh.glb``: the photo as a textured relief, glTF 2.0 binary (three.js, Blender, viewers).

A regular grid over the photo, as fine as the vertex budget allows (``vertices``, default
65,536: 295 x 222 for a 4:3 photo), each vertex pushed toward the viewer by the depth under it.
The depth map is area-averaged to the grid, so each vertex carries the mean of its cell
rather than one noisy sample.

Units and the mapping, relative only (MiDaS gives depth up to an unknown scale and shift, so
nothing here is metres): the photo spans its aspect in x (right) and y (up), the longer side
1.0, centred on the origin; ``z`` (toward the viewer, glTF's +Z) is ``relief * t`` with ``t``
the relative disparity (``relative_disparity``: the map min-max scaled, 0 the farthest,
1 the nearest), linear in inverse depth like ``depth.png``. So the relief's thickness is
exactly ``relief`` (default 0.2) of the longer side whatever the photo, and never more.

The texture is the photo as JPEG (longer side at most ``TEXTURE_SIDE``, or ``max_side``),
embedded, on an unlit material (``KHR_materials_unlit``: the photo's own colours, its lighting
is in the pixels already) with a plain PBR fallback and smooth normals for viewers without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from depthfleet.shared.depth import output_size, relative_disparity, resized
from depthfleet.shared.imaging.encode import encode_jpeg
from depthfleet.shared.options import number, option_object

DEFAULT_VERTICES, MIN_VERTICES, MAX_VERTICES = 65_536, 16, 1_048_576
DEFAULT_RELIEF, MAX_RELIEF = 0.2, 1.0
TEXTURE_SIDE = 2048  # what every WebGL device takes; 4 MP of texture
TEXTURE_QUALITY = 90
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125  # glTF accessor component types
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
UNLIT = "KHR_materials_unlit"


@dataclass(frozen=True)
class MeshOptions:
    """``options.mesh``: ``vertices`` (the budget, 16..1,048,576) and ``relief`` (the
    thickness, 0..1 of the photo's longer side)."""

    vertices: int = DEFAULT_VERTICES
    relief: float = DEFAULT_RELIEF

    @classmethod
    def parse(cls, raw: object) -> MeshOptions:
        """From a request's JSON (``None``: the defaults); ValueError saying what is wrong."""
        values = option_object(raw, "mesh", ("vertices", "relief"))
        return cls(int(number(values, "vertices", DEFAULT_VERTICES, MIN_VERTICES, MAX_VERTICES,
                              "mesh", whole=True)),
                   float(number(values, "relief", DEFAULT_RELIEF, 0, MAX_RELIEF, "mesh")))

    def to_dict(self) -> dict[str, object]:
        return {"vertices": self.vertices, "relief": self.relief}

    @property
    def token(self) -> str:
        """What sets the mesh apart in a result folder's name."""
        return f"v{self.vertices}r{self.relief:g}"


def grid_shape(height: int, width: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of vertices: the photo's aspect, rows * cols <= ``budget``, at least 2 x 2
    and no finer than one vertex per pixel corner."""
    cols = int(np.sqrt(budget * width / height))
    cols = max(2, min(cols, width + 1, budget // 2))
    rows = max(2, min(budget // cols, height + 1))
    return rows, cols


def relief_grid(depth: np.ndarray, rows: int, cols: int, relief: float) -> np.ndarray:
    """(rows, cols) float32 ``z`` of the vertices: ``relief * t``, ``t`` in 0..1."""
    return relative_disparity(resized(depth, rows, cols)) * np.float32(relief)


def render_mesh(rgb: np.ndarray, depth: np.ndarray, options: MeshOptions,
                max_side: int | None = None) -> bytes:
    """``mesh.glb`` of an (H, W, 3) uint8 RGB photo and its depth map (any size)."""
    height, width = rgb.shape[:2]
    rows, cols = grid_shape(height, width, options.vertices)
    z = relief_grid(depth, rows, cols, options.relief)
    side = TEXTURE_SIDE if max_side is None else min(TEXTURE_SIDE, max_side)
    texture = encode_jpeg(resized(rgb, *output_size(height, width, side)), TEXTURE_QUALITY)
    return glb(*grid_geometry(z, height / max(height, width), width / max(height, width)),
               texture)


def grid_geometry(z: np.ndarray, span_y: float, span_x: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions, normals, texture coordinates (float32) and triangle indices of the grid
    ``z`` spanning ``span_x`` x ``span_y`` around the origin; triangles face +Z."""
    rows, cols = z.shape
    v, u = np.meshgrid(np.linspace(0, 1, rows, dtype=np.float32),
                       np.linspace(0, 1, cols, dtype=np.float32), indexing="ij")
    x, y = (u - 0.5) * span_x, (0.5 - v) * span_y
    positions = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    dz_dx = np.gradient(z, span_x / (cols - 1), axis=1)
    dz_dy = -np.gradient(z, span_y / (rows - 1), axis=0)  # rows go down, y goes up
    normals = np.stack([-dz_dx, -dz_dy, np.ones_like(z)], axis=-1).reshape(-1, 3)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    uv = np.stack([u, v], axis=-1).reshape(-1, 2)
    corner = (np.arange(rows - 1)[:, None] * cols + np.arange(cols - 1)[None, :]).ravel()
    below, right = corner + cols, corner + 1
    triangles = np.stack([corner, below, right, right, below, below + 1], axis=1)
    index_type = np.uint16 if rows * cols <= 0xFFFF else np.uint32  # 0xFFFF is reserved
    return (positions.astype(np.float32), normals.astype(np.float32), uv,
            triangles.astype(index_type).ravel())


def glb(positions: np.ndarray, normals: np.ndarray, uv: np.ndarray, indices: np.ndarray,
        jpeg: bytes) -> bytes:
    """One textured triangle mesh as a GLB: pygltflib writes the container, we lay out the
    buffer (each piece 4-byte aligned, as glTF asks)."""
    from pygltflib import (  # here, not at the top: the API imports the catalog only
        GLTF2, Accessor, Asset, Attributes, Buffer, BufferView, Image, Material, Mesh, Node,
        PbrMetallicRoughness, Primitive, Sampler, Scene, Texture, TextureInfo,
    )

    pieces = [positions, normals, uv, indices, np.frombuffer(jpeg, np.uint8)]
    views, blob = [], bytearray()
    for piece, target in zip(pieces, (ARRAY_BUFFER, ARRAY_BUFFER, ARRAY_BUFFER,
                                      ELEMENT_ARRAY_BUFFER, None)):
        views.append(BufferView(buffer=0, byteOffset=len(blob), byteLength=piece.nbytes,
                                target=target))
        blob += piece.tobytes()
        blob += b"\0" * (-len(blob) % 4)
    count = len(positions)
    accessors = [
        Accessor(bufferView=0, componentType=FLOAT, count=count, type="VEC3",
                 min=positions.min(axis=0).tolist(), max=positions.max(axis=0).tolist()),
        Accessor(bufferView=1, componentType=FLOAT, count=count, type="VEC3"),
        Accessor(bufferView=2, componentType=FLOAT, count=count, type="VEC2"),
        Accessor(bufferView=3, count=len(indices), type="SCALAR",
                 componentType=UNSIGNED_SHORT if indices.dtype == np.uint16 else UNSIGNED_INT),
    ]
    material = Material(
        name="photo", doubleSided=True, extensions={UNLIT: {}},
        pbrMetallicRoughness=PbrMetallicRoughness(baseColorTexture=TextureInfo(index=0),
                                                  metallicFactor=0.0, roughnessFactor=1.0))
    gltf = GLTF2(
        asset=Asset(version="2.0", generator="DepthFleet"), scene=0,
        scenes=[Scene(nodes=[0])], nodes=[Node(mesh=0, name="relief")],
        meshes=[Mesh(name="relief", primitives=[Primitive(
            attributes=Attributes(POSITION=0, NORMAL=1, TEXCOORD_0=2), indices=3, material=0)])],
        materials=[material], textures=[Texture(sampler=0, source=0)],
        samplers=[Sampler(magFilter=LINEAR, minFilter=LINEAR_MIPMAP_LINEAR, wrapS=CLAMP_TO_EDGE,
                          wrapT=CLAMP_TO_EDGE)],
        images=[Image(bufferView=4, mimeType="image/jpeg")],
        accessors=accessors, bufferViews=views, buffers=[Buffer(byteLength=len(blob))],
        extensionsUsed=[UNLIT],
    )
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())
