"""ALBEF-style training of a mid-fusion model: four objectives on one batch, weights in the config.

    loss = w_itc · ITC + w_itm · ITM + w_mlm · MLM + w_vqa · VQA

    ITC  image-text contrastive: `clip_loss` on the towers' embeddings (align before fusing).
    ITM  image-text matching: the fusion stack and a binary head on B positive pairs, B (image,
         hard negative text) and B (hard negative image, text) pairs. The negatives are sampled
         from the contrastive similarities with every positive masked out
         (`losses.sample_itm_negatives`); positives are *scenes*, so two images of the same scene
         in a batch are never each other's negatives (`scene_id`).
    MLM  masked language modelling conditioned on the image: the caption with 15% of its tokens
         corrupted (80/10/10) is fused with the image and its masked tokens predicted.
    VQA  the question is fused with the image and its answer classified (`MidFusion.vqa_logits`).

One pass of the image tower serves all four; the text tower runs three times (caption, masked
caption, question) and the fusion stack five times the batch (3B ITM pairs, B MLM, B VQA).

Negatives across data shards: the step is one jit-compiled program over the *global* batch
(sharded over the mesh's `data` axis), so the similarity matrix the negatives are drawn from is
[global batch, global batch]; XLA inserts the all-gathers that ALBEF writes by hand.

Batch (from `VqaPreprocess(with_caption=True, with_mlm=True)`):
    images uint8 [B, H, W, 3]; token_ids, mlm_input_ids, mlm_targets int32 [B, text_len];
    mlm_mask bool [B, text_len]; scene_id int32 [B]; question_ids int32 [B, question_len];
    answer, question_type int32 [B].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import VqaPreprocess
from mmjax.evaluation.albef_eval import evaluate_matching, write_albef_report
from mmjax.evaluation.clip_eval import embed_split
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.vqa_eval import evaluate_vqa
from mmjax.losses import clip_loss, itm_loss, masked_softmax_cross_entropy, mlm_loss, sample_itm_negatives
from mmjax.models.fusion import MidFusion, build_mid_fusion, check_fields
from mmjax.training.tasks import check_vocabulary_sizes, normalize_images

Array = jax.Array

LOSS_NAMES = ("contrastive", "itm", "mlm", "vqa")


def albef_objectives(model: MidFusion, images: Array, token_ids: Array, scene_ids: Array,
                     mlm_input_ids: Array, question_ids: Array, rng: Array,
                     deterministic: bool) -> dict[str, Array]:
    """The four heads' inputs for one batch (called through `model.apply(..., method=...)`).

    Returns image/text embeddings [B, D], logit_scale [], itm_logits [3B, 2], itm_labels [3B],
    itm_weights [3B], mlm_logits [B, L, V], vqa_logits [B, A].
    """
    image = model.encode_image(images, deterministic)
    text = model.encode_text(token_ids, deterministic)
    logit_scale = model.logit_scale()

    # ITM: one negative text per image, one negative image per text, from the similarities.
    similarity = logit_scale * image["embedding"] @ text["embedding"].T
    negatives = sample_itm_negatives(rng, similarity, scene_ids[:, None] == scene_ids[None, :])
    neg_text, neg_image = negatives.negative_text_for_image, negatives.negative_image_for_text
    batch = images.shape[0]
    fused = model.fuse(
        jnp.concatenate([text["tokens"], text["tokens"][neg_text], text["tokens"]]),
        jnp.concatenate([text["mask"], text["mask"][neg_text], text["mask"]]),
        jnp.concatenate([image["tokens"], image["tokens"], image["tokens"][neg_image]]),
        deterministic,
    )
    itm_labels = jnp.concatenate([jnp.ones(batch, jnp.int32), jnp.zeros(2 * batch, jnp.int32)])
    itm_weights = jnp.concatenate(
        [jnp.ones(batch), negatives.image_has_negative, negatives.text_has_negative]
    ).astype(jnp.float32)

    # MLM: the corrupted caption reads the image.
    masked = model.encode_text(mlm_input_ids, deterministic)
    mlm_logits = model.mlm_logits(model.fuse(masked["tokens"], masked["mask"], image["tokens"], deterministic))

    # VQA: the question reads the image.
    question = model.encode_text(question_ids, deterministic)
    vqa_logits = model.vqa_logits(model.fuse(question["tokens"], question["mask"], image["tokens"], deterministic))
    return {
        "image_embeddings": image["embedding"], "text_embeddings": text["embedding"],
        "logit_scale": logit_scale, "itm_logits": model.itm_logits(fused), "itm_labels": itm_labels,
        "itm_weights": itm_weights, "mlm_logits": mlm_logits, "vqa_logits": vqa_logits,
    }


def _match_probability(model: MidFusion, text_tokens: Array, text_mask: Array, image_tokens: Array) -> Array:
    """p(match) [b] of pairs given the towers' outputs: fusion stack + ITM head only."""
    logits = model.itm_logits(model.fuse(text_tokens, text_mask, image_tokens))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]


