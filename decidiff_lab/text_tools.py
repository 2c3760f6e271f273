"""The CLIP text side of a pipeline: tokens, embeddings, image-text similarity, cross-attention maps.

`token_table` shows the BPE pieces behind a prompt; `encode_text` gives the per-token states the
U-Net attends to and the pooled vector CLIP matches against images; `similarity_matrix` scores
images against captions with a CLIP model, and `placement_accuracy` whether it can tell where things
are; `CrossAttentionRecorder` captures, during generation, how much each image position of every
cross-attention (`attn2`) layer attends to each token (mean over layers, or layer by layer), and
`layer_attention_figure` draws the per-layer maps as a grid. `circular_padding` switches a model's
convolutions to wrap-around padding, to show that zero padding is all that tells a U-Net where the
borders are (its attention layers carry no positional encoding).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .shapes import POSITION_PHRASES, RELATIONS, make_caption, parse_caption, to_tensor


def token_table(tokenizer, text: str, truncation: bool = False) -> list[tuple[int, int, str]]:
    """(position, id, BPE piece) for every token of `text`, start and end tokens included.

    A piece ending in `</w>` closes a word; pieces without it continue into the next one.
    """
    ids = tokenizer(text, truncation=truncation).input_ids
    return list(zip(range(len(ids)), ids, tokenizer.convert_ids_to_tokens(ids)))


def word_pieces(tokenizer, text: str) -> list[str]:
    """The prompt's pieces without start/end tokens, `</w>` stripped: labels for attention maps."""
    return [piece.replace("</w>", "") for _, _, piece in token_table(tokenizer, text)[1:-1]]


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token states N x 77 x D, pooled N x D), padded to the 77-token window as SD does."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    out = text_encoder(ids.to(text_encoder.device))
    return out.last_hidden_state.float().cpu(), out.pooler_output.float().cpu()


@contextmanager
def captured_warnings(logger_name: str = "diffusers"):
    """Collect the messages a library logs (diffusers by default) in a list instead of stderr."""
    logger = logging.getLogger(logger_name)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    saved, logger.handlers = logger.handlers, [handler]
    try:
        yield messages
    finally:
        logger.handlers = saved


@torch.no_grad()
def similarity_matrix(clip, tokenizer, images, captions) -> np.ndarray:
    """Cosine similarity of every image (rows) with every caption (columns), CLIP's own embeddings.

    Images are uint8 N x H x W x 3, fed in [-1, 1] (as the nano CLIP was trained), resized to its input size.
    """
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(clip.device)
    pixels = to_tensor(images).to(clip.device)
    side = clip.config.vision_config.image_size
    if pixels.shape[-1] != side:  # e.g. 512-px images from a real pipeline, for the 64-px nano CLIP
        pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)
    # projected pooled states, spelled out: get_*_features changed return type in transformers 5
    image = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids).pooler_output), dim=-1)
    return (image @ text.T).float().cpu().numpy()


def placement_variants(caption: str) -> list[str]:
    """The captions that differ from `caption` only in where things are, `caption` first:
    the other four positions of a single object, the other three relations of a pair."""
    objects, position, relation = parse_caption(caption)
    if position:
        return [caption] + [make_caption(objects, position=p) for p in POSITION_PHRASES if p != position]
    return [caption] + [make_caption(objects, relation=r) for r in RELATIONS if r != relation]


def placement_accuracy(clip, tokenizer, images, captions) -> float:
    """How often CLIP ranks an image's own caption first among its `placement_variants`.

    Chance is 1/5 for single objects and 1/4 for pairs. A CLIP that scores at chance here has a
    text encoder blind to position words, and a U-Net trained on its frozen states cannot learn
    placement from them (measured on the nano models: see data/README.md).
    """
    hits = [similarity_matrix(clip, tokenizer, image[None], placement_variants(caption))[0].argmax() == 0
            for image, caption in zip(images, captions)]
    return float(np.mean(hits))


def matrix_figure(matrix, row_labels, column_labels, title: str = "", fmt: str = "{:.2f}"):
    """A labelled heat map with each value printed in its cell."""
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(2.6 + 0.8 * matrix.shape[1], 1.6 + 0.45 * matrix.shape[0]))
    ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(matrix.shape[1]), column_labels, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(matrix.shape[0]), row_labels, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        bright = value > (matrix.min() + matrix.max()) / 2
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


class _RecordingProcessor:
    """Computes the layer's attention probabilities for the recorder, then runs the original processor."""

    def __init__(self, original, recorder: "CrossAttentionRecorder", name: str = ""):
        self.original, self.recorder, self.name = original, recorder, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if encoder_hidden_states is not None:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(query, key, None)  # (batch * heads) x positions x tokens
            self.recorder.add(probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(1), self.name)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


class NothingRecordedError(UserError, RuntimeError):
    """`CrossAttentionRecorder.maps` before any pipeline call ran inside its `with` block (a
    `UserError`, and a `RuntimeError` as it was before errors had one type)."""


