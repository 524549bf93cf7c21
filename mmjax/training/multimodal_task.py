"""Contrastive training of several towers at once: video-text, audio-text, or all three.

    e_m = MultiTowerCLIP.encode(m, x_m)                       [batch, embed_dim] per modality m
    L   = 1/|P| Σ_{(a, b) ∈ P} CLIP_loss(e_a, e_b, scale_ab)   over the global batch

Batch (the media of the world; `config.model.modalities` says which are read):
    {"video": uint8 [batch, T, S, S, 3], "audio": int16 [batch, samples], "token_ids": int32 [batch, text_len]}
Both media are turned into floats on the device, in the compiled step (images: [-1, 1]; audio
samples / 32768), so the host ships them in their stored width.

Configs name the towers directly:
    config.model.modalities = ("video", "audio", "text")
    config.model.towers = {"video": dict(module=VideoTransformer, ...), "audio": ..., "text": ...}
    config.model.pairs = (("video", "text"), ("audio", "text"))    the pairs in the loss
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.data.pipeline import MediaContrastivePreprocess
from mmjax.data.prepare import media_sample_rate, media_shapes
from mmjax.evaluation.multimodal_eval import evaluate_multimodal, write_multimodal_report
from mmjax.losses import sharded_clip_loss
from mmjax.models.multi_tower import MultiTowerCLIP, check_pairs, pair_name
from mmjax.training.tasks import check_vocabulary_sizes, normalize_images

Array = jax.Array
MODALITIES = ("video", "audio", "text")
# What each modality reads from the batch.
BATCH_FIELDS = {"video": "video", "audio": "audio", "text": "token_ids"}


def to_model_inputs(modality: str, x: Array) -> Array:
    """A batch field as the tower reads it: uint8 video -> [-1, 1], int16 audio -> [-1, 1), ids unchanged."""
    if modality == "video":
        return normalize_images(x)
    if modality == "audio":
        return x.astype(jnp.float32) / 32768.0
    return x


def build_multi_tower(model_config: Any) -> MultiTowerCLIP:
    """MultiTowerCLIP from config.model: modalities, towers (each `module` + its fields), pairs, embed_dim."""
    modalities = tuple(model_config.modalities)
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or "text" not in modalities or len(modalities) < 2:
        raise ValueError(f"config.model.modalities must be text and one or more of ('video', 'audio'); "
                         f"got {modalities!r}")
    encoders = {}
    for modality in modalities:
        if modality not in model_config.towers:
            raise ValueError(f"config.model.towers has no {modality!r} tower; it has {sorted(model_config.towers)}")
        fields = dict(model_config.towers[modality])
        module = fields.pop("module", None)
        if module is None:
            raise ValueError(f"config.model.towers.{modality} needs `module` (the tower's class, e.g. VideoTransformer)")
        known = {f.name for f in dataclasses.fields(module)} - {"parent", "name"}
        typos = sorted(set(fields) - known)
        if typos:
            raise ValueError(f"config.model.towers.{modality} has unknown field(s) {typos}; "
                             f"{module.__name__} accepts {sorted(known)}")
        encoders[modality] = module(**fields)
    pairs = check_pairs(model_config.pairs, modalities)
    return MultiTowerCLIP(encoders=encoders, embed_dim=model_config.embed_dim, pairs=pairs)


@dataclasses.dataclass(frozen=True)
class MultiModalContrastiveTask:
    """Pairwise InfoNCE between the towers of `MultiTowerCLIP` (see the module docstring)."""

    model: MultiTowerCLIP
    modalities: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any) -> "MultiModalContrastiveTask":
        return cls(build_multi_tower(config.model), tuple(config.model.modalities))

    @property
    def media(self) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m != "text")

    def example_batch(self, config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        shapes = media_shapes(config.data)
        missing = sorted(set(self.media) - set(shapes))
        if missing:
            raise ValueError(f"config.model.modalities asks for {missing} but dataset {config.data.name!r} "
                             f"has only {sorted(shapes)}")
        if "audio" in self.media:
            # A spectrogram at the wrong rate puts every pitch in the wrong mel filters.
            tower_rate = self.model.encoders["audio"].spectrogram.sample_rate
            data_rate = media_sample_rate(config.data)
            if tower_rate != data_rate:
                raise ValueError(f"the {config.data.name} clips are sampled at {data_rate} Hz but the audio tower's "
                                 f"spectrogram expects {tower_rate} Hz: make config.data.sample_rate and "
                                 "config.model.towers.audio.spectrogram.sample_rate agree")
        dtypes = {"video": jnp.uint8, "audio": jnp.int16}
        batch = {m: jax.ShapeDtypeStruct((batch_size, *shapes[m]), dtypes[m]) for m in self.media}
        batch["token_ids"] = jax.ShapeDtypeStruct((batch_size, config.data.text_len), jnp.int32)
        return batch

    def train_preprocess(self, data: Any, config: Any):
        check_vocabulary_sizes(data, config, config.model.towers.text.vocab_size, "model.towers.text.vocab_size")
        return MediaContrastivePreprocess(data.tokenizer, config.data.text_len, self.media,
                                          config.data.get("flip_probability", 0.0), data.mirror_text)

    def _inputs(self, batch: dict[str, Array]) -> dict[str, Array]:
        return {m: to_model_inputs(m, batch[BATCH_FIELDS[m]]) for m in self.modalities}

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(rng, self._inputs(batch))["params"]

    def encode(self, params: Any, modality: str, x: Array) -> Array:
        """One modality's batch field (uint8 video, int16 audio or token ids) -> [batch, embed_dim]."""
        return self.model.apply({"params": params}, modality, to_model_inputs(modality, x),
                                method=MultiTowerCLIP.encode)

    def loss(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True):
        return self.loss_from_features(params, self.features(params, batch, rng, train))

    def features(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True) -> dict[str, Array]:
        """{f"{m}_embeddings": [batch, embed_dim]} for every modality (the per-example part)."""
        return self.model.apply({"params": params}, self._inputs(batch), deterministic=not train,
                                rngs={"dropout": rng})

    def loss_from_features(self, params: Any, features: dict[str, Array]):
        """The mean of the pairs' CLIP losses over the global batch; metrics per pair."""
        # --8<-- [start:pair_losses]
        scales = self.model.apply({"params": params}, method=MultiTowerCLIP.logit_scales)
        losses, metrics = [], {}
        for a, b in self.model.pairs:
            name = pair_name((a, b))
            loss, pair_metrics = sharded_clip_loss(features[f"{a}_embeddings"], features[f"{b}_embeddings"],
                                                   scales[name])
            losses.append(loss)
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_logit_scale"] = scales[name]
            metrics.update({f"{name}_{k}": v for k, v in pair_metrics.items()})
        return jnp.mean(jnp.stack(losses)), metrics
        # --8<-- [end:pair_losses]

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """Recall@K both ways for every pair of modalities, trained or not (`multimodal_eval`)."""
        return evaluate_multimodal(self, params, data, config, split=split, return_details=return_details)

    def report(self, workdir: str, results: dict, details: dict, config: Any) -> None:
        write_multimodal_report(workdir, results, details, config, self.modalities)

