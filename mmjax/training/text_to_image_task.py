"""Training and judging the text-to-image prior (DALL-E's stage 2) on `shapes`.

    c    = VQ(x)                            [B, N] codes of the picture, from the frozen tokenizer
    t'   = null text with probability p, else the caption t       (classifier-free guidance)
    loss = −(1/N) Σ_j log p(c_j | t', c_<j)                       (`TextToImagePrior`)

The tokenizer is another run's (`configs/vq_tiny.py`): `config.init_from` loads its `tokenizer/`
subtree and the task never trains it (`untrained_params`). The codes are computed on the device
inside the step from the batch's pictures, so flips (with the caption's left and right swapped)
augment the prior's data as they do CLIP's.

Judging what it draws (`evaluate`): for each of `eval.num_captions` scenes of the split, its first
caption is the prompt and `eval.samples_per_caption` pictures are sampled and decoded. Two judges
that never saw the prior:

  - scene_match: the fraction of samples that the scene parser (`mmjax.evaluation.scene_parser`,
    written from the renderer's rules) reads as exactly the caption's scene: every object's
    colour, shape, size and cell, and no other object.
  - clip_r_precision: a separately trained CLIP (`eval.clip_judge`, clip_tiny) ranks the
    `num_captions` prompts for each sample; a hit is a top-1 caption of the same scene as the
    prompt (DALL-E's and CogView's R-precision, with the prompts of the other scenes as the
    distractors). Beside it the same judge on the real pictures: the score's ceiling.

Both at the configured guidance scale and, for `eval.guidance_sweep`, at each scale of the sweep;
on the test split, `compositional_test` (scenes holding a colour-shape pair never trained on) is
scored too, its keys prefixed "compositional_" (at the configured scale only when
`eval.sweep_compositional` is False; `eval.py --config.eval.split=compositional_test` sweeps it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import ContrastivePreprocess
from mmjax.evaluation.batching import batched_apply
from mmjax.evaluation.report import format_table, plot_text_to_image_grid, results_filename, write_results
from mmjax.evaluation.scene_parser import scene_match
from mmjax.losses import masked_softmax_cross_entropy
from mmjax.models.maskgit import MaskedTextToImagePrior, random_mask, sample_parallel
from mmjax.models.text_to_image import NULL_TEXT_ID, TextToImagePrior, build_prior, sample
from mmjax.models.vq import VQVAE, build_vqvae, code_grid_side, to_uint8
from mmjax.training.tasks import ContrastiveTask, check_vocabulary_sizes, normalize_images
from mmjax.training.vq_task import read_split_images

Array = jax.Array


def encode_prompts(prompts: list[str], tokenizer: Any, text_len: int) -> np.ndarray:
    """int32 [n, text_len] token ids of prompts the prior can read; a ValueError naming the prompt
    for one that is empty, has a piece the tokenizer does not know, or is cut off at text_len
    (the training captions always fit, so a cut prompt would be read as another caption)."""
    for text in prompts:
        if not text.strip():
            raise ValueError("a prompt is empty: give a caption such as 'a large red circle at the top left'")
        unknown = tokenizer.unknown_pieces(text)
        if unknown:
            raise ValueError(f"the prompt {text!r} has pieces the tokenizer does not know: {unknown}; use the "
                             "words of the training captions")
        length = len(tokenizer.encode(text))  # with its end token
        if length > text_len:
            raise ValueError(f"the prompt {text!r} is {length} tokens with its end token; the prior reads at most "
                             f"config.data.text_len = {text_len}: shorten it")
    return tokenizer.encode_batch(prompts, text_len)


def code_loss(logits: Array, codes: Array, targets: Array) -> tuple[Array, dict[str, Array]]:
    """(mean −log p(c_j) over the target positions, metrics): logits [b, N, K], codes int [b, N],
    targets [b, N] (1 where a code is scored). Metrics: code_accuracy and code_perplexity, exp of
    the loss."""
    loss, metrics = masked_softmax_cross_entropy(logits, codes, targets)
    return loss, {"code_accuracy": metrics["accuracy"], "code_perplexity": jnp.exp(loss)}


@dataclasses.dataclass(frozen=True)
class TextToImageTask:
    """DALL-E's prior over a frozen VQ tokenizer (see the module docstring)."""

    tokenizer: VQVAE
    prior: TextToImagePrior
    text_dropout: float = 0.1
    # The tokenizer is trained by its own run and only read here.
    untrained_params: tuple[str, ...] = ("^tokenizer/",)

    @classmethod
    def from_config(cls, config: Any) -> "TextToImageTask":
        tokenizer = build_vqvae(config.model.tokenizer)
        side = code_grid_side(tokenizer, config.data.image_size)
        prior = build_prior(config.model.prior, config.data.text_len, tokenizer.num_codes, side * side)
        dropout = config.get("text_dropout", 0.1)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"config.text_dropout must be in [0, 1); got {dropout}")
        return cls(tokenizer, prior, dropout)

    example_batch = staticmethod(ContrastiveTask.example_batch)

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        check_vocabulary_sizes(data, config, config.model.prior.vocab_size, "model.prior.vocab_size")
        subtrees = tuple(config.get("init_from", {}).get("subtrees", ()))
        if "tokenizer" not in subtrees:
            raise ValueError("config.init_from must load the image tokenizer, subtrees=('tokenizer',), from a "
                             "trained configs/vq_tiny.py run: a random tokenizer's codes draw nothing")
        judge = config.eval.get("clip_judge", {}).get("workdir")
        if judge and not os.path.isdir(os.path.join(judge, "checkpoints")):
            raise FileNotFoundError(f"config.eval.clip_judge.workdir={judge} has no checkpoints: train the judge "
                                    f"first (python train.py --config configs/clip_tiny.py --workdir {judge}), or "
                                    "set --config.eval.clip_judge.workdir='' to score with the scene parser only")
        return ContrastivePreprocess(data.tokenizer, config.data.text_len, config.data.flip_probability,
                                     data.mirror_text)

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        tokenizer_rng, prior_rng = jax.random.split(rng)
        codes = jnp.zeros((batch["images"].shape[0], self.prior.image_len), jnp.int32)
        return {
            "tokenizer": self.tokenizer.init(tokenizer_rng, normalize_images(batch["images"]))["params"],
            "prior": self.prior.init(prior_rng, batch["token_ids"], codes)["params"],
        }

    def image_codes(self, params: Any, images: Array) -> Array:
        """uint8 images [b, H, W, 3] -> their codes in raster order, int32 [b, N]."""
        codes = self.tokenizer.apply({"params": params["tokenizer"]}, normalize_images(images),
                                     method=VQVAE.tokenize)
        return codes.reshape(codes.shape[0], -1)

    def decode_images(self, params: Any, codes: Array) -> Array:
        """codes [b, N] -> uint8 pictures [b, H, W, 3]."""
        side = int(round(self.prior.image_len ** 0.5))
        grid = codes.reshape(codes.shape[0], side, side)
        return to_uint8(self.tokenizer.apply({"params": params["tokenizer"]}, grid, method=VQVAE.decode_codes))

    def drop_text(self, text: Array, rng: Array, train: bool) -> Array:
        """text [b, T] with each caption replaced by the null text with probability p when training
        (classifier-free guidance)."""
        if not train or self.text_dropout <= 0:
            return text
        dropped = jax.random.bernoulli(rng, self.text_dropout, (text.shape[0], 1))
        return jnp.where(dropped, NULL_TEXT_ID, text)

    def loss(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True):
        codes = jax.lax.stop_gradient(self.image_codes(params, batch["images"]))
        drop_rng, dropout_rng = jax.random.split(rng)
        text = self.drop_text(batch["token_ids"], drop_rng, train)
        logits = self.prior.apply({"params": params["prior"]}, text, codes, not train, rngs={"dropout": dropout_rng})
        return code_loss(logits, codes, jnp.ones(codes.shape, jnp.float32))  # every code is a target

    def sampler(self, temperature: float, top_k: int, guided: bool) -> Callable:
        """A jitted (params, text_ids [b, T], rng, guidance_scale) -> uint8 pictures [b, H, W, 3]."""

        def run(params, text_ids, rng, scale):
            codes = self.sample_codes(params["prior"], text_ids, rng, temperature, top_k, scale if guided else None)
            return self.decode_images(params, codes)

        return jax.jit(run)

    def sampler_name(self) -> str:
        return f"autoregressive, {self.prior.image_len} cached steps"

    def sample_codes(self, prior_params: Any, text_ids: Array, rng: Array, temperature: float, top_k: int,
                     scale: Array | None) -> Array:
        """codes int32 [b, N] for text_ids [b, T]: one at a time with the key/value cache."""
        return sample(self.prior, prior_params, text_ids, rng, temperature=temperature, top_k=top_k,
                      guidance_scale=scale).codes

    def generate(self, params: Any, token_ids: np.ndarray, rng: Array, config: Any,
                 guidance_scale: float | None = None, batch_size: int = 256) -> np.ndarray:
        """Pictures uint8 [n, H, W, 3] for the prompts token_ids [n, T]; row i drawn with
        fold_in(rng, i // batch_size), so a fixed rng gives the same pictures."""
        scale = config.eval.guidance_scale if guidance_scale is None else guidance_scale
        run = self.sampler(config.eval.temperature, config.eval.top_k, guided=scale != 1.0)
        chunks = []
        for start in range(0, len(token_ids), batch_size):
            ids = token_ids[start:start + batch_size]
            pad = batch_size - len(ids) if len(token_ids) > batch_size else 0
            ids = np.concatenate([ids, np.repeat(ids[-1:], pad, axis=0)]) if pad else ids
            images = run(params, jnp.asarray(ids), jax.random.fold_in(rng, start // batch_size), jnp.float32(scale))
            chunks.append(np.asarray(images)[: len(ids) - pad])
        return np.concatenate(chunks)

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """`evaluate_split` on `split`, and on `compositional_test` too when `split` is "test" (its
        keys prefixed "compositional_"; config.eval.with_compositional = False skips it, and
        config.eval.sweep_compositional = False scores it at the configured scale only)."""
        results, details = self.evaluate_split(params, data, config, split)
        if split == "test" and config.eval.get("with_compositional", True):
            sweep = config.eval.get("sweep_compositional", True)
            more, _ = self.evaluate_split(params, data, config, "compositional_test", sweep)
            results.update({f"compositional_{name}": value for name, value in more.items()})
        return (results, details) if return_details else results

    def evaluate_split(self, params: Any, data: Any, config: Any, split: str,
                       sweep: bool = True) -> tuple[dict, dict]:
        """(results, details) of one split: scene_match and CLIP R-precision at the configured
        guidance scale and, with `sweep`, at each scale of config.eval.guidance_sweep."""
        ev = config.eval
        prompts = read_split_images(data.split(split), ev.num_captions)
        num, per = len(prompts["captions"]), ev.samples_per_caption
        token_ids = data.tokenizer.encode_batch(list(prompts["captions"]), config.data.text_len)
        repeated = np.repeat(token_ids, per, axis=0)  # caption i's samples are rows i·per .. i·per + per − 1
        keys = np.repeat(prompts["scene_keys"], per)
        judge = _ClipJudge.load(ev.get("clip_judge", {}), prompts)
        rng = jax.random.key(ev.get("seed", 0))

        results: dict[str, float] = {"num_captions": float(num), "samples_per_caption": float(per)}
        details: dict[str, Any] = {}
        swept = map(float, ev.get("guidance_sweep", ())) if sweep else ()
        scales = sorted({float(ev.guidance_scale), *swept})
        for scale in scales:
            images = self.generate(params, repeated, rng, config, scale, ev.batch_size)
            matched = scene_match(images, keys)
            row = {"scene_match": float(matched.mean())}
            if judge is not None:
                row["clip_r_precision"] = judge.r_precision(images, np.repeat(np.arange(num), per))
            results.update({f"{name}_guidance_{scale:g}": value for name, value in row.items()})
            if scale == float(ev.guidance_scale):  # the headline numbers and the grid
                results.update(row)
                details.update(samples=images.reshape(num, per, *images.shape[1:]),
                               matched=matched.reshape(num, per))
        if judge is not None:
            results["clip_r_precision_real_images"] = judge.r_precision(prompts["images"], np.arange(num))
        results["guidance_scale"] = float(ev.guidance_scale)
        details.update(captions=prompts["captions"], scales=scales)
        return results, details

    def report(self, workdir: str, results: dict, details: dict, config: Any) -> None:
        split = config.eval.split
        write_results(workdir, {"split": split, **results}, results_filename(split))
        rows = min(8, len(details["captions"]))
        plot_text_to_image_grid(list(details["captions"][:rows]), details["samples"][:rows],
                                details["matched"][:rows], os.path.join(workdir, f"samples_{split}.png"))
        table = []
        for scale in details["scales"]:
            row = {"guidance scale": scale}
            for prefix, label in (("", ""), ("compositional_", "compositional ")):
                for name, column in (("scene_match", "scene_match"), ("clip_r_precision", "CLIP R-precision")):
                    key = f"{prefix}{name}_guidance_{scale:g}"
                    if key in results:
                        row[label + column] = results[key]
            table.append(row)
        real = results.get("clip_r_precision_real_images")
        title = (f"Text-to-image on shapes/{split}: {int(results['num_captions'])} captions x "
                 f"{int(results['samples_per_caption'])} samples ({self.sampler_name()}, temperature "
                 f"{config.eval.temperature}, top-k {config.eval.top_k})")
        if real is not None:
            title += f"; CLIP R-precision of the real pictures {real:.3f}"
        print(format_table(table, title=title))


@dataclasses.dataclass(frozen=True)
class MaskedTextToImageTask(TextToImageTask):
    """MaskGIT's prior over the same frozen tokenizer (`mmjax.models.maskgit`): trained to fill in
    a random cosine-scheduled share of masked codes, sampled in `num_decode_steps` parallel rounds.
    Data, guidance, evaluation and report are the autoregressive task's."""

    num_decode_steps: int = 8
    choice_temperature: float = 4.5

    @classmethod
    def from_config(cls, config: Any) -> "MaskedTextToImageTask":
        base = TextToImageTask.from_config(config)
        prior = build_prior(config.model.prior, base.prior.text_len, base.prior.num_codes, base.prior.image_len,
                            module=MaskedTextToImagePrior)
        steps = config.eval.get("num_decode_steps", 8)
        if not 1 <= steps <= prior.image_len:
            raise ValueError(f"config.eval.num_decode_steps must be in 1..{prior.image_len} (the codes per "
                             f"picture); got {steps}")
        return cls(base.tokenizer, prior, base.text_dropout, num_decode_steps=steps,
                   choice_temperature=config.eval.get("choice_temperature", 4.5))

    def loss(self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True):
        codes = jax.lax.stop_gradient(self.image_codes(params, batch["images"]))
        drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
        text = self.drop_text(batch["token_ids"], drop_rng, train)
        mask = random_mask(mask_rng, *codes.shape)
        inputs = jnp.where(mask, self.prior.mask_id, codes)
        logits = self.prior.apply({"params": params["prior"]}, text, inputs, not train, rngs={"dropout": dropout_rng})
        return code_loss(logits, codes, mask)  # the masked codes are the targets

    def sampler_name(self) -> str:
        return f"MaskGIT, {self.num_decode_steps} rounds"

    def sample_codes(self, prior_params: Any, text_ids: Array, rng: Array, temperature: float, top_k: int,
                     scale: Array | None) -> Array:
        """codes int32 [b, N] for text_ids [b, T]: all at once, in `num_decode_steps` rounds."""
        return sample_parallel(self.prior, prior_params, text_ids, rng, num_steps=self.num_decode_steps,
                               temperature=temperature, top_k=top_k, choice_temperature=self.choice_temperature,
                               guidance_scale=scale).codes


@dataclasses.dataclass
class _ClipJudge:
    """A separately trained CLIP that ranks the prompts for each picture (R-precision)."""

    encode_images: Callable[[np.ndarray], np.ndarray]
    caption_embeddings: np.ndarray  # [num_captions, d], unit norm
    scene_keys: np.ndarray  # [num_captions]
    batch_size: int

    @classmethod
    def load(cls, judge_config: Any, prompts: dict) -> "_ClipJudge | None":
        if not judge_config or not judge_config.get("workdir"):
            return None
        from mmjax.training.evaluate import load_run

        clip_config = judge_config.config
        task, params, _, tokenizer = load_run(judge_config.workdir, clip_config)
        image_fn, text_fn = jax.jit(task.encode_images), jax.jit(task.encode_texts)
        ids = tokenizer.encode_batch(list(prompts["captions"]), clip_config.data.text_len)
        texts = batched_apply(lambda t: text_fn(params, t), ids, batch_size=256)
        return cls(lambda images: image_fn(params, images), np.asarray(texts), prompts["scene_keys"], 256)

    def r_precision(self, images: np.ndarray, prompt_index: np.ndarray) -> float:
        """Fraction of pictures whose best-matching caption shows the scene of their prompt."""
        embeddings = batched_apply(self.encode_images, images, batch_size=self.batch_size)
        best = np.argmax(np.asarray(embeddings) @ self.caption_embeddings.T, axis=1)
        return float(np.mean(self.scene_keys[best] == self.scene_keys[prompt_index]))