class CrossAttentionRecorder:
    """Context manager: record every cross-attention (`attn2`) layer's attention maps during generation.

    Averaged over heads as they arrive, then over layers and steps by `maps()`, or over steps only,
    one map per layer, by `layer_maps()`. With classifier-free
    guidance (`cfg=True`) the pipeline's batch is [unconditional, conditional]: only the conditional
    half is kept. The U-Net's original processors are restored on exit, even after an error.
    """

    def __init__(self, unet, cfg: bool = True):
        self.unet, self.cfg = unet, cfg
        self.sums: dict[int, torch.Tensor] = {}  # side -> sum of N x tokens x side x side maps
        self.layer_sums: dict[str, torch.Tensor] = {}  # layer name -> the same, per layer
        self.layer_calls: dict[str, int] = {}
        self.calls = 0

    def __enter__(self):
        self.original = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({name: _RecordingProcessor(p, self, name.removesuffix(".processor"))
                                      if ".attn2." in name else p
                                      for name, p in self.original.items()})
        return self

    def __exit__(self, *exc):
        self.unet.set_attn_processor(dict(self.original))
        return False

    def add(self, probs: torch.Tensor, layer: str = "") -> None:
        """probs: batch x positions x tokens, one call of the layer named `layer` (averaged over heads)."""
        if self.cfg:
            probs = probs[probs.shape[0] // 2:]
        side = math.isqrt(probs.shape[1])
        if side * side != probs.shape[1]:
            raise UserError(f"{probs.shape[1]} positions: the recorder expects square latents")
        maps = probs.float().transpose(1, 2).reshape(probs.shape[0], probs.shape[2], side, side).cpu()
        self.sums[side] = self.sums.get(side, 0) + maps
        self.layer_sums[layer] = self.layer_sums.get(layer, 0) + maps
        self.layer_calls[layer] = self.layer_calls.get(layer, 0) + 1
        self.calls += 1

    @property
    def sides(self) -> list[int]:
        """Latent resolutions at which cross-attention ran (e.g. [2, 4] on nano-deci)."""
        return sorted(self.sums)

    def maps(self, size: int) -> torch.Tensor:
        """N x tokens x size x size: the mean over every recorded layer call, bilinearly resized."""
        if not self.calls:
            raise NothingRecordedError("nothing recorded: run the pipeline inside the `with` block")
        total = sum(F.interpolate(s, size=(size, size), mode="bilinear", align_corners=False)
                    for s in self.sums.values())
        return total / self.calls

    def layer_maps(self, side: int | None = None) -> dict[str, torch.Tensor]:
        """Layer name (e.g. `down_blocks.0.attentions.1.transformer_blocks.0.attn2`) -> its
        N x tokens x s x s maps averaged over the steps, in the U-Net's call order; only the layers
        at latent resolution `side` if given."""
        if not self.calls:
            raise NothingRecordedError("nothing recorded: run the pipeline inside the `with` block")
        if side is not None and side not in self.sums:
            raise UserError(f"no cross-attention at {side}x{side}: recorded at {self.sides}")
        return {name: total / self.layer_calls[name] for name, total in self.layer_sums.items()
                if side is None or total.shape[-1] == side}


def layer_attention_figure(image, layer_maps: dict, labels, size: float = 1.1, title: str | None = None):
    """Rows = layers, columns = tokens: each layer's map (tokens x s x s, one per label) over `image`."""
    import matplotlib.pyplot as plt

    if not layer_maps:
        raise UserError("no layer maps to draw")
    image = np.asarray(image)
    extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
    rows, columns = len(layer_maps), len(labels)
    fig, axes = plt.subplots(rows, columns + 1, figsize=(size * (columns + 1) + 1.6, size * rows + 0.6),
                             squeeze=False)
    for row, (name, maps) in zip(axes, layer_maps.items()):
        row[0].imshow(image, interpolation="nearest")
        short = name.removesuffix(".attn2").removesuffix(".transformer_blocks.0")
        row[0].set_ylabel(short, fontsize=6, rotation=0, ha="right", va="center")
        for ax, heat in zip(row[1:], np.asarray(maps)):
            ax.imshow(image, interpolation="nearest", alpha=0.5)
            ax.imshow(heat, cmap="jet", alpha=0.55, extent=extent, interpolation="nearest")
    for ax, label in zip(axes[0], ["image"] + list(labels)):
        ax.set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@contextmanager
def circular_padding(model: torch.nn.Module):
    """Inside the block, every zero-padded `Conv2d` of `model` pads by wrapping around instead, so no
    layer can tell a border from the middle; restored on exit, even after an error."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros"
             and not isinstance(m.padding, str) and any(m.padding)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no zero-padded Conv2d to switch")
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield len(convs)
    finally:
        for conv in convs:
            conv.padding_mode = "zeros"


def attention_figure(image, maps, labels, size: float = 1.5, title: str | None = None):
    """The image, then one panel per token: its attention map (N x size x size) over the image."""
    import matplotlib.pyplot as plt

    image, maps = np.asarray(image), np.asarray(maps)
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(size * (len(labels) + 1), size + 0.5), squeeze=False)
    axes[0, 0].imshow(image, interpolation="nearest")
    axes[0, 0].set_title("image", fontsize=8)
    extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
    for ax, heat, label in zip(axes[0, 1:], maps, labels):
        ax.imshow(image, interpolation="nearest", alpha=0.5)
        ax.imshow(heat, cmap="jet", alpha=0.55, extent=extent, interpolation="bilinear")
        ax.set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
