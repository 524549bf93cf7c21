"""VQA as answer classification, for any model with an `answer_logits` method.

    logits = model.answer_logits(image, question_ids)             [batch, num_answers]
    loss   = -1/B Σ_b log softmax(logits_b)[answer_b]

The same task trains every fusion family on the same questions, so their accuracies compare the
place where image and text meet and nothing else:

    late fusion   LateFusionClassifier   pooled image ⊕ pooled question -> MLP
    mid fusion    MidFusion              question tokens cross-attend to image tokens
    early fusion  EarlyFusion            one transformer over [CLS; patches; question]

`config.build_model` names the builder of the model from `config.model`
(`build_late_fusion_classifier`, `build_mid_fusion`, `build_early_fusion`).

Batch: {"images": uint8 [B, H, W, 3], "question_ids": int32 [B, question_len],
        "answer": int32 [B] (index into the answer vocabulary), "question_type": int32 [B]}.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import VqaPreprocess
from mmjax.evaluation.vqa_eval import evaluate_vqa, write_vqa_report
from mmjax.losses import masked_softmax_cross_entropy
from mmjax.training.tasks import check_vocabulary_sizes, normalize_images

Array = jax.Array


def model_text_vocab_size(model_config: Any) -> tuple[int, str]:
    """The model's token table size and the config field that sets it."""
    if "text" in model_config:
        return model_config.text.vocab_size, "model.text.vocab_size"
    return model_config.vocab_size, "model.vocab_size"


@dataclasses.dataclass(frozen=True)
class VqaTask:
    """Answer classification. `model` has `answer_logits(images, question_ids, deterministic)`."""

    model: Any
    label_smoothing: float = 0.0
    # The loss is a mean over examples, so gradients can be accumulated over microbatches.
    per_example_loss: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: Any) -> "VqaTask":
        if "build_model" not in config or not callable(config.build_model):
            raise ValueError(
                "config.build_model must name the model builder, e.g. "
                "`config.build_model = build_early_fusion` (from mmjax.models.fusion); "
                f"got {config.get('build_model')!r}"
            )
        return cls(config.build_model(config.model), config.get("label_smoothing", 0.0))

    @staticmethod
    def example_batch(config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        size = config.data.image_size
        return {
            "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "question_ids": jax.ShapeDtypeStruct((batch_size, config.data.question_len), jnp.int32),
            "answer": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "question_type": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        }

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        check_vocabulary_sizes(data, config, *model_text_vocab_size(config.model))
        return VqaPreprocess(
            data.tokenizer, config.data.question_len, data.answer_vocabulary(), data.question_types,
            config.data.flip_probability, data.mirror_text,
        )

    def _logits(self, params: Any, images: Array, question_ids: Array, train: bool = False,
                rng: Array | None = None) -> Array:
        return self.model.apply(
            {"params": params}, normalize_images(images), question_ids, not train,
            rngs={"dropout": rng} if rng is not None else {}, method=type(self.model).answer_logits,
        )

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(
            rng, normalize_images(batch["images"]), batch["question_ids"],
            method=type(self.model).answer_logits,
        )["params"]

    def loss(
        self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True
    ) -> tuple[Array, dict[str, Array]]:
        logits = self._logits(params, batch["images"], batch["question_ids"], train, rng)
        loss, metrics = masked_softmax_cross_entropy(
            logits, batch["answer"], jnp.ones(batch["answer"].shape), label_smoothing=self.label_smoothing
        )
        return loss, {"vqa_accuracy": metrics["accuracy"]}

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """VQA accuracy overall and per question type on every question of `split`."""
        predict = jax.jit(lambda p, images, ids: jnp.argmax(self._logits(p, images, ids), axis=-1))
        return evaluate_vqa(lambda images, ids: predict(params, images, ids), data, config, split,
                            data.answer_vocabulary(), return_details)

    @staticmethod
    def report(workdir: str, results: dict, details: dict, config: Any) -> None:
        write_vqa_report(workdir, results, details, config, details["answer_vocabulary"],
                         details["question_types"])
