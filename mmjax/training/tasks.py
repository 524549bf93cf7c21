"""Tasks: what a model learns from a batch. The training loop is the same for every task.

A task owns a model and turns a batch into a scalar loss and a dict of metrics:

    task.init(rng, batch)                      -> params
    task.loss(params, batch, rng, train=True)  -> (loss [], metrics {name: []})

The loop, the sharding, the optimizer and the checkpoints never look inside. A new objective
(image-text matching, captioning, VQA) is a new task, not a new trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.losses import clip_loss
from mmjax.models.clip import CLIP

Array = jax.Array


def normalize_images(images: Array) -> Array:
    """uint8 [batch, H, W, 3] in 0..255 -> float32 in [-1, 1].

    Done on the device inside the compiled step: the host ships 1 byte per pixel instead of 4.
    """
    return images.astype(jnp.float32) / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class ContrastiveTask:
    """CLIP training: a dual encoder and the symmetric InfoNCE loss.

    Batch: {"images": uint8 [batch, H, W, 3], "token_ids": int32 [batch, text_len]} where
    token_ids[i] is a caption of images[i].
    """

    model: CLIP

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(rng, normalize_images(batch["images"]), batch["token_ids"])["params"]

    def loss(
        self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True
    ) -> tuple[Array, dict[str, Array]]:
        out = self.model.apply(
            {"params": params},
            normalize_images(batch["images"]),
            batch["token_ids"],
            deterministic=not train,
            rngs={"dropout": rng},
        )
        loss, metrics = clip_loss(out["image_embeddings"], out["text_embeddings"], out["logit_scale"])
        metrics["logit_scale"] = out["logit_scale"]
        return loss, metrics

    def encode_images(self, params: Any, images: Array) -> Array:
        """uint8 images [batch, H, W, 3] -> unit-norm embeddings [batch, embed_dim]."""
        return self.model.apply({"params": params}, normalize_images(images), method=CLIP.encode_image)

    def encode_texts(self, params: Any, token_ids: Array) -> Array:
        """token ids [batch, text_len] -> unit-norm embeddings [batch, embed_dim]."""
        return self.model.apply({"params": params}, token_ids, method=CLIP.encode_text)
