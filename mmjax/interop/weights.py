"""What every importer shares: reading and writing state dicts safely, checking them key by key,
and the few layout changes between PyTorch's parameters and mmjax's.

A PyTorch state dict is a flat {"dotted.name": tensor}; mmjax's parameters are a nested dict of
arrays. Moving a CLIP between the two changes only layouts, never values:

    torch nn.Linear weight   [out, in]              -> Dense kernel              [in, out]     (.T)
    q/k/v projection weight  [heads·head_dim, in]   -> HeadProjection kernel     [in, heads, head_dim]
    q/k/v projection bias    [heads·head_dim]       -> HeadProjection bias       [heads, head_dim]
    output projection weight [out, heads·head_dim]  -> merge_heads kernel        [heads, head_dim, out]
    Conv2d weight            [out, in, kh, kw]      -> Conv kernel               [kh, kw, in, out]
    per-layer tensors, layer i of depth             -> one array stacked on a leading [depth] axis
                                                       (the scanned `encoder/blocks`)

Transposes and reshapes are exact, so a round trip (import, export) gives back the same bits.

Files are read without ever unpickling: safetensors directly, and a PyTorch file (`.bin`, `.pt`)
only through `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, and only when torch is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmjax.interop.preprocess import ImagePreprocessing
from mmjax.models.clip import CLIP, build_clip
from mmjax.nn.transformer import quick_gelu

Params = dict[str, Any]


@dataclasses.dataclass
class ImportedCLIP:
    """A pretrained CLIP in mmjax form.

    Attributes:
      config: the model section of an mmjax config (`embed_dim`, `image`, `text`, ...):
        `build_clip(config)` builds the matching `CLIP`.
      params: the parameter tree (numpy float32) for `model.apply({"params": params}, ...)`.
      preprocessing: how the model wants its images (size, crop, mean / std).
    """

    config: ml_collections.ConfigDict
    params: Params
    preprocessing: ImagePreprocessing

    @property
    def model(self) -> CLIP:
        return build_clip(self.config)

    @property
    def context_length(self) -> int:
        """The text length the model was trained with (77 for OpenAI's models)."""
        return self.config.text.max_len


# ----------------------------------------------------------------------------------------------
# Reading and writing files.


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{"name": array} of a safetensors file or of a PyTorch file (weights only, needs torch).

    A training checkpoint that wraps the weights ({"state_dict": ...}, as open_clip's
    `epoch_N.pt`) is unwrapped, and the "module." prefix of DistributedDataParallel is dropped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"{path} is a PyTorch file: reading it needs torch (`pip install torch`). Or load a "
            ".safetensors copy of the same weights, which needs no torch."
        ) from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a TorchScript archive or a pickle of arbitrary objects
        raise ValueError(
            f"cannot read {path} as plain weights with torch.load(weights_only=True): {error}. "
            "OpenAI's original .pt files are TorchScript archives: load them once with open_clip "
            "(open_clip.create_model('ViT-B-32-quickgelu', pretrained='openai')) and save its "
            "state_dict() with safetensors, or download the safetensors weights instead."
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors")
    out = {}
    for name, tensor in loaded.items():
        if not hasattr(tensor, "numpy"):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        # numpy has no bfloat16: widen floating tensors to float32 (mmjax keeps parameters in it).
        out[name.removeprefix("module.")] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return out


def write_safetensors(path: str | os.PathLike, state_dict: dict[str, np.ndarray]) -> None:
    """Writes {"name": array} as safetensors (marked as PyTorch weights, which loaders expect),
    atomically: a crash never leaves a half-written file under the final name."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file({k: np.array(v, order="C") for k, v in state_dict.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Checking a state dict against what a model needs.


class StateDictReader:
    """Hands out the arrays of a state dict by name, checking each shape, and remembers which
    names were asked for, so that `finish()` can name every missing and every unused key.

    A missing key gives zeros of the expected shape, so conversion runs to the end and one error
    lists all the missing keys at once.
    """

    def __init__(self, state_dict: dict[str, np.ndarray], source: str):
        self.state_dict = state_dict
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.state_dict

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 array under `key`, which must have `shape`."""
        if key not in self.state_dict:
            self.missing.append(key)
            return np.zeros(shape, np.float32)
        self.used.add(key)
        value = np.asarray(self.state_dict[key])
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{self.source}: {key} has shape {tuple(value.shape)} in the checkpoint but the model "
                f"built from its config needs {tuple(shape)}: the config does not describe these weights"
            )
        return value.astype(np.float32)

    def skip(self, key: str) -> None:
        """Marks a key as accounted for without using it (a buffer the model recomputes)."""
        self.used.add(key)

    def finish(self) -> None:
        """Raises a ValueError naming the missing keys and the keys nothing used."""
        unexpected = sorted(set(self.state_dict) - self.used)
        if not self.missing and not unexpected:
            return
        lines = [f"{self.source} does not match the architecture read from its config:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_listing(self.missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        lines.append(
            "Check that the config (and the weights file) belong to the same model; a model with "
            "parts mmjax does not have (layer scale, attention pooling, a timm or ResNet image "
            "tower) cannot be imported."
        )
        raise ValueError("\n".join(lines))


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_params_match(config: ml_collections.ConfigDict, params: Params, image_size: int) -> None:
    """Raises unless `params` has exactly the parameters (names and shapes) of `build_clip(config)`.

    Computed abstractly (`jax.eval_shape`), so no parameter is allocated.
    """
    model = build_clip(config)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    token_ids = jax.ShapeDtypeStruct((1, config.text.max_len), np.int32)
    expected = jax.eval_shape(model.init, jax.random.key(0), images, token_ids)["params"]
    expected = flat_shapes(nn.unbox(expected))
    got = flat_shapes(params)
    for name in sorted(set(expected) | set(got)):
        if expected.get(name) != got.get(name):
            raise ValueError(
                f"converted parameter {name} has shape {got.get(name)} but the mmjax model needs "
                f"{expected.get(name)} (None = absent)"
            )


