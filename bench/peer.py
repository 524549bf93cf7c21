"""The PyTorch peer: the same CLIP as an mmjax config, built by open_clip, one AdamW train step.

    python bench/peer.py --config configs/clip_s16.py --steps 10

The model is open_clip's `CLIP` built from the model config that mmjax's exporter writes for this
config (`mmjax.interop.open_clip.open_clip_model_config`), with mmjax's initial weights copied in
(`mmjax_to_open_clip`). Before timing, both frameworks embed the same batch and the largest
difference is printed: the two programs compute the same function, parameter for parameter
(their counts are printed too). open_clip has no ReLU switch; a config with ReLU MLPs gets
`nn.ReLU` in each block's MLP, where open_clip's GELU sits.

The step is open_clip's own training step: forward, `open_clip.ClipLoss`, backward,
`torch.optim.AdamW` with the config's hyper-parameters and gradient clipping, on
`torch.get_num_threads()` = the cores XLA uses.
"""

from __future__ import annotations

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.step import step_cli  # noqa: E402
from bench.workload import load_config, random_batch, speed_row, time_steps  # noqa: E402


def exportable(config):
    """The config's model as the exporter sees it: open_clip names only GELU / QuickGELU, so a
    ReLU model is exported as GELU and the activation swapped afterwards (`build_peer`)."""
    import functools

    import jax

    model = config.model.copy_and_resolve_references()
    relu = model.image.activation is jax.nn.relu
    if relu != (model.text.activation is jax.nn.relu):
        raise ValueError("the peer supports ReLU in both towers or in neither")
    if relu:
        gelu = functools.partial(jax.nn.gelu, approximate=False)
        model.image.activation = model.text.activation = gelu
    return model, relu


def build_peer(config, params):
    """(open_clip model with mmjax's weights, parameter count of the mmjax model)."""
    import numpy as np
    import open_clip
    import torch

    from mmjax.interop.open_clip import mmjax_to_open_clip, open_clip_model_config
    from mmjax.training.state import count_params

    model_config, relu = exportable(config)
    params = {k: np.asarray(v) for k, v in params.items()} if not isinstance(params, dict) else params
    model = open_clip.model.CLIP(**open_clip_model_config(params, model_config))
    if relu:
        for block in list(model.visual.transformer.resblocks) + list(model.transformer.resblocks):
            block.mlp.gelu = torch.nn.ReLU()
    state = {k: torch.from_numpy(v) for k, v in mmjax_to_open_clip(params, model_config).items()}
    model.load_state_dict(state)
    return model, count_params(params)


def torch_batch(batch: dict):
    """uint8 NHWC in 0..255 -> float NCHW in [-1, 1] (mmjax normalises the same way, on device)."""
    import torch

    images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images.contiguous(), torch.from_numpy(batch["token_ids"]).long()


def check_same_function(task, params, model, batch) -> float:
    """Largest |difference| of the image and text embeddings of the two models on `batch`."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    from mmjax.training.tasks import normalize_images

    out = task.model.apply({"params": params}, normalize_images(jnp.asarray(batch["images"])),
                           jnp.asarray(batch["token_ids"]))
    images, tokens = torch_batch(batch)
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True).numpy()
        text_features = model.encode_text(tokens, normalize=True).numpy()
    return float(max(np.abs(np.asarray(out["image_embeddings"]) - image_features).max(),
                     np.abs(np.asarray(out["text_embeddings"]) - text_features).max()))


def compute_dtype(config) -> str:
    """"float32" or "bfloat16": the towers' compute dtype (both must agree for the peer)."""
    import numpy as np

    dtypes = {np.dtype(config.model[tower].get("dtype", "float32")).name for tower in ("image", "text")}
    if len(dtypes) != 1:
        raise ValueError(f"the peer needs one compute dtype for both towers, got {sorted(dtypes)}")
    return dtypes.pop()


def measure(config_path: str, steps: int = 10, warmup: int = 2, **overrides) -> dict:
    import flax.linen as nn
    import jax
    import open_clip
    import torch

    from mmjax.training.setup import build_task

    config = load_config(config_path, **overrides)
    task = build_task(config)
    host_batch = random_batch(config)
    inputs = {k: jax.numpy.asarray(v) for k, v in host_batch.items()}
    params = nn.unbox(jax.device_get(task.init(jax.random.key(config.seed), inputs)))
    model, mmjax_params = build_peer(config, params)
    peer_params = sum(p.numel() for p in model.parameters())
    if peer_params != mmjax_params:
        raise RuntimeError(f"peer has {peer_params:,} parameters, mmjax {mmjax_params:,}: not the same model")
    max_diff = check_same_function(task, params, model, host_batch)
    del params

    opt = config.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                                  eps=opt.eps, weight_decay=opt.weight_decay)
    loss_fn = open_clip.ClipLoss()
    images, tokens = torch_batch(host_batch)
    model.train()

    # mmjax's bfloat16 towers (matmuls in bfloat16; parameters, optimizer and loss in float32)
    # are what PyTorch users get from autocast: the same policy, so the same comparison.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute_dtype(config) == "bfloat16")

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            image_features, text_features, logit_scale = model(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
        optimizer.step()
        return float(loss.detach())

    times = time_steps(step, steps, warmup, f"{config_path} (PyTorch)")
    return {
        **speed_row("pytorch (open_clip)", config_path, config, overrides, times),
        "threads": torch.get_num_threads(),
        "compute_dtype": compute_dtype(config),
        "parameters": peer_params,
        "max_embedding_diff": max_diff,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }


def describe(row: dict, args) -> str:
    return (f"peer {row['config']} batch {row['batch_size']}, {row['threads']} threads: "
            f"{row['parameters']:,} params (embeddings equal within {row['max_embedding_diff']:.1e}), "
            f"step {row['step_s'] * 1e3:.0f} ms, {row['examples_per_s']:.1f} ex/s, "
            f"{row['flops_per_s'] / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    step_cli(measure, __doc__.splitlines()[0], describe, jax_step=False)
