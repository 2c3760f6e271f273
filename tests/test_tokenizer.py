"""The CLIP tokenizer built offline by scripts/build_clip_tokenizer.py (data/clip-tokenizer)."""

from pathlib import Path

import pytest
from transformers import CLIPTokenizer, CLIPTokenizerFast

FOLDER = Path(__file__).resolve().parents[1] / "data" / "clip-tokenizer"
PROMPT = "a photo of an astronaut riding a horse on Mars"
IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


@pytest.fixture(scope="module", params=[CLIPTokenizer, CLIPTokenizerFast], ids=["slow", "fast"])
def tokenizer(request):
    return request.param.from_pretrained(FOLDER)


def test_known_ids(tokenizer):
    assert tokenizer(PROMPT).input_ids == IDS


def test_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 49407
    assert tokenizer.pad_token_id == 49407
    assert tokenizer("A PHOTO").input_ids == tokenizer("a photo").input_ids  # lower-cased


def test_77_token_window(tokenizer):
    assert tokenizer.model_max_length == 77
    long = " ".join(["a red circle above a blue square"] * 20)
    ids = tokenizer(long, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    padded = tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_files_and_licence():
    names = {p.name for p in FOLDER.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
            "LICENSE-CLIP.txt"} <= names
    assert "tokenizer.json" not in names  # 3.6 MB and derivable: not committed
    assert (FOLDER / "merges.txt").read_text(encoding="utf-8").split("\n", 1)[0] == "#version: 0.2"
    licence = (FOLDER / "LICENSE-CLIP.txt").read_text()
    assert "MIT License" in licence and "OpenAI" in licence and "open-clip-torch" in licence
