"""Open-vocabulary detection as a task: OWL-ViT's detector trained with DETR's set loss.

    outputs = detector(images, query_ids)        boxes [B, N, 4], logits [B, N, Q]
    loss    = detection_set_loss(outputs, boxes, box_queries, box_valid, query_valid)

Batch (from `mmjax.data.detection.DetectionPreprocess`): images uint8 [B, H, W, 3], query_ids
int32 [B, Q, L], query_valid bool [B, Q], boxes float32 [B, T, 4] (cx, cy, w, h), box_queries
int32 [B, T], box_valid bool [B, T].

The text tower is usually frozen (`config.freeze`): the queries' embeddings then stay where the
CLIP run put them, for the phrases seen in training and for the held-out ones alike, and the
image side learns to meet them there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import shapes
from mmjax.data.detection import DetectionPreprocess, training_class_ids
from mmjax.evaluation.detection_eval import evaluate_detection, write_detection_report
from mmjax.losses import DetectionLossWeights, detection_set_loss
from mmjax.models.detection import build_detector
from mmjax.training.tasks import check_vocabulary_sizes, normalize_images

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DetectionTask:
    """Detection of text-named objects. `model` is an `OpenVocabularyDetector`."""

    model: Any
    weights: DetectionLossWeights = DetectionLossWeights()
    # The set loss normalises by the boxes of the whole batch, not a mean of per-example terms.
    per_example_loss: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Any) -> "DetectionTask":
        weights = DetectionLossWeights(**dict(config.get("detection_loss", {})))
        return cls(build_detector(config.model), weights)

    @staticmethod
    def example_batch(config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        size, data = config.data.image_size, config.data
        return {
            "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "query_ids": jax.ShapeDtypeStruct((batch_size, data.num_queries, data.query_len), jnp.int32),
            "query_valid": jax.ShapeDtypeStruct((batch_size, data.num_queries), jnp.bool_),
            "boxes": jax.ShapeDtypeStruct((batch_size, data.max_boxes, 4), jnp.float32),
            "box_queries": jax.ShapeDtypeStruct((batch_size, data.max_boxes), jnp.int32),
            "box_valid": jax.ShapeDtypeStruct((batch_size, data.max_boxes), jnp.bool_),
        }

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        if data.name != "shapes":
            raise ValueError(f"detection trains on boxes, which only the shapes dataset has; "
                             f"config.data.name is {data.name!r}")
        check_vocabulary_sizes(data, config, config.model.text.vocab_size, "model.text.vocab_size")
        return DetectionPreprocess(
            data.tokenizer, shapes.class_names(), training_class_ids(shapes.ShapesConfig().heldout_pairs),
            config.data.max_boxes, config.data.num_queries, config.data.query_len,
            config.data.flip_probability,
        )

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(rng, normalize_images(batch["images"]), batch["query_ids"])["params"]

    def loss(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True) -> tuple[Array, dict[str, Array]]:
        out = self.model.apply({"params": params}, normalize_images(batch["images"]), batch["query_ids"],
                               not train, rngs={"dropout": rng})
        return detection_set_loss(out["logits"], out["boxes"], batch["boxes"], batch["box_queries"],
                                  batch["box_valid"], batch["query_valid"], self.weights)

    def detect_fn(self, params: Any) -> Callable:
        """A jitted (uint8 images [b, H, W, 3], query embeddings [Q, D]) -> (boxes [b, N, 4] cxcywh,
        scores [b, N, Q] = σ(logits))."""

        @jax.jit
        def detect(images, query_embeddings):
            out = self.model.apply({"params": params}, normalize_images(images), query_embeddings,
                                   method=type(self.model).detect)
            return out["boxes"], jax.nn.sigmoid(out["logits"])

        return detect

    def query_embeddings(self, params: Any, query_ids: np.ndarray) -> np.ndarray:
        """[Q, L] token ids -> [Q, D] unit-norm embeddings, with the trained text tower."""
        return np.asarray(jax.jit(lambda p, ids: self.model.apply(
            {"params": p}, ids, method=type(self.model).encode_queries))(params, query_ids))

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """COCO mAP on `split` against every class phrase; on the test split, also on
        `compositional_test` (`mmjax.evaluation.detection_eval`)."""
        return evaluate_detection(self, params, data, config, split, return_details)

    @staticmethod
    def report(workdir: str, results: dict, details: dict, config: Any) -> None:
        write_detection_report(workdir, results, details, config)
