"""Toy sizes shared by the tests and by conftest.py's fixtures (a plain module: conftest.py is never imported)."""

from decidiff_lab.architectures import flexible_config

TEXT_DIM = 16  # the tiny text encoder's width, and the tiny U-Nets' cross-attention width


def tiny_flexible_config(**overrides):
    kwargs = dict(
        channels=(32, 64), down_resnets=(1, 1), down_attentions=(1, 0), up_attentions=(0, 1),
        num_attention_heads=2, cross_attention_dim=TEXT_DIM, sample_size=8,
        stem_channels=32, norm_num_groups=8,
    )
    kwargs.update(overrides)
    return flexible_config(**kwargs)
