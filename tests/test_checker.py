"""The pixel checker: right on ground truth, wrong on wrong captions, robust to mild blur."""

import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from decidiff_lab import checker
from decidiff_lab.shapes import Scene, Shape, make_dataset, render


@pytest.fixture(scope="module")
def data():
    return {split: make_dataset(500, seed=11, split=split) for split in ("train", "test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth(data, split):
    report = checker.evaluate(data[split].images, data[split].captions)
    assert report["overall"] >= 0.99, checker.format_scores(report)
    assert report["single"]["accuracy"] >= 0.99 and report["pair"]["accuracy"] >= 0.99


@pytest.mark.measurement
def test_speed(data):
    images, captions = data["train"].images[:200], data["train"].captions[:200]
    checker.evaluate(images[:5], captions[:5])  # colour table built once
    start = time.perf_counter()
    checker.evaluate(images, captions)
    assert 200 / (time.perf_counter() - start) >= 200


def _red_circle_left():
    return render(Scene((Shape("red", "circle", 10.0, 32.0, 18.0),), "a red circle on the left",
                        position="left"))


def test_rejects_wrong_red_circle_left():
    image = _red_circle_left()
    assert checker.score(image, "a red circle on the left")["correct"]
    wrong_color = checker.score(image, "a blue circle on the left")
    assert not wrong_color["color"] and not wrong_color["correct"]
    assert wrong_color["shape"] and wrong_color["position"]
    wrong_shape = checker.score(image, "a red square on the left")
    assert not wrong_shape["shape"] and wrong_shape["color"] and not wrong_shape["correct"]
    wrong_place = checker.score(image, "a red circle on the right")
    assert not wrong_place["position"] and wrong_place["color"] and not wrong_place["correct"]
    assert not checker.score(image, "a red triangle on the left")["shape"]
    assert not checker.score(image, "an orange circle on the left")["color"]


def test_rejects_swapped_relation():
    a, b = Shape("blue", "square", 16, 30, 15), Shape("green", "triangle", 46, 33, 15)
    image = render(Scene((a, b), "a blue square to the left of a green triangle",
                         relation="to the left of"))
    assert checker.score(image, "a blue square to the left of a green triangle")["correct"]
    assert checker.score(image, "a green triangle to the right of a blue square")["correct"]
    swapped = checker.score(image, "a blue square to the right of a green triangle")
    assert not swapped["relation"] and swapped["color"] and swapped["shape"]
    assert not swapped["correct"]
    assert not checker.score(image, "a green triangle to the left of a blue square")["relation"]
    assert not checker.score(image, "a blue square above a green triangle")["relation"]
    assert not checker.score(image, "a blue circle to the left of a green triangle")["shape"]
    assert not checker.score(image, "a red square to the left of a green triangle")["color"]


def test_extra_objects_and_empty():
    blank = np.full((64, 64, 3), 245, np.uint8)
    assert checker.detect(blank) == []
    assert not checker.score(blank, "a red circle on the left")["correct"]
    assert not checker.score(blank, "a red circle above a blue square")["correct"]
    two = render(Scene((Shape("red", "circle", 10, 32, 18), Shape("blue", "square", 50, 32, 18)),
                       "", relation="to the left of"))
    result = checker.score(two, "a red circle on the left")  # right object, plus an extra one
    assert result["color"] and result["shape"] and result["position"]
    assert not result["count"] and not result["correct"]
    speck = _red_circle_left().copy()
    speck[60:62, 60:62] = (20, 100, 240)  # a 4-pixel blue speck is noise, not an object
    assert checker.score(speck, "a red circle on the left")["correct"]


def test_evaluate_mixed():
    data = make_dataset(40, seed=5)
    captions = list(data.captions)
    single = [i for i, s in enumerate(data.scenes) if s.position is not None]
    for i in single[:5]:  # break 5 single-object captions
        captions[i] = captions[i].replace("circle", "@").replace("square", "circle") \
            .replace("triangle", "square").replace("@", "triangle")
    report = checker.evaluate(data.images, captions)
    assert set(report) == {"single", "pair", "overall", "n"} and report["n"] == 40
    assert set(report["single"]) == {"n", "accuracy", "color", "shape", "position", "count"}
    assert set(report["pair"]) == {"n", "accuracy", "color", "shape", "relation", "count"}
    n_single = len(single)
    assert report["single"]["n"] == n_single and report["pair"]["n"] == 40 - n_single
    assert report["single"]["shape"] == pytest.approx((n_single - 5) / n_single)
    assert report["single"]["color"] == 1.0 and report["pair"]["accuracy"] == 1.0
    assert report["overall"] == pytest.approx(35 / 40)
    table = checker.format_scores(report)
    assert "single" in table and "pair" in table and "overall" in table
    empty = checker.evaluate([], [])
    assert empty["overall"] is None and "-" in checker.format_scores(empty)


def test_mild_blur(data):
    images = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1)))
              for im in data["train"].images[:300]]
    assert checker.evaluate(images, data["train"].captions[:300])["overall"] >= 0.95


def test_input_types(data):
    image, caption = data["train"].images[0], data["train"].captions[0]
    assert checker.score(Image.fromarray(image), caption)["correct"]
    assert checker.score(image.astype(np.float32) / 255, caption)["correct"]
