"""Training the image tokenizer (stage 1 of DALL-E): a VQ-VAE that reconstructs `shapes` pictures.

    loss = mean ||x − x̂||²  +  λ · GDL(x̂, x)  +  β · mean ||z − sg(e_k(z))||²
           (x, x̂ in [-1, 1]; λ = gradient_weight; β = commitment_weight)

GDL is the squared error of neighbouring pixels' differences (`mmjax.losses.gradient_difference_loss`):
the MSE alone lets the decoder blur the edges of small shapes, which the scene parser then reads
as the wrong shape.

After each optimizer update the codebook follows the batch's encoder outputs by moving averages
and codes chosen less than `dead_code_threshold` times per step (running average) restart on
encoder outputs of the batch: random ones (Jukebox), or with `restart_by_error` ones drawn in
proportion to their squared distance to the nearest live code (k-means++'s rule), which sends
codes to the rare object patches instead of the common background (`update_moving_averages`;
the formulas are in `mmjax.nn.vector_quantization`). The parameters live under `tokenizer/`,
the subtree the prior (`text_to_image_task`) loads with `config.init_from`.

Evaluation (`evaluate`): over a split, the reconstruction MSE (on [-1, 1] pixels) and PSNR, the
perplexity of the code histogram and the number of codes used, and the fraction of
reconstructions that the scene parser reads back as the picture's own scene (`recon_scene_match`;
beside it, the same parser on the originals, the ceiling). On the test split, `compositional_test`
is scored too, its keys prefixed "compositional_".

Batch: {"images": uint8 [B, H, W, 3], "token_ids": int32 [B, text_len]} (the captions are unused
here; the batch is the contrastive one, so the flips are the same).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import ContrastivePreprocess, iterate_in_order
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.report import format_table, plot_text_to_image_grid, results_filename, write_results
from mmjax.evaluation.clip_eval import as_str
from mmjax.evaluation.scene_parser import scene_match
from mmjax.losses import gradient_difference_loss
from mmjax.models.fusion import check_fields
from mmjax.models.vq import VQVAE, build_vqvae, code_grid_side, psnr, to_uint8
from mmjax.nn.vector_quantization import EmaCodebook, code_perplexity, ema_update, nearest_codes, restart_dead_codes
from mmjax.training.tasks import ContrastiveTask, normalize_images

Array = jax.Array


def read_split_images(source: Any, limit: int | None = None) -> dict[str, np.ndarray]:
    """Images uint8 [n, H, W, 3], scene keys [n] and first captions [n] of a split, in order."""

    def transform(example):
        return {"image": np.asarray(example["image"]), "caption": as_str(example["captions"][0]),
                "scene_key": as_str(example["scene_key"])}

    images, captions, keys = [], [], []
    for i, example in enumerate(iterate_in_order(source, transform, batch_size=None)):
        if limit is not None and i >= limit:
            break
        images.append(example["image"])
        captions.append(example["caption"])
        keys.append(example["scene_key"])
    return {"images": np.stack(images), "captions": np.asarray(captions), "scene_keys": np.asarray(keys)}


@dataclasses.dataclass(frozen=True)
class VQTask:
    """The VQ-VAE tokenizer's training (see the module docstring)."""

    model: VQVAE
    commitment_weight: float = 0.25
    gradient_weight: float = 0.0
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0
    restart_by_error: bool = False
    # The codebook's averages: set by `update_moving_averages`, never by the optimizer.
    untrained_params: tuple[str, ...] = ("^tokenizer/codebook/",)

    @classmethod
    def from_config(cls, config: Any) -> "VQTask":
        model = build_vqvae(config.model.tokenizer)
        code_grid_side(model, config.data.image_size)  # fails early on a size f does not divide
        vq = dict(config.get("vq", {}))
        check_fields("vq", vq, ("commitment_weight", "gradient_weight", "ema_decay", "dead_code_threshold",
                                "restart_by_error"))
        return cls(model, **vq)

    example_batch = staticmethod(ContrastiveTask.example_batch)

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        return ContrastivePreprocess(data.tokenizer, config.data.text_len, config.data.flip_probability,
                                     data.mirror_text)

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return {"tokenizer": self.model.init(rng, normalize_images(batch["images"]))["params"]}

    def loss(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True):
        images = normalize_images(batch["images"])
        out = self.model.apply({"params": params["tokenizer"]}, images)
        reconstruction = out["reconstruction"].astype(jnp.float32)
        mse = jnp.mean((reconstruction - images) ** 2)
        edges = gradient_difference_loss(reconstruction, images)
        loss = mse + self.gradient_weight * edges + self.commitment_weight * out["commitment_loss"]
        return loss, {"mse": mse, "psnr": psnr(mse), "gradient_difference": edges,
                      "commitment_loss": out["commitment_loss"],
                      "code_perplexity": code_perplexity(out["codes"], self.model.num_codes)}

    def update_moving_averages(self, params: Any, batch: dict[str, Array], rng: Array):
        """The EMA codebook step and dead-code restarts, from the batch's encoder outputs under
        the parameters just updated. Returns (params, {"restarted_codes": []}).

        The encoder runs forward once more for this (no backward pass). The loss's outputs are
        not reused: the step's loss returns only (loss, metrics), for every task and under
        gradient accumulation, and the codebook then follows the encoder it will serve next.
        """
        tokenizer = params["tokenizer"]
        vectors = self.model.apply({"params": tokenizer}, normalize_images(batch["images"]), method=VQVAE.encode)
        book = tokenizer["codebook"]
        state = EmaCodebook(book["counts"], book["sums"], book["embedding"])
        state = ema_update(state, vectors, nearest_codes(vectors, state.codebook), self.ema_decay)
        restarted = jnp.sum(state.counts < self.dead_code_threshold)
        state = restart_dead_codes(state, vectors, rng, self.dead_code_threshold, self.restart_by_error)
        book = {"counts": state.counts, "sums": state.sums, "embedding": state.codebook}
        return {**params, "tokenizer": {**tokenizer, "codebook": book}}, {"restarted_codes": restarted}

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """`evaluate_split` on `split`, and on `compositional_test` too when `split` is "test" (its
        keys prefixed "compositional_"; config.eval.with_compositional = False skips it)."""
        results, details = self.evaluate_split(params, data, config, split)
        if split == "test" and config.eval.get("with_compositional", True):
            more, _ = self.evaluate_split(params, data, config, "compositional_test")
            results.update({f"compositional_{name}": value for name, value in more.items()})
        return (results, details) if return_details else results

    def evaluate_split(self, params: Any, data: Any, config: Any, split: str) -> tuple[dict, dict]:
        """(results, details) of one split: reconstruction error, code use, parse rate."""
        split_data = read_split_images(data.split(split), config.eval.get("max_images") or None)
        tokenizer = {"params": params["tokenizer"]}

        @jax.jit
        def reconstruct(images):
            codes = self.model.apply(tokenizer, normalize_images(images), method=VQVAE.tokenize)
            return codes, to_uint8(self.model.apply(tokenizer, codes, method=VQVAE.decode_codes))

        codes, reconstructions = batched_apply(reconstruct, split_data["images"], batch_size=config.eval.batch_size)
        originals = split_data["images"].astype(np.float64) / 127.5 - 1.0
        mse = float(np.mean((reconstructions.astype(np.float64) / 127.5 - 1.0 - originals) ** 2))
        matched = scene_match(reconstructions, split_data["scene_keys"])
        original_matched = scene_match(split_data["images"], split_data["scene_keys"])
        results = {
            "recon_mse": mse,
            "recon_psnr": float(psnr(mse)),
            "code_perplexity": float(code_perplexity(jnp.asarray(codes), self.model.num_codes)),
            "codes_used": float(len(np.unique(codes))),
            "recon_scene_match": float(matched.mean()),
            "original_scene_match": float(original_matched.mean()),
            "num_images": float(len(codes)),
        }
        details = {"originals": split_data["images"], "reconstructions": reconstructions,
                   "codes": codes, "matched": matched, "original_matched": original_matched,
                   "captions": split_data["captions"]}
        return results, details

    def report(self, workdir: str, results: dict, details: dict, config: Any) -> None:
        split = config.eval.split
        write_results(workdir, {"split": split, **results}, results_filename(split))
        # Per row: the scene's caption, the picture and its reconstruction, green where the parser
        # reads the scene back.
        n = min(8, len(details["originals"]))
        plot_text_to_image_grid(
            list(details["captions"][:n]),
            np.stack([details["originals"][:n], details["reconstructions"][:n]], axis=1),
            np.stack([details["original_matched"][:n], details["matched"][:n]], axis=1),
            os.path.join(workdir, f"reconstructions_{split}.png"),
        )
        grid = details["codes"].shape[1:]
        rows = [{"split": name, "images": int(results[f"{prefix}num_images"]), "MSE": results[f"{prefix}recon_mse"],
                 "PSNR (dB)": results[f"{prefix}recon_psnr"], "code perplexity": results[f"{prefix}code_perplexity"],
                 "codes used": int(results[f"{prefix}codes_used"]),
                 "scene parsed back": results[f"{prefix}recon_scene_match"]}
                for prefix, name in (("", split), ("compositional_", "compositional_test"))
                if f"{prefix}recon_mse" in results]
        print(format_table(rows, title=f"VQ-VAE on shapes ({grid[0]}x{grid[1]} codes of {self.model.num_codes})"))
