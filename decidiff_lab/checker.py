"""Score an image against its shapes caption with pixels alone: no second neural network.

Pipeline: each pixel gets a palette colour or none (`_color_labels`), same-colour pixels are
grouped into connected components (`_components`), each component becomes a `Detection` with
a shape read off its geometry, and `score` compares detections with the parsed caption.

Built for generated images as much as for renders: a pixel is a colour when it lies at least
half-way from the background towards that colour (so anti-aliased or blurred edges never turn
into a third hue), and shapes are told apart by two blur-tolerant numbers, not by edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .shapes import BACKGROUND, COLORS, POSITION_CELLS, parse_caption

_NAMES = tuple(COLORS)
_BITS = 6  # colour lookup table on 6 bits per channel: 262,144 entries, built once
MAX_DELTA_E = 45.0  # how far (CIE Lab) a pixel may sit from its colour's background->colour line
MIN_MIX = 0.5  # at least half-way from the background to the colour
MIN_AREA_FRACTION = 0.005  # components smaller than this share of the image are noise
EXTRA_OBJECT_RATIO = 0.25  # another blob this large (vs the smallest intended object) is an extra object


@dataclass(frozen=True)
class Detection:
    color: str
    shape: str
    cx: float  # bounding-box centre in pixels of the image it came from
    cy: float
    area: int  # pixels
    fill: float = 0.0  # area / bounding-box area: square ~1, circle ~0.785, triangle ~0.5
    top: float = 0.0  # share of the area in the top half of the box: triangle ~0.25, others ~0.5


# ---------------------------------------------------------------- colours


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


@lru_cache(maxsize=1)
def _color_table() -> np.ndarray:
    """Palette index (or -1) for every 6-bit RGB value.

    Each palette colour C defines a line from the background to C (what blending and blur
    produce). A pixel is projected on each line in RGB; it belongs to the colour whose line it
    is closest to in Lab, provided it is at least MIN_MIX of the way to C and within MAX_DELTA_E.
    """
    levels = (np.arange(2 ** _BITS) << (8 - _BITS)) + (1 << (7 - _BITS))  # bin centres
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3).astype(float)
    lab = _srgb_to_lab(rgb)
    bg = np.array(BACKGROUND, float)
    distances, mixes = [], []
    for name in _NAMES:
        direction = np.array(COLORS[name], float) - bg
        mix = np.clip((rgb - bg) @ direction / (direction @ direction), 0.0, 1.0)
        distances.append(np.linalg.norm(lab - _srgb_to_lab(bg + mix[:, None] * direction), axis=1))
        mixes.append(mix)
    # Nearest line first, then the thresholds: a faint orange edge must become background, not
    # the yellow that its blend with the background happens to resemble.
    nearest = np.argmin(distances, axis=0)
    rows = np.arange(len(rgb))
    ok = (np.array(mixes)[nearest, rows] >= MIN_MIX) & (np.array(distances)[nearest, rows] < MAX_DELTA_E)
    table = np.where(ok, nearest, -1).astype(np.int8)
    return table.reshape((2 ** _BITS,) * 3)


def _color_labels(image: np.ndarray) -> np.ndarray:
    q = image >> (8 - _BITS)
    return _color_table()[q[..., 0], q[..., 1], q[..., 2]]


# ---------------------------------------------------------------- connected components


def _components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-negative labels, by min-label propagation.

    Every pixel starts as its own flat index; each round takes the minimum over same-colour
    neighbours, then pointer-jumps (label = label of label) so it converges in a few rounds.
    Returns the component id per pixel (-1 for unlabelled).
    """
    h, w = labels.shape
    fg = labels >= 0
    big = h * w
    ids = np.where(fg, np.arange(big).reshape(h, w), big)
    same_x = fg[:, 1:] & (labels[:, 1:] == labels[:, :-1])
    same_y = fg[1:, :] & (labels[1:, :] == labels[:-1, :])
    flat_fg = fg.ravel()
    while True:
        new = ids.copy()
        m = np.where(same_x, np.minimum(ids[:, 1:], ids[:, :-1]), big)
        new[:, 1:] = np.minimum(new[:, 1:], m)
        new[:, :-1] = np.minimum(new[:, :-1], m)
        m = np.where(same_y, np.minimum(ids[1:, :], ids[:-1, :]), big)
        new[1:, :] = np.minimum(new[1:, :], m)
        new[:-1, :] = np.minimum(new[:-1, :], m)
        flat = new.ravel()
        for _ in range(2):
            flat[flat_fg] = flat[flat[flat_fg]]
        if np.array_equal(new, ids):
            return np.where(fg, ids, -1)
        ids = new


# ---------------------------------------------------------------- shapes


# (fill, top) prototypes, measured on renders: a blurred square loses its corners (fill drops),
# a blurred triangle its apex (top rises), so nearest-prototype beats fixed thresholds. `top`
# separates triangles from the rest; `fill` squares from circles (boundary ~0.895).
_PROTOTYPES = {"square": (1.0, 0.5), "circle": (0.79, 0.5), "triangle": (0.58, 0.29)}
_SCALES = (0.1, 0.05)  # typical spread of fill and top within one shape


def _classify(fill: float, top: float) -> str:
    return min(_PROTOTYPES, key=lambda s: ((fill - _PROTOTYPES[s][0]) / _SCALES[0]) ** 2
               + ((top - _PROTOTYPES[s][1]) / _SCALES[1]) ** 2)


