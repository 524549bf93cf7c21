"""Tasks: what a model learns from a batch and how it is judged. The loop is the same for all.

A task owns a model and everything specific to its objective; the loop, the sharding, the
optimizer and the checkpoints never look inside:

    Task.from_config(config)                     -> task          (config.task names the class)
    task.example_batch(config, batch_size)       -> {name: ShapeDtypeStruct}   (init, compilation)
    task.train_preprocess(data, config)          -> per-example (example, rng) -> arrays
    task.init(rng, batch)                        -> params
    task.loss(params, batch, rng, train=True)    -> (loss [], metrics {name: []})
    task.evaluate(params, data, config, split)   -> {metric: float}  (+ details for the report)
    task.report(workdir, results, details, config)  results table, results.json, example plots

A new objective (image-text matching, captioning, VQA) is a new task class, not a new trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import ContrastivePreprocess
from mmjax.evaluation.clip_eval import evaluate_clip, write_artifacts
from mmjax.losses import sharded_clip_loss
from mmjax.models.clip import CLIP, build_clip

Array = jax.Array


def normalize_images(images: Array) -> Array:
    """uint8 [batch, H, W, 3] in 0..255 -> float32 in [-1, 1].

    Done on the device inside the compiled step: the host ships 1 byte per pixel instead of 4.
    """
    return images.astype(jnp.float32) / 127.5 - 1.0


def check_vocabulary_sizes(data: Any, config: Any, model_vocab_size: int, field: str,
                           extra_ids: int = 0) -> None:
    """The model's token table must hold every id the pipeline emits (JAX clamps an id past
    the end of a table silently instead of failing), and its answer head every answer class."""
    needed = data.tokenizer.vocab_size + extra_ids
    if model_vocab_size < needed:
        why = f" ({data.tokenizer.vocab_size} tokenizer pieces + {extra_ids} [MASK])" if extra_ids else ""
        raise ValueError(
            f"the pipeline emits {needed} token ids{why} but config.{field} is "
            f"{model_vocab_size}: raise it to at least {needed}"
        )
    num_answers = config.model.get("num_answers")
    if num_answers is not None and num_answers < len(data.answer_vocabulary()):
        raise ValueError(
            f"the training answers have {len(data.answer_vocabulary())} classes but "
            f"config.model.num_answers is {num_answers}: raise it"
        )


@dataclasses.dataclass(frozen=True)
class ContrastiveTask:
    """Dual-encoder training: CLIP's softmax loss or SigLIP's sigmoid loss over the global batch.

    Batch: {"images": uint8 [batch, H, W, 3], "token_ids": int32 [batch, text_len]} where
    token_ids[i] is a caption of images[i].

    `config.contrastive_loss` names the loss function, (image_embeddings, text_embeddings,
    logit_scale[, logit_bias]) -> (loss, metrics); by default `sharded_clip_loss`, CLIP's loss
    over the batch of all devices. A loss with a `logit_bias` argument (`sharded_siglip_loss`,
    `siglip_loss`) needs the model's learnable bias, `config.model.logit_bias_init`.
    """

    model: CLIP
    contrastive_loss: Callable[..., tuple[Array, dict[str, Array]]] = sharded_clip_loss

    @classmethod
    def from_config(cls, config: Any) -> "ContrastiveTask":
        model = build_clip(config.model)
        contrastive_loss = config.get("contrastive_loss", sharded_clip_loss)
        # The bias is a parameter: a loss without it would leave it untrained, a loss that needs it
        # cannot run without it. Either mismatch is a config mistake, caught before compiling.
        takes_bias = "logit_bias" in inspect.signature(contrastive_loss).parameters
        has_bias = model.logit_bias_init is not None
        if takes_bias and not has_bias:
            raise ValueError(
                f"config.contrastive_loss = {contrastive_loss.__name__} uses a learnable logit bias but "
                "config.model.logit_bias_init is not set (SigLIP initialises it to -10)"
            )
        if has_bias and not takes_bias:
            raise ValueError(
                f"config.model.logit_bias_init is set but config.contrastive_loss = "
                f"{contrastive_loss.__name__} takes no logit bias: remove the field or use a sigmoid loss"
            )
        return cls(model, contrastive_loss)

    @staticmethod
    def example_batch(config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        size = config.data.image_size
        return {
            "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "token_ids": jax.ShapeDtypeStruct((batch_size, config.data.text_len), jnp.int32),
        }

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        check_vocabulary_sizes(data, config, config.model.text.vocab_size, "model.text.vocab_size")
        return ContrastivePreprocess(
            data.tokenizer, config.data.text_len, config.data.flip_probability, data.mirror_text
        )

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(rng, normalize_images(batch["images"]), batch["token_ids"])["params"]

    def loss(
        self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True
    ) -> tuple[Array, dict[str, Array]]:
        return self.loss_from_features(params, self.features(params, batch, rng, train))

    # The loss in two halves, so that gradient accumulation can be exact for a loss that couples
    # every example with every other (see mmjax.training.step.loss_and_grads).
    def features(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True) -> dict[str, Array]:
        """The per-example part: unit-norm embeddings {"image_embeddings", "text_embeddings"},
        each [batch, embed_dim]."""
        out = self.model.apply(
            {"params": params},
            normalize_images(batch["images"]),
            batch["token_ids"],
            deterministic=not train,
            rngs={"dropout": rng},
        )
        return {name: out[name] for name in ("image_embeddings", "text_embeddings")}

    def loss_from_features(self, params: Any, features: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        """The batch part: the contrastive loss of the embeddings of the whole (global) batch."""
        # The learnable scalars go to the loss (SigLIP's bias only when the model has one) and are logged.
        scalars = self.model.apply({"params": params}, method=CLIP.logit_scalars)
        loss, metrics = self.contrastive_loss(features["image_embeddings"], features["text_embeddings"], **scalars)
        return loss, {**metrics, **scalars}

    def encode_images(self, params: Any, images: Array) -> Array:
        """uint8 images [batch, H, W, 3] -> unit-norm embeddings [batch, embed_dim]."""
        return self.model.apply({"params": params}, normalize_images(images), method=CLIP.encode_image)

    def encode_texts(self, params: Any, token_ids: Array) -> Array:
        """token ids [batch, text_len] -> unit-norm embeddings [batch, embed_dim]."""
        return self.model.apply({"params": params}, token_ids, method=CLIP.encode_text)

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """Retrieval recall@K both ways (hit = same scene) and zero-shot accuracy on `split`."""
        return evaluate_clip(self, params, data, config, split=split, return_details=return_details)

    @staticmethod
    def report(workdir: str, results: dict, details: dict, config: Any) -> None:
        write_artifacts(workdir, results, details, config)
