"""Build SD 1.5's CLIP tokenizer folder offline from OpenAI's BPE vocabulary file.

The vocabulary (`bpe_simple_vocab_16e6.txt.gz`, MIT licence) ships inside the open-clip-torch
wheel, which pip can download without installing (PyPI is reachable where the hub is not):

    pip download open-clip-torch==3.3.0 --no-deps -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The argument may also be the `.gz` itself. Output: data/clip-tokenizer/ with vocab.json,
merges.txt, tokenizer_config.json, special_tokens_map.json and LICENSE-CLIP.txt. Running it
twice writes identical bytes. We deliberately skip tokenizer.json (3.6 MB, derivable).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "clip-tokenizer"
# CLIP keeps only the first 49152 - 256 - 2 merges of the file (see openai/CLIP simple_tokenizer).
N_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (whitespace/control bytes moved up)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_bpe_gz(path: Path) -> tuple[bytes, str]:
    """Raw .gz bytes, from the file itself or from inside a wheel (a wheel is a zip)."""
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.endswith(GZ_NAME)]
            if not names:
                raise SystemExit(f"{GZ_NAME} not found inside {path}")
            return wheel.read(names[0]), f"{path.name}!{names[0]}"
    return path.read_bytes(), path.name


def build(source: Path, out_dir: Path = OUT_DIR) -> Path:
    raw, origin = read_bpe_gz(source)
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # Line 0 is a header mangled by the gzip filename ("bpe_simple_vocab_16e6.txt#version: 0.2"):
    # skip it and write transformers' exact header ourselves, or loading breaks.
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": _json(tokenizer_config()),
        "special_tokens_map.json": _json(special_tokens_map()),
        "LICENSE-CLIP.txt": licence(origin, hashlib.sha256(raw).hexdigest()),
    }
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    return out_dir


def _token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def special_tokens_map() -> dict:
    # As in SD 1.5's tokenizer/ folder: CLIP has no separate pad or unk token.
    return {"bos_token": _token(BOS), "eos_token": _token(EOS), "pad_token": EOS,
            "unk_token": _token(EOS)}


def tokenizer_config() -> dict:
    return {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_token(BOS)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_token(EOS)},
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_token(EOS)},
    }


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def licence(origin: str, sha256: str) -> str:
    return f"""\
vocab.json and merges.txt in this folder are derived from CLIP's byte-pair-encoding
vocabulary `{GZ_NAME}`
(sha256 {sha256})
by scripts/build_clip_tokenizer.py, reading {origin}
(the project takes it from the open-clip-torch 3.3.0 wheel on PyPI).
The same file ships with OpenAI's CLIP (https://github.com/openai/CLIP) and with open_clip
(https://github.com/mlfoundations/open_clip), both under the MIT licence below.

MIT License

Copyright (c) 2021 OpenAI
Copyright (c) 2012-2021 Gabriel Ilharco, Mitchell Wortsman, Nicholas Carlini, Rohan Taori,
Achal Dave, Vaishaal Shankar, John Miller, Hongseok Namkoong, Hannaneh Hajishirzi, Ali Farhadi,
Ludwig Schmidt

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help=f"open-clip-torch wheel or {GZ_NAME}")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    out = build(args.source, args.out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