def flat_shapes(tree: Params) -> dict[str, tuple[int, ...]]:
    """{"a/b/kernel": shape} of a parameter tree."""
    return {"/".join(str(k.key) for k in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# ----------------------------------------------------------------------------------------------
# Layouts (module docstring). Each pair is exact and each function is the other's inverse.


def linear_to_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Dense kernel [in, out]."""
    return np.ascontiguousarray(weight.T)


def kernel_to_linear(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.T)


def linear_to_heads(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k/v weight [heads·head_dim, in] -> HeadProjection kernel [in, heads, head_dim]."""
    return np.ascontiguousarray(weight.T.reshape(weight.shape[1], heads, -1))


def heads_to_linear(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.reshape(kernel.shape[0], -1).T)


def bias_to_heads(bias: np.ndarray, heads: int) -> np.ndarray:
    """q/k/v bias [heads·head_dim] -> [heads, head_dim]."""
    return np.ascontiguousarray(bias.reshape(heads, -1))


def heads_to_bias(bias: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bias.reshape(-1))


def linear_to_merge_heads(weight: np.ndarray, heads: int) -> np.ndarray:
    """Output projection weight [out, heads·head_dim] -> merge_heads kernel [heads, head_dim, out]."""
    return np.ascontiguousarray(weight.T.reshape(heads, -1, weight.shape[0]))


def merge_heads_to_linear(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)


def conv_to_kernel(weight: np.ndarray) -> np.ndarray:
    """Conv2d weight [out, in, kh, kw] (NCHW convolution) -> flax Conv kernel [kh, kw, in, out]."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def kernel_to_conv(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def stack_layers(layers: list[Params]) -> Params:
    """Per-layer parameter trees -> one tree with a leading [depth] axis (scanned `blocks`)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *layers)


def unstack_layers(encoder: Params, depth: int) -> list[Params]:
    """An Encoder's parameters -> one tree per layer, from the scanned (`blocks`, stacked) or the
    unrolled (`block_0`, `block_1`, ...) layout."""
    if "blocks" in encoder:
        return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], encoder["blocks"]) for i in range(depth)]
    return [jax.tree.map(np.asarray, encoder[f"block_{i}"]) for i in range(depth)]


def layer_norm(scale: np.ndarray, bias: np.ndarray) -> Params:
    return {"scale": scale, "bias": bias}


def attention_from_torch(q: tuple, k: tuple, v: tuple, out: tuple, heads: int) -> Params:
    """mmjax MultiHeadAttention parameters from PyTorch's (weight, bias) pairs of the query, key,
    value and output projections ([width, width] and [width] each)."""
    project = lambda w, b: {"kernel": linear_to_heads(w, heads), "bias": bias_to_heads(b, heads)}  # noqa: E731
    return {
        "query": project(*q), "key": project(*k), "value": project(*v),
        "out": {"kernel": linear_to_merge_heads(out[0], heads), "bias": out[1]},
    }