def detect(image: np.ndarray) -> list[Detection]:
    """Coloured blobs in an H x W x 3 uint8 image, largest first."""
    image = as_uint8(image)
    labels = _color_labels(image)
    comp = _components(labels).ravel()
    keep = comp >= 0
    if not keep.any():
        return []
    w = image.shape[1]
    pixels = np.flatnonzero(keep)
    roots, inverse, counts = np.unique(comp[pixels], return_inverse=True, return_counts=True)
    min_area = MIN_AREA_FRACTION * image.shape[0] * w
    ys, xs = pixels // w, pixels % w
    found = []
    for k in np.flatnonzero(counts >= min_area):
        y, x = ys[inverse == k], xs[inverse == k]
        y0, y1, x0, x1 = y.min(), y.max() + 1, x.min(), x.max() + 1
        fill = counts[k] / ((y1 - y0) * (x1 - x0))
        top = np.count_nonzero(y + 0.5 < (y0 + y1) / 2) / counts[k]
        top += 0.5 * np.count_nonzero(y + 0.5 == (y0 + y1) / 2) / counts[k]  # middle row: half
        found.append(Detection(_NAMES[labels.flat[roots[k]]], _classify(fill, top),
                               float(x0 + x1) / 2, float(y0 + y1) / 2, int(counts[k]),
                               round(float(fill), 3), round(float(top), 3)))
    return sorted(found, key=lambda d: -d.area)


# ---------------------------------------------------------------- scoring


def position_of(d: Detection, height: int, width: int) -> str | None:
    """The caption position of a centre, or None in a corner third (no caption says corner)."""
    cell = (min(int(3 * d.cx / width), 2), min(int(3 * d.cy / height), 2))
    return next((p for p, c in POSITION_CELLS.items() if c == cell), None)


def relation_of(a: Detection, b: Detection) -> str:
    """How a sits relative to b, along the axis where their centres differ most."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _match(d: Detection, obj: tuple[str, str]) -> int:
    return 2 * (d.color == obj[0]) + (d.shape == obj[1])  # colour first, then shape


def score(image: np.ndarray, caption: str) -> dict:
    """Booleans per attribute, and `correct` when all hold.

    Single object: the target is the largest blob of the caption's colour (else the largest
    blob); colour, shape and position are read off it. Pair: the two blobs that best match the
    caption's objects (colour first, then shape), relation from their centres.
    Extra objects: `correct` also requires `count`: no other blob reaching EXTRA_OBJECT_RATIO
    (25%) of the smallest intended object's area, and for a single object the target must be
    the largest blob. Smaller specks are tolerated as generation noise.
    """
    image = as_uint8(image)
    objects, position, relation = parse_caption(caption)
    found = detect(image)
    if len(objects) == 1:
        result = {"color": False, "shape": False, "position": False, "count": False}
        if found:
            same = [d for d in found if d.color == objects[0][0]]
            target = same[0] if same else found[0]
            result["color"] = target.color == objects[0][0]
            result["shape"] = target.shape == objects[0][1]
            result["position"] = position_of(target, *image.shape[:2]) == position
            rest = [d for d in found if d is not target]
            result["count"] = target is found[0] and all(
                d.area < EXTRA_OBJECT_RATIO * target.area for d in rest)
    else:
        result = {"color": False, "shape": False, "relation": False, "count": False}
        top = found[:6]  # the largest few are enough, and keep the pair search tiny
        pairs = [(a, b) for a in top for b in top if a is not b]
        if pairs:
            a, b = max(pairs, key=lambda p: (_match(p[0], objects[0]) + _match(p[1], objects[1]),
                                             p[0].area + p[1].area))
            result["color"] = a.color == objects[0][0] and b.color == objects[1][0]
            result["shape"] = a.shape == objects[0][1] and b.shape == objects[1][1]
            result["relation"] = relation_of(a, b) == relation
            smallest = min(a.area, b.area)
            result["count"] = all(d.area < EXTRA_OBJECT_RATIO * smallest
                                  for d in found if d is not a and d is not b)
    result["correct"] = all(result.values())
    return result


def evaluate(images, captions: list[str]) -> dict:
    """Accuracies over a batch, overall and split by single-object and two-object captions."""
    groups: dict[str, list[dict]] = {"single": [], "pair": []}
    for image, caption in zip(images, captions, strict=True):
        kind = "single" if parse_caption(caption)[1] is not None else "pair"
        groups[kind].append(score(image, caption))
    report = {}
    for kind, rows in groups.items():
        keys = ("color", "shape", "position" if kind == "single" else "relation", "count")
        report[kind] = {"n": len(rows),
                        "accuracy": _mean(r["correct"] for r in rows),
                        **{k: _mean(r[k] for r in rows) for k in keys}}
    everything = groups["single"] + groups["pair"]
    report["overall"] = _mean(r["correct"] for r in everything)
    report["n"] = len(everything)
    return report


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def format_scores(report: dict) -> str:
    """A small text table of `evaluate`'s output (its layout is fixed: notebook 03 and `decidiff-lab
    evaluate` print it)."""
    def cell(v):
        return "   -" if v is None else f"{v:4.0%}"

    lines = [f"{'':8}{'n':>5}  {'correct':>7} {'colour':>6} {'shape':>6} {'place':>6} {'count':>6}"]
    for kind in ("single", "pair"):
        r = report[kind]
        place = r.get("position", r.get("relation"))
        lines.append(f"{kind:8}{r['n']:5d}  {cell(r['accuracy']):>7} {cell(r['color']):>6} "
                     f"{cell(r['shape']):>6} {cell(place):>6} {cell(r['count']):>6}")
    lines.append(f"{'overall':8}{report['n']:5d}  {cell(report['overall']):>7}")
    return "\n".join(lines)


def as_uint8(image) -> np.ndarray:
    """H x W x 3 uint8 from a uint8 array, a float array in [0, 1] (diffusers' output_type="np")
    or a PIL image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return array[..., :3]
