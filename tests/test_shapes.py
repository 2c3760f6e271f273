"""The captioned-shapes world: determinism, grammar, geometry, held-out split, subsets."""

import re

import numpy as np
import pytest

from decidiff_lab import shapes
from decidiff_lab.shapes import (COLORS, POSITIONS, RELATIONS, SHAPES, make_dataset,
                                 parse_caption, sample_scene)

NOUN = r"(a (?:red|green|blue|yellow|purple) |an orange )(circle|square|triangle)"
SINGLE = re.compile(rf"{NOUN} (on the left|on the right|at the top|at the bottom|in the center)")
PAIR = re.compile(rf"{NOUN} (to the left of|to the right of|above|below) {NOUN}")


@pytest.fixture(scope="module")
def train():
    return make_dataset(1000, seed=3)


def test_deterministic(train):
    again = make_dataset(1000, seed=3)
    assert again.images.tobytes() == train.images.tobytes() and again.captions == train.captions
    other = make_dataset(1000, seed=4)
    assert other.images.tobytes() != train.images.tobytes()
    assert train.images.shape == (1000, 64, 64, 3) and train.images.dtype == np.uint8


def test_caption_grammar(train):
    for caption, scene in zip(train.captions, train.scenes):
        if len(scene.objects) == 1:
            assert SINGLE.fullmatch(caption), caption
        else:
            assert PAIR.fullmatch(caption), caption
            a, b = scene.objects
            assert (a.color, a.shape) != (b.color, b.shape)
    assert any(c.startswith("an orange") for c in train.captions)
    assert not any("a orange" in c or "an red" in c for c in train.captions)
    assert 0.4 < np.mean([len(s.objects) == 2 for s in train.scenes]) < 0.6


def _third(value, size=64):
    return min(int(3 * value / size), 2)


def test_position_thirds_match_rendered_centre(train):
    cells = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}
    for image, scene in zip(train.images, train.scenes):
        if scene.position is None:
            continue
        ys, xs = np.nonzero(np.any(image.astype(int) - shapes.BACKGROUND != 0, axis=-1))
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2  # rendered bbox
        assert (_third(cx), _third(cy)) == cells[scene.position], scene
        obj = scene.objects[0]
        assert abs(cx - obj.cx) <= 1 and abs(cy - obj.cy) <= 1
        assert 14 <= obj.size <= 22


def test_pairs_unambiguous_and_apart(train):
    for scene in train.scenes:
        if scene.relation is None:
            continue
        a, b = scene.objects
        dx, dy = b.cx - a.cx, b.cy - a.cy
        gap_x = abs(dx) - (a.size + b.size) / 2
        gap_y = abs(dy) - (a.size + b.size) / 2
        assert max(gap_x, gap_y) >= 5.9  # no overlap
        expected = {"to the left of": dx > 2 * abs(dy), "to the right of": -dx > 2 * abs(dy),
                    "above": dy > 2 * abs(dx), "below": -dy > 2 * abs(dx)}
        assert expected[scene.relation], scene
        assert all(12 <= o.size <= 18 for o in scene.objects)


def test_held_out_split():
    singles = shapes.HELD_OUT_SINGLES
    assert 9 <= len(singles) <= 14  # ~10-15 % of 90
    for values, index in ((COLORS, 0), (SHAPES, 1), (POSITIONS, 2)):
        trained = {c[index] for c in shapes._COMBOS["single", "train"]}
        assert trained == set(values)
    assert 0.08 < len(shapes.HELD_OUT_PAIRS) / len(shapes.PAIR_COMBOS) < 0.18
    assert {c[1] for c in shapes.HELD_OUT_PAIRS} == set(RELATIONS)
    rng = np.random.default_rng(0)
    for kind in ("single", "pair"):
        for _ in range(300):
            assert not shapes.is_held_out(sample_scene(rng, kind, "train"))
            assert shapes.is_held_out(sample_scene(rng, kind, "test"))
    test = make_dataset(200, seed=1, split="test")
    assert all(shapes.is_held_out(s) for s in test.scenes)


def test_mirrored_pair_captions_share_a_side():
    for a, relation, b in shapes.PAIR_COMBOS:
        mirror = {"to the left of": "to the right of", "to the right of": "to the left of",
                  "above": "below", "below": "above"}[relation]
        assert shapes._pair_held_out(a, relation, b) == shapes._pair_held_out(b, mirror, a)


def test_meaning_is_one_key_for_both_wordings():
    left = shapes.meaning("a red circle to the left of a blue square")
    assert left == shapes.meaning("a blue square to the right of a red circle")
    assert left != shapes.meaning("a blue square to the left of a red circle")  # roles swapped
    assert left != shapes.meaning("a red circle above a blue square")
    assert shapes.meaning("an orange triangle at the top") == (("orange", "triangle"), "top")
    with pytest.raises(ValueError):
        shapes.meaning("a red circle near a blue square")