@dataclasses.dataclass(frozen=True)
class AlbefTask:
    """Mid fusion trained with ITC + ITM + MLM + VQA (see the module docstring)."""

    model: MidFusion
    loss_weights: tuple[tuple[str, float], ...] = tuple((name, 1.0) for name in LOSS_NAMES)

    @classmethod
    def from_config(cls, config: Any) -> "AlbefTask":
        weights = dict(config.get("loss_weights", {}))
        check_fields("loss_weights", weights, LOSS_NAMES)
        weights = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}
        return cls(build_mid_fusion(config.model), tuple(weights.items()))

    @staticmethod
    def example_batch(config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        size, text_len, question_len = config.data.image_size, config.data.text_len, config.data.question_len
        ids = lambda length: jax.ShapeDtypeStruct((batch_size, length), jnp.int32)  # noqa: E731
        scalar = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        return {
            "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "token_ids": ids(text_len), "mlm_input_ids": ids(text_len), "mlm_targets": ids(text_len),
            "mlm_mask": jax.ShapeDtypeStruct((batch_size, text_len), jnp.bool_),
            "scene_id": scalar, "question_ids": ids(question_len), "answer": scalar, "question_type": scalar,
        }

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        # MLM's [MASK] is the id after the tokenizer's last.
        check_vocabulary_sizes(data, config, config.model.text.vocab_size, "model.text.vocab_size", extra_ids=1)
        return VqaPreprocess(
            data.tokenizer, config.data.question_len, data.answer_vocabulary(), data.question_types,
            config.data.flip_probability, data.mirror_text,
            text_len=config.data.text_len, with_caption=True, with_mlm=True,
        )

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(rng, normalize_images(batch["images"]), batch["token_ids"])["params"]

    def loss(
        self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True
    ) -> tuple[Array, dict[str, Array]]:
        dropout_rng, negatives_rng = jax.random.split(rng)
        out = self.model.apply(
            {"params": params}, normalize_images(batch["images"]), batch["token_ids"], batch["scene_id"],
            batch["mlm_input_ids"], batch["question_ids"], negatives_rng, not train,
            rngs={"dropout": dropout_rng}, method=albef_objectives,
        )
        losses, metrics = {}, {"logit_scale": out["logit_scale"]}
        losses["contrastive"], itc = clip_loss(out["image_embeddings"], out["text_embeddings"], out["logit_scale"])
        losses["itm"], itm = itm_loss(out["itm_logits"], out["itm_labels"], out["itm_weights"])
        losses["mlm"], mlm = mlm_loss(out["mlm_logits"], batch["mlm_targets"], batch["mlm_mask"])
        losses["vqa"], vqa = masked_softmax_cross_entropy(
            out["vqa_logits"], batch["answer"], jnp.ones(batch["answer"].shape)
        )
        metrics.update({f"loss_{name}": value for name, value in losses.items()})
        metrics.update(itm_accuracy=itm["accuracy"], mlm_accuracy=mlm["accuracy"], vqa_accuracy=vqa["accuracy"])
        metrics.update({f"itc_{k}": v for k, v in itc.items() if jnp.ndim(v) == 0})
        total = sum(weight * losses[name] for name, weight in self.loss_weights)
        return total, metrics

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """Contrastive and ITM-re-ranked retrieval, ITM accuracy and VQA accuracy on `split`."""
        apply = lambda method: jax.jit(  # noqa: E731
            lambda p, *args: self.model.apply({"params": p}, *args, method=method))
        image_fn = apply(lambda m, images: m.encode_image(normalize_images(images)))
        text_fn = apply(lambda m, ids: m.encode_text(ids))
        match = apply(_match_probability)
        answer = apply(lambda m, images, ids: jnp.argmax(m.answer_logits(normalize_images(images), ids), -1))

        embedded = embed_split(
            lambda images: image_fn(params, images)["embedding"],
            lambda ids: text_fn(params, ids)["embedding"],
            data.split(split), data.tokenizer, config.data.text_len,
            batch_size=config.eval.batch_size, num_threads=config.data.num_threads,
        )
        tokens = lambda out: {k: out[k] for k in ("tokens", "mask") if k in out}  # noqa: E731
        image_tokens = batched_apply(lambda x: tokens(image_fn(params, x)), embedded["images"],
                                     batch_size=config.eval.batch_size)
        text_tokens = batched_apply(lambda x: tokens(text_fn(params, x)), embedded["token_ids"],
                                    batch_size=config.eval.batch_size)
        results = evaluate_matching(embedded, image_tokens, text_tokens,
                                    lambda t, m, i: match(params, t, m, i),
                                    batch_size=4 * config.eval.batch_size, rerank_k=config.eval.rerank_k)
        results.update(evaluate_vqa(lambda images, ids: answer(params, images, ids), data, config, split,
                                    data.answer_vocabulary()))
        results = {k: float(v) for k, v in results.items()}
        details = {"question_types": data.question_types}
        return (results, details) if return_details else results

    @staticmethod
    def report(workdir: str, results: dict, details: dict, config: Any) -> None:
        write_albef_report(workdir, results, config, details["question_types"])
