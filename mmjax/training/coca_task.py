"""CoCa training: contrastive + captioning, and generative VQA through the same decoder.

    loss = w_con · clip_loss(image_emb, text_emb)                       (align the towers)
         + w_cap · caption_loss(decoder(shift_right(caption), image), caption)
         + w_vqa · CE over the answer tokens of decoder(shift_right([question; answer; EOS]), image)

Generative VQA asks the captioner a question: the decoder reads the question's tokens as a
prompt and writes the answer (`qa_sequence`). Only the answer and its EOS are scored, so the
decoder is never trained to *write* questions: a caption generated from the start token stays a
caption. At test time the question is forced through the cached decoder (`greedy_search`'s
prompt) and the words it writes next, up to EOS, are the answer; an answer outside the
vocabulary of training answers is wrong.

Several questions per image (config.data.qa_per_image = K): the image tower runs once per image
and the decoder answers K of its questions, so each step sees K times more answers for little
more than the decoder's cost on K short sequences.

Batch (from `VqaPreprocess(with_caption=True, qa_len=..., qa_per_image=K)`):
    images uint8 [B, H, W, 3]; token_ids int32 [B, text_len] (a caption, ending in EOS);
    qa_ids int32 [B, K, qa_len]; qa_weights float32 [B, K, qa_len]; and the classification
    fields question_ids, answer, question_type, scene_id (unused by the loss).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import VqaPreprocess
from mmjax.evaluation.caption_eval import evaluate_captions, write_captions
from mmjax.evaluation.clip_eval import evaluate_clip, write_artifacts
from mmjax.evaluation.report import format_table, results_filename, write_results
from mmjax.evaluation.vqa_eval import evaluate_vqa, vqa_rows
from mmjax.losses import caption_loss, clip_loss, masked_softmax_cross_entropy
from mmjax.models.captioner import EOS_ID, START_ID, CoCa, build_coca, generate, greedy_search, shift_right
from mmjax.models.clip import l2_normalize
from mmjax.models.fusion import check_fields
from mmjax.training.tasks import check_vocabulary_sizes, normalize_images

Array = jax.Array

LOSS_WEIGHTS = {"contrastive": 1.0, "caption": 2.0, "vqa": 1.0}  # CoCa: λ_con = 1, λ_cap = 2


def coca_objectives(model: CoCa, images: Array, token_ids: Array, qa_ids: Array,
                    deterministic: bool) -> dict[str, Array]:
    """One image-tower pass; contrastive embeddings, caption logits, question-answer logits.

    qa_ids [B, K, L_qa] -> qa_logits [B, K, L_qa, V]: row b·K + k of the decoder's batch reads
    image b's tokens.
    """
    image = model.image_encoder(images, deterministic=deterministic)
    batch, per_image, qa_len = qa_ids.shape
    decode = functools.partial(model.decoder, deterministic=deterministic)
    qa_logits = decode(shift_right(qa_ids.reshape(batch * per_image, qa_len), START_ID),
                       jnp.repeat(image["tokens"], per_image, axis=0))
    return {
        "image_embeddings": l2_normalize(model.image_projection(image["pooled"])),
        "text_embeddings": model.encode_text(token_ids, deterministic),
        "logit_scale": jnp.minimum(jnp.exp(model.log_logit_scale), model.max_logit_scale),
        "caption_logits": decode(shift_right(token_ids, START_ID), image["tokens"]),
        "qa_logits": qa_logits.reshape(batch, per_image, qa_len, -1),
    }


@dataclasses.dataclass(frozen=True)
class CocaTask:
    """CoCa with generative VQA (see the module docstring)."""

    model: CoCa
    loss_weights: tuple[tuple[str, float], ...] = tuple(LOSS_WEIGHTS.items())

    @classmethod
    def from_config(cls, config: Any) -> "CocaTask":
        weights = dict(config.get("loss_weights", {}))
        check_fields("loss_weights", weights, LOSS_WEIGHTS)
        return cls(build_coca(config.model), tuple({**LOSS_WEIGHTS, **weights}.items()))

    @staticmethod
    def example_batch(config: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        size = config.data.image_size
        ids = lambda length: jax.ShapeDtypeStruct((batch_size, length), jnp.int32)  # noqa: E731
        scalar = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        return {
            "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "token_ids": ids(config.data.text_len), "scene_id": scalar,
            "qa_ids": jax.ShapeDtypeStruct((batch_size, config.data.qa_per_image, config.data.qa_len), jnp.int32),
            "qa_weights": jax.ShapeDtypeStruct(
                (batch_size, config.data.qa_per_image, config.data.qa_len), jnp.float32),
            "question_ids": ids(config.data.question_len), "answer": scalar, "question_type": scalar,
        }

    @staticmethod
    def train_preprocess(data: Any, config: Any) -> Callable[[dict, np.random.Generator], dict]:
        check_vocabulary_sizes(data, config, config.model.text.vocab_size, "model.text.vocab_size")
        return VqaPreprocess(
            data.tokenizer, config.data.question_len, data.answer_vocabulary(), data.question_types,
            config.data.flip_probability, data.mirror_text,
            text_len=config.data.text_len, with_caption=True, qa_len=config.data.qa_len,
            qa_per_image=config.data.qa_per_image,
        )

    def init(self, rng: Array, batch: dict[str, Array]) -> Any:
        return self.model.init(
            rng, normalize_images(batch["images"]), batch["token_ids"], batch["qa_ids"], True,
            method=coca_objectives,
        )["params"]

    def loss(
        self, params: Any, batch: dict[str, Array], rng: Array, train: bool = True
    ) -> tuple[Array, dict[str, Array]]:
        out = self.model.apply(
            {"params": params}, normalize_images(batch["images"]), batch["token_ids"], batch["qa_ids"],
            not train, rngs={"dropout": rng}, method=coca_objectives,
        )
        losses = {}
        losses["contrastive"], _ = clip_loss(out["image_embeddings"], out["text_embeddings"], out["logit_scale"])
        losses["caption"], caption = caption_loss(out["caption_logits"], batch["token_ids"])
        losses["vqa"], vqa = masked_softmax_cross_entropy(out["qa_logits"], batch["qa_ids"], batch["qa_weights"])
        metrics = {f"loss_{name}": value for name, value in losses.items()}
        metrics.update(logit_scale=out["logit_scale"], caption_token_accuracy=caption["accuracy"],
                       caption_perplexity=caption["perplexity"], vqa_token_accuracy=vqa["accuracy"])
        return sum(weight * losses[name] for name, weight in self.loss_weights), metrics

    def encode_images(self, params: Any, images: Array) -> Array:
        return self.model.apply({"params": params}, normalize_images(images), method=CoCa.encode_image)

    def encode_texts(self, params: Any, token_ids: Array) -> Array:
        return self.model.apply({"params": params}, token_ids, method=CoCa.encode_text)

    def _generate(self, config: Any, max_len: int, beam_size: int = 1):
        """A jitted (params, uint8 images[, prompt ids, prompt lengths]) -> token ids [b, max_len]."""

        def run(params, images, prompt_ids=None, prompt_lengths=None):
            kwargs = dict(max_len=max_len, start_id=START_ID, eos_id=EOS_ID)
            if prompt_ids is not None:
                return greedy_search(self.model, params, normalize_images(images), prompt_ids=prompt_ids,
                                     prompt_lengths=prompt_lengths, **kwargs)
            return generate(self.model, params, normalize_images(images), beam_size=beam_size,
                            length_penalty=config.eval.length_penalty, **kwargs)

        return jax.jit(run)

    def evaluate(self, params: Any, data: Any, config: Any, split: str, return_details: bool = False):
        """Retrieval and zero-shot (as CLIP), caption metrics, generative VQA accuracy on `split`."""
        results, details = evaluate_clip(self, params, data, config, split=split, return_details=True)

        # Captioning: one caption per image of the split.
        caption = self._generate(config, config.data.text_len, config.eval.beam_size)
        bounds = list(details["first_caption"]) + [len(details["captions"])]
        references = [list(details["captions"][bounds[i]:bounds[i + 1]]) for i in range(len(details["images"]))]
        caption_results, captions = evaluate_captions(
            lambda images: caption(params, images), details["images"], references,
            list(details["scene_keys"]), data.tokenizer, data.parse_caption, config.eval.batch_size,
        )
        results.update({f"caption_{k}": v for k, v in caption_results.items()})

        # Generative VQA: the question as a prompt, the answer written after it.
        vocabulary = data.answer_vocabulary()
        answer_index = {a: i for i, a in enumerate(vocabulary)}
        qa_len = config.data.qa_len
        answer_tokens = self._generate(config, qa_len)

        def answer(images, question_ids):
            prompt = question_ids[:, :qa_len]
            lengths = (question_ids != 0).sum(axis=1) - 1  # the question's pieces, without its EOS
            tokens = np.asarray(answer_tokens(params, images, prompt, lengths))
            texts = [data.tokenizer.decode(row[n:]) for row, n in zip(tokens, lengths)]
            return np.asarray([answer_index.get(t, -1) for t in texts], np.int64)

        results.update(evaluate_vqa(answer, data, config, split, vocabulary))
        results = {k: float(v) for k, v in results.items()}
        details.update(generated_captions=captions, question_types=data.question_types,
                       parse_caption=data.parse_caption)
        return (results, details) if return_details else results

    @staticmethod
    def report(workdir: str, results: dict, details: dict, config: Any) -> None:
        write_artifacts(workdir, results, details, config)
        write_results(workdir, {"split": config.eval.split, **results}, results_filename(config.eval.split))
        write_captions(workdir, config.eval.split, details["generated_captions"],
                       list(details["scene_keys"]), details["parse_caption"])
        print(format_table([{
            "exact scene match": results["caption_exact_scene_match"],
            "BLEU-4": results["caption_bleu_4"], "CIDEr": results["caption_cider"],
            "BLEU-1": results["caption_bleu_1"],
        }], title=f"Captioning on shapes/{config.eval.split} ({len(details['images'])} images, "
                  f"{'greedy' if config.eval.beam_size == 1 else f'beam {config.eval.beam_size}'})"))
        print(format_table(vqa_rows(results, details["question_types"]),
                           title=f"Generative VQA accuracy on shapes/{config.eval.split}"))
