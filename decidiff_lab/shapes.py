"""Captioned shapes: a tiny text-to-image world that a CPU can learn in minutes.

Every image is one or two coloured shapes on a plain background, with a caption from a fixed
grammar ("a red circle on the left", "a blue square to the left of a green triangle"). All of
it is generated from a seed, so datasets need no files and `checker.py` can score a generated
image against its caption exactly.

Geometry lives on a canonical 64x64 canvas (`Shape.cx`, `cy` = centre of the bounding box,
`size` = its width = its height); `render` scales it to any size (32 for the low-resolution
phase, 64 for the main one).

Held-out split (compositional generalisation):
- single objects: (colour, shape, position) is held out iff
  (colour index + shape index + position index) % 7 == 3, indices in the order of COLORS,
  SHAPES and POSITIONS. That is 12 of the 90 combinations (13%); every colour, shape and
  position, and every pair of them, is still seen in training.
- pairs: an arrangement (first object, axis, second object), with the first object being the
  left one (horizontal) or the top one (vertical), is held out iff
  crc32("<colour> <shape>|<axis>|<colour> <shape>") % 8 == 0. Both captions of an
  arrangement ("A to the left of B" and "B to the right of A") fall on the same side, so a test
  image never has a mirror-worded twin in training.
Training never samples held-out combinations; the test split samples only them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

from .errors import UserError

# Saturated hues chosen to stay >= 44 CIE-Lab units apart (red/orange/yellow and blue/purple
# are the close calls) and far from the background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 20, 20),
    "green": (20, 150, 50),
    "blue": (20, 100, 240),
    "yellow": (250, 220, 30),
    "purple": (140, 30, 150),
    "orange": (255, 145, 0),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("to the left of", "to the right of", "above", "below")
BACKGROUND = (245, 245, 240)

CANVAS = 64.0  # geometry units: pixels of the canonical 64x64 image
THIRD = CANVAS / 3
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges
SINGLE_SIZES = (14.0, 22.0)
PAIR_SIZES = (12.0, 18.0)

# (column, row) of the thirds grid for each position; corners are never used, so a caption is
# never ambiguous between two positions.
POSITION_CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "center": "in the center"}


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    cx: float  # bounding-box centre, canonical 64-px units
    cy: float
    size: float  # bounding-box width (= height)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]
    caption: str
    position: str | None = None  # single object
    relation: str | None = None  # pair: objects[0] <relation> objects[1]


@dataclass
class ShapesData:
    images: np.ndarray  # uint8, N x size x size x 3
    captions: list[str] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)


# ---------------------------------------------------------------- captions


def _noun(color: str, shape: str) -> str:
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def make_caption(objects: list[tuple[str, str]], position: str | None = None,
                 relation: str | None = None) -> str:
    if len(objects) == 1:
        return f"{_noun(*objects[0])} {POSITION_PHRASES[position]}"
    return f"{_noun(*objects[0])} {relation} {_noun(*objects[1])}"


_NOUN = rf"(an? )({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
_SINGLE_RE = re.compile(rf"{_NOUN} ({'|'.join(POSITION_PHRASES.values())})")
_PAIR_RE = re.compile(rf"{_NOUN} ({'|'.join(RELATIONS)}) {_NOUN}")
_PHRASE_TO_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """Invert the grammar: (objects as (colour, shape), position, relation). UserError (a ValueError) otherwise."""
    if m := _SINGLE_RE.fullmatch(caption):
        objects, position, relation = [(m[2], m[3])], _PHRASE_TO_POSITION[m[4]], None
    elif m := _PAIR_RE.fullmatch(caption):
        objects, position, relation = [(m[2], m[3]), (m[6], m[7])], None, m[4]
        if objects[0] == objects[1]:
            raise UserError(f"the two objects must differ: {caption!r}")
    else:
        raise UserError(f"not a shapes caption: {caption!r}")
    if make_caption(objects, position, relation) != caption:  # catches "a orange", "an red"
        raise UserError(f"wrong article: {caption!r}")
    return objects, position, relation


# ---------------------------------------------------------------- held-out split

OBJECTS = tuple(product(COLORS, SHAPES))  # the 18 (colour, shape) kinds


def _single_held_out(color: str, shape: str, position: str) -> bool:
    index = list(COLORS).index(color) + SHAPES.index(shape) + POSITIONS.index(position)
    return index % 7 == 3


def _arrangement(a: tuple[str, str], relation: str, b: tuple[str, str]):
    """(left or top object, axis, right or bottom object): one key for both wordings of a pair."""
    first, second = (a, b) if relation in ("to the left of", "above") else (b, a)
    axis = "horizontal" if "left" in relation or "right" in relation else "vertical"
    return first, axis, second


def _pair_held_out(a: tuple[str, str], relation: str, b: tuple[str, str]) -> bool:
    first, axis, second = _arrangement(a, relation, b)
    key = f"{' '.join(first)}|{axis}|{' '.join(second)}"
    return zlib.crc32(key.encode()) % 8 == 0


def meaning(caption: str) -> tuple:
    """What a caption says, whatever its wording: "a red circle to the left of a blue square" and
    "a blue square to the right of a red circle" have the same meaning."""
    objects, position, relation = parse_caption(caption)
    return (objects[0], position) if position else _arrangement(objects[0], relation, objects[1])


SINGLE_COMBOS = tuple(product(COLORS, SHAPES, POSITIONS))
PAIR_COMBOS = tuple((a, r, b) for a in OBJECTS for r in RELATIONS for b in OBJECTS if a != b)
HELD_OUT_SINGLES = tuple(c for c in SINGLE_COMBOS if _single_held_out(*c))
HELD_OUT_PAIRS = tuple(c for c in PAIR_COMBOS if _pair_held_out(*c))
_COMBOS = {
    ("single", "train"): tuple(c for c in SINGLE_COMBOS if not _single_held_out(*c)),
    ("single", "test"): HELD_OUT_SINGLES,
    ("pair", "train"): tuple(c for c in PAIR_COMBOS if not _pair_held_out(*c)),
    ("pair", "test"): HELD_OUT_PAIRS,
}


def is_held_out(scene: Scene) -> bool:
    objects, position, relation = parse_caption(scene.caption)
    if position is not None:
        return _single_held_out(*objects[0], position)
    return _pair_held_out(objects[0], relation, objects[1])


# ---------------------------------------------------------------- sampling


def _place_single(rng: np.random.Generator, position: str, qualitative: bool) -> tuple[float, float, float]:
    size = rng.uniform(16, 18) if qualitative else rng.uniform(*SINGLE_SIZES)
    centre = []
    for cell in POSITION_CELLS[position]:
        lo, hi = cell * THIRD, (cell + 1) * THIRD
        # stay 2 px inside the third (an unambiguous caption) and 1 px inside the canvas
        lo, hi = max(lo + 2, size / 2 + 1), min(hi - 2, CANVAS - 1 - size / 2)
        if qualitative:  # near the middle of the third
            mid = float(np.clip((cell + 0.5) * THIRD, lo, hi))
            lo, hi = max(lo, mid - 1.5), min(hi, mid + 1.5)
        centre.append(rng.uniform(lo, hi))
    return centre[0], centre[1], size


def _place_pair(rng: np.random.Generator, relation: str, qualitative: bool):
    """Centres and sizes of (object A, object B) so that "A <relation> B" is clearly true."""
    s1, s2 = rng.uniform(14, 16, 2) if qualitative else rng.uniform(*PAIR_SIZES, 2)
    # Along the relation's axis: first = left/top object, then a gap, then the second.
    free = CANVAS - 2 - s1 - s2
    gap = rng.uniform(free - 10, free - 4) if qualitative else rng.uniform(6, free)
    span = s1 + gap + s2
    start = (CANVAS - span) / 2 + rng.uniform(-1, 1) if qualitative else rng.uniform(1, CANVAS - 1 - span)
    along = (start + s1 / 2, start + s1 + gap + s2 / 2)
    # Across the axis: a small offset, at most a third of the centre distance and half the gap,
    # so the relation is never ambiguous.
    limit = 1.0 if qualitative else min(gap / 2, (along[1] - along[0]) / 3)
    offset = rng.uniform(-limit, limit)
    reach = max(s1, s2) / 2 + 1 + abs(offset) / 2
    mid = CANVAS / 2 + rng.uniform(-3, 3) if qualitative else rng.uniform(reach, CANVAS - reach)
    across = (mid - offset / 2, mid + offset / 2)
    first, second = (along[0], across[0], s1), (along[1], across[1], s2)
    if relation in ("above", "below"):
        first, second = (across[0], along[0], s1), (across[1], along[1], s2)
    return (first, second) if relation in ("to the left of", "above") else (second, first)


def _scene(combo: tuple, layout: str, rng: np.random.Generator, qualitative: bool) -> Scene:
    if layout == "single":
        color, shape, position = combo
        cx, cy, size = _place_single(rng, position, qualitative)
        objects = (Shape(color, shape, round(cx, 2), round(cy, 2), round(size, 2)),)
        return Scene(objects, make_caption([(color, shape)], position=position), position=position)
    a, relation, b = combo
    places = _place_pair(rng, relation, qualitative)
    objects = tuple(Shape(c, s, round(x, 2), round(y, 2), round(z, 2))
                    for (c, s), (x, y, z) in zip((a, b), places))
    return Scene(objects, make_caption([a, b], relation=relation), relation=relation)


def sample_scene(rng: np.random.Generator, layout: str = "single", split: str = "train",
                 qualitative: bool = False) -> Scene:
    """One random scene: a combination drawn uniformly from the split, then random geometry.

    `layout`: "single" (one object at a position) or "pair" (two objects and a relation).

    `qualitative` (phase 3 data): medium shapes near the middle of their third; pairs aligned
    and far apart.
    """
    combos = _COMBOS[layout, split]
    return _scene(combos[rng.integers(len(combos))], layout, rng, qualitative)


def scene_for(caption: str, rng: np.random.Generator, qualitative: bool = False) -> Scene:
    """A random scene of `caption`, its geometry drawn as the training data draws it (phases 1-2:
    `qualitative=False`; phase 3's qualitative and phase 4's curated data: True), held out or not."""
    objects, position, relation = parse_caption(caption)
    if position:
        return _scene((*objects[0], position), "single", rng, qualitative)
    return _scene((objects[0], relation, objects[1]), "pair", rng, qualitative)


def swap_roles(caption: str) -> str:
    """"A <relation> B" -> "B <relation> A" (the other arrangement); a single-object caption as is."""
    objects, _, relation = parse_caption(caption)
    return make_caption(objects[::-1], relation=relation) if relation else caption


def swapped_twin(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """The scene's counterpart with the same objects in other places: a pair's two objects trade
    places (same relation words, roles swapped), a single object moves to another position.
    None when that counterpart is a held-out combination."""
    if scene.position:
        obj = scene.objects[0]
        others = [p for p in POSITIONS if p != scene.position]
        twin = _scene((obj.color, obj.shape, others[rng.integers(len(others))]), "single", rng, False)
    else:
        a, b = scene.objects
        objects = (Shape(b.color, b.shape, a.cx, a.cy, a.size), Shape(a.color, a.shape, b.cx, b.cy, b.size))
        twin = Scene(objects, swap_roles(scene.caption), relation=scene.relation)
    return None if is_held_out(twin) else twin


def curated_scenes(seed: int = 0) -> list[Scene]:
    """Phase-4 fine-tuning set: 240 fixed qualitative training scenes.

    Every training single-object combination twice (156), then 84 pairs, shuffled.
    """
    rng = np.random.default_rng(seed)
    singles = _COMBOS["single", "train"] * 2
    pairs = _COMBOS["pair", "train"]
    chosen = [pairs[i] for i in rng.choice(len(pairs), 240 - len(singles), replace=False)]
    scenes = [_scene(c, "single", rng, True) for c in singles]
    scenes += [_scene(c, "pair", rng, True) for c in chosen]
    return [scenes[i] for i in rng.permutation(len(scenes))]


def prompt_set(layout: str = "single", split: str = "test", n: int = 30, seed: int = 0) -> list[str]:
    """n evaluation captions: distinct combinations in random order (cycling if n exceeds them).

    layout: "single", "pair" or "mixed" (half and half).
    """
    if layout == "mixed":
        return prompt_set("single", split, n - n // 2, seed) + prompt_set("pair", split, n // 2, seed)
    combos = _COMBOS[layout, split]
    order = np.random.default_rng(seed).permutation(len(combos))
    order = np.resize(order, n)  # cycles when n > len(combos)
    if layout == "single":
        return [make_caption([combos[i][:2]], position=combos[i][2]) for i in order]
    return [make_caption([combos[i][0], combos[i][2]], relation=combos[i][1]) for i in order]


# ---------------------------------------------------------------- rendering


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) array."""
    big = size * SUPERSAMPLE
    k = big / CANVAS
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0 = (obj.cx - obj.size / 2) * k, (obj.cy - obj.size / 2) * k
        x1, y1 = (obj.cx + obj.size / 2) * k, (obj.cy + obj.size / 2) * k
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=color)  # PIL boxes include the end pixel
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)
        else:  # apex up
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    return np.asarray(image.reduce(SUPERSAMPLE))


