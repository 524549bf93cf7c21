"""Helpers of the interop tests: random weights for PyTorch models, fresh random inputs, errors."""

import numpy as np
import torch


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh (biases and LayerNorms included, so a swapped or dropped one
    shows), with the logit scale near CLIP's initial log(1/0.07)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("logit_scale"):
                param.copy_(2.6 + 0.3 * noise)
            elif name.endswith("logit_bias"):
                param.copy_(-3.0 + noise)
            elif param.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.15 * noise)


def random_images(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """float32 [batch, size, size, 3], channels last (mmjax's layout)."""
    return rng.standard_normal((batch, size, size, 3)).astype(np.float32)


def to_torch_images(images: np.ndarray) -> torch.Tensor:
    """[b, H, W, 3] -> [b, 3, H, W] (PyTorch's layout)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def random_token_ids(rng: np.random.Generator, batch: int, length: int, vocab: int,
                     eos_id: int | None = None, pad_id: int = 0) -> np.ndarray:
    """int64 [batch, length]: start token, random ids (0 among them), an end token, padding.

    With `eos_id` None the end token is the largest id (argmax pooling); otherwise it is `eos_id`
    and never occurs before the end. One row fills the whole length.
    """
    end = vocab - 1 if eos_id is None else eos_id
    start = vocab - 2 if end != vocab - 2 else vocab - 3
    ids = np.full((batch, length), pad_id, np.int64)
    lengths = rng.integers(2, length + 1, batch)
    lengths[0] = length
    for row, n in enumerate(lengths):
        body = rng.integers(0, vocab - 3, n - 2)
        body[body == end] = 1
        body[: min(2, len(body))] = 0  # id 0 inside the text: a real token, not padding
        ids[row, 0], ids[row, 1 : n - 1], ids[row, n - 1] = start, body, end
    return ids


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
