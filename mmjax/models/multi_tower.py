"""One embedding space for several modalities: a tower per modality, a contrastive loss per pair.

    e_m = normalize(W_m · tower_m(x_m).pooled)              [batch, embed_dim] for each modality m
    L   = 1/|P| Σ_{(a, b) ∈ P} InfoNCE(e_a, e_b; scale_ab)    P: the trained pairs

This is CLIP (`mmjax.models.clip`) with any number of towers: VATT (Akbari et al., 2021) trains
video, audio and text this way, and ImageBind (Girdhar et al., 2023) binds six modalities by
pairing each with images only. Each trained pair has its own learned temperature: pairs differ in
how sharply they can be told apart (a caption names colours that a sound cannot carry).

A pair left out of P still gets an embedding for both sides, and their retrieval can be measured:
when video↔text and audio↔text are trained, video and audio meet only through text. ImageBind's
finding is that such pairs align anyway ("emergent alignment"); the three-way config measures it
here, with and without the video-audio pair in the loss.
"""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.clip import PROJECTION_INIT, l2_normalize

Array = jax.Array


def pair_name(pair: tuple[str, str]) -> str:
    """("video", "text") -> "video_text"."""
    return f"{pair[0]}_{pair[1]}"


class MultiTowerCLIP(nn.Module):
    """Towers `encoders[m]` (each returning {"pooled": [batch, width]}) and their projections.

    `__call__(inputs)` maps {modality: array} to {f"{modality}_embeddings": [batch, embed_dim]},
    unit norm, float32, for the modalities present in `inputs`.

    Attributes:
      encoders: modality name -> tower, e.g. {"video": VideoTransformer, "text": TextTransformer}.
      embed_dim: width of the shared space.
      pairs: the trained pairs; each owns a temperature t (scale = exp(t), clamped to 100).
    """

    encoders: dict[str, nn.Module]
    embed_dim: int
    pairs: tuple[tuple[str, str], ...]
    logit_scale_init: float = float(np.log(1 / 0.07))
    max_logit_scale: float = 100.0

    def setup(self):
        self.projections = {
            m: nn.Dense(self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT) for m in self.encoders
        }
        self.log_logit_scales = {
            pair_name(p): self.param(f"logit_scale_{pair_name(p)}", nn.initializers.constant(self.logit_scale_init), ())
            for p in self.pairs
        }

    def encode(self, modality: str, x: Array, deterministic: bool = True) -> Array:
        """One modality's input [batch, ...] -> unit-norm embeddings [batch, embed_dim]."""
        pooled = self.encoders[modality](x, deterministic=deterministic)["pooled"]
        return l2_normalize(self.projections[modality](pooled))

    def __call__(self, inputs: dict[str, Array], deterministic: bool = True) -> dict[str, Array]:
        return {f"{m}_embeddings": self.encode(m, x, deterministic) for m, x in inputs.items()}

    def logit_scales(self) -> dict[str, Array]:
        """{"video_text": scale, ...}: exp(t) of each trained pair, clamped to max_logit_scale."""
        return {name: jnp.minimum(jnp.exp(t), self.max_logit_scale) for name, t in self.log_logit_scales.items()}


def all_pairs(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every unordered pair, in the order given: ("video", "audio", "text") -> vv-aa, v-t, a-t."""
    return list(itertools.combinations(modalities, 2))


def check_pairs(pairs: Any, modalities: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`pairs` as a tuple of 2-tuples of known, distinct modalities (clear errors otherwise)."""
    checked = []
    for pair in pairs:
        pair = tuple(pair)
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(modalities):
            raise ValueError(f"config.model.pairs: each pair must name two different modalities of "
                             f"{modalities}; got {pair!r}")
        checked.append(pair)
    if not checked:
        raise ValueError("config.model.pairs is empty: name at least one pair to train, e.g. (('video', 'text'),)")
    return tuple(checked)