def attention_to_torch(attention: Params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"query" | "key" | "value" | "out": (weight, bias)} in PyTorch's layout."""
    out = {
        name: (heads_to_linear(attention[name]["kernel"]), heads_to_bias(attention[name]["bias"]))
        for name in ("query", "key", "value")
    }
    out["out"] = (merge_heads_to_linear(attention["out"]["kernel"]), np.asarray(attention["out"]["bias"]))
    return out


def mlp_from_torch(fc1: tuple, fc2: tuple) -> Params:
    """MlpBlock parameters from the (weight, bias) of PyTorch's two Linear layers."""
    return {"fc1": {"kernel": linear_to_kernel(fc1[0]), "bias": fc1[1]},
            "fc2": {"kernel": linear_to_kernel(fc2[0]), "bias": fc2[1]}}


def mlp_to_torch(mlp: Params) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return tuple((kernel_to_linear(mlp[n]["kernel"]), np.asarray(mlp[n]["bias"])) for n in ("fc1", "fc2"))


def clip_config(*, embed_dim: int, image: dict, text: dict, logit_scale: float,
                logit_bias: float | None = None) -> ml_collections.ConfigDict:
    """The mmjax model config of an imported CLIP.

    What every OpenAI-style CLIP shares is fixed here: a class token with learned positions,
    no bias in the patch projection, a causal text tower without a padding mask. `image` and
    `text` carry the rest (sizes, activation, LayerNorm epsilon, pooling).

    The logit scale is clamped at 100 for training, as everywhere in mmjax, but never below the
    stored value, so the forward pass equals the PyTorch one (which does not clamp).
    """
    config = ml_collections.ConfigDict()
    config.embed_dim = embed_dim
    config.image = ml_collections.ConfigDict(
        {"pool": "token", "position_embedding": "learned", "patch_bias": False, **image}
    )
    config.text = ml_collections.ConfigDict({"causal": True, "mask_padding": False, **text})
    config.logit_scale_init = float(logit_scale)
    config.max_logit_scale = max(100.0, float(np.exp(np.float64(logit_scale))))
    if logit_bias is not None:
        config.logit_bias_init = float(logit_bias)
    return config


def check_exportable(config: ml_collections.ConfigDict, target: str) -> None:
    """Raises unless the mmjax model has an OpenAI-style CLIP counterpart in `target`."""
    image, text = config.image, config.text
    rules = [
        (image.get("pool", "token") == "token", "image.pool must be 'token' (class-token pooling)"),
        (image.get("position_embedding", "learned") == "learned", "image.position_embedding must be 'learned'"),
        (not image.get("patch_bias", True), "image.patch_bias must be False (PyTorch CLIPs have none)"),
        (text.get("causal", True), "text.causal must be True"),
    ]
    for ok, rule in rules:
        if not ok:
            raise ValueError(f"this mmjax model cannot be written as a {target} CLIP: {rule}")


# ----------------------------------------------------------------------------------------------
# Activations: stored as functions in mmjax configs, as names in PyTorch configs.


def activation_from_name(name: str, source: str) -> Callable:
    """"quick_gelu" -> x·sigmoid(1.702 x) (OpenAI's models); "gelu" -> exact erf GELU."""
    from mmjax.nn.transformer import gelu

    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        return gelu
    raise ValueError(
        f"{source}: activation {name!r} is not supported; mmjax imports CLIP models with "
        "'quick_gelu' (OpenAI's) or 'gelu' (exact, erf-based)"
    )


def activation_name(fn: Callable) -> str:
    """The inverse of `activation_from_name`: "quick_gelu" or "gelu" (exact), else an error."""
    if fn is quick_gelu:
        return "quick_gelu"
    if isinstance(fn, functools.partial) and fn.func is jax.nn.gelu and not fn.args \
            and fn.keywords == {"approximate": False}:
        return "gelu"
    raise ValueError(
        f"activation {getattr(fn, '__name__', fn)!r} has no PyTorch CLIP counterpart: only "
        "mmjax.nn.transformer.quick_gelu and the exact gelu (jax.nn.gelu with approximate=False) "
        "can be exported"
    )