def make_dataset(n: int, seed: int = 0, size: int = 64, split: str = "train",
                 pair_fraction: float = 0.5, subset: str = "all") -> ShapesData:
    """n rendered scenes. Same arguments, same bytes; the scenes do not depend on `size`, so a
    32-px and a 64-px dataset with one seed show the same scenes (progressive resolution).

    subset: "all", "qualitative" (phase 3) or "curated" (phase 4: `curated_scenes(seed)`,
    cycled if n exceeds its 240 scenes; training split only).
    """
    if subset == "curated":
        if split != "train":
            raise UserError("the curated subset is drawn from the training split")
        curated = curated_scenes(seed)
        scenes = [curated[i % len(curated)] for i in range(n)]
    elif subset in ("all", "qualitative"):
        rng = np.random.default_rng(seed)
        scenes = []
        for _ in range(n):
            layout = "pair" if rng.random() < pair_fraction else "single"
            scenes.append(sample_scene(rng, layout, split, qualitative=subset == "qualitative"))
    else:
        raise UserError(f"unknown subset {subset!r}")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, size)
    return ShapesData(images, [s.caption for s in scenes], scenes)


def to_tensor(images: np.ndarray):
    """uint8 N x H x W x 3 (or one H x W x 3) -> float32 torch tensor N x 3 x H x W in [-1, 1],
    the input range of diffusers' AutoencoderKL."""
    import torch  # local: the rest of this module needs only numpy and PIL

    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