def test_swapped_twin_keeps_objects_moves_places(train):
    from decidiff_lab.checker import score

    rng = np.random.default_rng(0)
    twins = 0
    for scene in train.scenes[:300]:
        twin = shapes.swapped_twin(scene, rng)
        if twin is None:
            if scene.relation:  # its counterpart, roles swapped, is a held-out arrangement
                a, b = scene.objects
                assert shapes._pair_held_out((b.color, b.shape), scene.relation, (a.color, a.shape))
            continue
        twins += 1
        assert not shapes.is_held_out(twin)
        assert sorted((o.color, o.shape) for o in twin.objects) == sorted((o.color, o.shape) for o in scene.objects)
        assert shapes.meaning(twin.caption) != shapes.meaning(scene.caption)
        if scene.relation:  # same relation words, roles swapped: the objects traded places
            assert twin.relation == scene.relation
            assert [(o.cx, o.cy) for o in twin.objects] == [(o.cx, o.cy) for o in scene.objects]
        else:
            assert twin.position != scene.position
        assert score(shapes.render(twin), twin.caption)["correct"], twin
    assert twins >= 250


def test_parse_caption_round_trip(train):
    captions = train.captions + make_dataset(100, seed=9, split="test").captions
    for caption in captions[:1000]:
        objects, position, relation = parse_caption(caption)
        assert shapes.make_caption(objects, position, relation) == caption
    for scene in train.scenes[:200]:
        objects, position, relation = parse_caption(scene.caption)
        assert objects == [(o.color, o.shape) for o in scene.objects]
        assert (position, relation) == (scene.position, scene.relation)


@pytest.mark.parametrize("bad", [
    "", "a red circle", "a orange circle on the left", "an red circle on the left",
    "a pink circle on the left", "a red hexagon on the left", "a red circle in the corner",
    "A red circle on the left", "a red circle on the left.", "a red circle  on the left",
    "a red circle near a blue square", "a red circle above a red circle",
    "a red circle above a blue square on the left",
])
def test_parse_caption_rejects(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_32px_same_scenes():
    small, large = make_dataset(50, seed=2, size=32), make_dataset(50, seed=2, size=64)
    assert small.images.shape == (50, 32, 32, 3)
    assert small.captions == large.captions
    # downsampled 64-px render ~ 32-px render: same geometry, scaled
    pooled = large.images.reshape(50, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(pooled - small.images).mean() < 4


def test_subsets():
    q = make_dataset(200, seed=0, subset="qualitative")
    assert q.images.tobytes() == make_dataset(200, seed=0, subset="qualitative").images.tobytes()
    for scene in q.scenes:
        if scene.position is not None:
            assert 16 <= scene.objects[0].size <= 18
        else:
            a, b = scene.objects
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - (a.size + b.size) / 2 >= 14
    curated = shapes.curated_scenes()
    assert len(curated) == 240 and curated == shapes.curated_scenes(0)
    assert not any(shapes.is_held_out(s) for s in curated)
    c = make_dataset(300, seed=0, subset="curated")
    assert c.captions[:240] == [s.caption for s in curated] and c.captions[240:] == c.captions[:60]
    with pytest.raises(ValueError):
        make_dataset(10, subset="curated", split="test")


def test_prompt_set_and_tensor():
    prompts = shapes.prompt_set("single", "test", 12, seed=0)
    assert sorted(prompts) == sorted(set(prompts)) and len(prompts) == 12
    assert prompts == shapes.prompt_set("single", "test", 12, seed=0)
    assert len(shapes.prompt_set("pair", "train", 40, seed=1)) == 40
    mixed = shapes.prompt_set("mixed", "train", 10, seed=1)
    assert sum(parse_caption(p)[1] is not None for p in mixed) == 5
    x = shapes.to_tensor(make_dataset(4, seed=0).images)
    assert tuple(x.shape) == (4, 3, 64, 64) and str(x.dtype) == "torch.float32"
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0


def test_scene_for_draws_the_training_geometry():
    rng = np.random.default_rng(0)
    for caption in ("a red circle on the left", "a blue square above a green triangle"):
        assert shapes.scene_for(caption, rng).caption == caption
    broad = [shapes.scene_for("a red circle on the left", rng) for _ in range(200)]
    narrow = [shapes.scene_for("a red circle on the left", rng, qualitative=True) for _ in range(200)]
    assert all(16 <= s.objects[0].size <= 18 for s in narrow)
    assert np.std([s.objects[0].size for s in broad]) > 2 * np.std([s.objects[0].size for s in narrow])
    assert np.std([s.objects[0].cy for s in broad]) > 2 * np.std([s.objects[0].cy for s in narrow])
    assert all(s.objects[0].cx < 64 / 3 for s in broad + narrow)  # always inside the caption's third
    with pytest.raises(ValueError):
        shapes.scene_for("a red blob", rng)
