"""What every benchmark measures on: a config by path, a random batch, and the step's FLOPs.

The batch is random (uint8 pixels, token ids ending in end-of-text and padded after it), so the
step benchmarks need no dataset and measure the model alone; `input_pipeline.py` measures the
loader separately.

FLOPs are counted two ways that must agree (see BENCHMARKS.md, "How FLOPs are counted"):

  analytic   2 FLOPs per multiply-add of every matmul, forward; a training step costs 3 x that
             (the backward pass computes the gradient with respect to both inputs of each matmul:
             2 x the forward), except the patch embedding, whose input (the pixels) needs no
             gradient: 2 x:
               per token and layer    2 · (4 w² + 2 w m)                   q, k, v, out; MLP in/out
               attention per layer    2 · 2 · s² · w  per example          Q·Kᵀ and A·V
               patch embedding        2 · p² · 3 · w  per patch
               projections            2 · w · d  per example and tower     pooled -> shared space
               loss                   2 · B · B · d                        the similarity matrix
  XLA        `compiled.cost_analysis()["flops"]` of the compiled train step: XLA's own count of
             every HLO operation, elementwise work included (what it counts for matmuls is
             2 · M · N · K, as above).

MFU = analytic FLOPs per step / step time / the measured matmul rate of `ceiling.py`: model FLOPs
only, so recomputation (remat) and elementwise work count as overhead, as in the PaLM paper's
definition.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, **overrides: Any):
    """`get_config()` of a config file (path relative to the repository root), with dotted
    overrides such as {"batch_size": 16, "data.image_size": 112}."""
    import jax.numpy as jnp

    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        # A tower's optional module fields (scan, remat, dtype, ...) may be absent from the file.
        if leaf not in node and parents[:1] != ["model"]:
            raise KeyError(f"override {key!r}: {path} has no field {leaf!r} there")
        # "bfloat16" on the command line names the dtype object a config file would hold.
        node[leaf] = jnp.dtype(value).type if leaf == "dtype" and isinstance(value, str) else value
    if "data.text_len" in overrides:
        config.model.text.max_len = config.data.text_len
    return config


def random_batch(config, batch_size: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A contrastive batch: images uint8 [B, H, W, 3]; token_ids int32 [B, L], each row
    random ids, then end-of-text (id 2), then padding (id 0), at a random length."""
    from mmjax.data.tokenizer import EOS_ID, PAD_ID

    rng = np.random.default_rng(seed)
    batch_size = batch_size or config.batch_size
    # The tokenizer and text-to-image configs have no text tower: the data's vocabulary is the same.
    vocab = config.model.text.vocab_size if "text" in config.model else config.data.vocab_size
    size, text_len = config.data.image_size, config.data.text_len
    images = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    tokens = rng.integers(3, vocab, (batch_size, text_len), dtype=np.int32)
    lengths = rng.integers(text_len // 4, text_len, batch_size)
    positions = np.arange(text_len)[None, :]
    tokens = np.where(positions == lengths[:, None], EOS_ID, tokens)
    tokens = np.where(positions > lengths[:, None], PAD_ID, tokens).astype(np.int32)
    return {"images": images, "token_ids": tokens}


def image_tokens(config) -> int:
    image = config.model.image
    return (config.data.image_size // image.patch_size) ** 2 + (image.get("pool", "token") == "token")


def patch_embedding_flops(config) -> float:
    """Forward FLOPs of one image's patch embedding: 2 · p² · 3 · w per patch."""
    image = config.model.image
    patches = (config.data.image_size // image.patch_size) ** 2
    return float(2 * image.patch_size ** 2 * 3 * image.width * patches)


def forward_flops_per_example(config) -> float:
    """Model FLOPs of one example's forward pass (matmuls only; see the module docstring)."""
    # --8<-- [start:forward_flops]
    image, text = config.model.image, config.model.text
    embed = config.model.embed_dim

    def tower(width: int, depth: int, mlp: int, tokens: int) -> float:
        per_token = 2 * (4 * width * width + 2 * width * mlp)
        attention = 2 * 2 * tokens * tokens * width
        return depth * (per_token * tokens + attention) + 2 * width * embed

    flops = tower(image.width, image.depth, image.mlp_dim, image_tokens(config))
    flops += patch_embedding_flops(config)
    flops += tower(text.width, text.depth, text.mlp_dim, config.data.text_len)
    # --8<-- [end:forward_flops]
    return float(flops)


def train_flops(config, batch_size: int | None = None) -> float:
    """Analytic FLOPs of one training step: 3 x forward (2 x for the patch embedding), plus the
    B x B similarity matrix of the loss (3 x 2·B·B·d). NaN for a model without a formula (not a
    dual encoder: a VQ-VAE's convolutions), whose benchmarks use XLA's count."""
    if not has_analytic_flops(config):
        return float("nan")
    batch_size = batch_size or config.batch_size
    loss = 2 * batch_size * batch_size * config.model.embed_dim
    forward = batch_size * forward_flops_per_example(config) + loss
    return 3.0 * forward - batch_size * patch_embedding_flops(config)


def time_steps(step: Callable[[], float], steps: int, warmup: int, what: str) -> list[float]:
    """Seconds of each of `steps` calls of `step` after `warmup` untimed ones. `step` runs one
    train step to completion and returns its loss, which must end finite."""
    times, loss = [], float("nan")
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not np.isfinite(loss):
        raise RuntimeError(f"{what}: the benchmarked step gave a non-finite loss")
    return times


def has_analytic_flops(config) -> bool:
    """Whether `train_flops` has a formula for the config's model: a dual encoder (image and
    text towers, an embedding width); other models (a VQ-VAE's convolutions) report XLA's count."""
    return all(key in config.model for key in ("image", "text", "embed_dim"))


def speed_row(framework: str, config_path: str, config, overrides: dict, times: list[float]) -> dict:
    """The fields every step benchmark reports: median step time, examples/s, FLOP rate (NaN
    where the model has no analytic count; bench/step.py then rates XLA's)."""
    step_s = float(np.median(times))
    flops = train_flops(config)
    return {
        "framework": framework,
        "config": os.path.basename(config_path),
        "overrides": overrides,
        "batch_size": config.batch_size,
        "step_s": step_s,
        "step_s_all": times,
        "examples_per_s": config.batch_size / step_s,
        "flops_analytic": flops,
        "flops_per_s": flops / step_s,
    }
