"""DALL-E-tiny: draw a `shapes` picture from its caption, over the codes of `configs/vq_tiny.py`.

    python train.py --config configs/vq_tiny.py --workdir runs/vq_tiny          # stage 1
    python train.py --config configs/dalle_tiny.py --workdir runs/dalle_tiny    # stage 2
    python eval.py --config configs/dalle_tiny.py --workdir runs/dalle_tiny \\
        --config.eval.split=compositional_test        # its whole guidance sweep
    python -m mmjax.generate --checkpoint runs/dalle_tiny --config configs/dalle_tiny.py \\
        --prompt "a large red circle at the top left" --num 8

A transformer reads the caption's 32 tokens (one bidirectional block, then three causal ones over
[caption; codes]) and writes the picture's 6x6 = 36 codes one at a time
(`mmjax/models/text_to_image.py`); the frozen VQ-VAE decodes them. The caption is
dropped (replaced by the null text) for 10% of the training examples, so sampling can use
classifier-free guidance. The evaluation samples 8 pictures for each of 100 test captions and
scores them with the scene parser and with a separately trained clip_tiny (`runs/clip_tiny`,
`make train`), at the guidance scale below and across a sweep, on the test split and on
`compositional_test` (README, "Text-to-image").
"""

import jax
import jax.numpy as jnp
import ml_collections

from configs import clip_tiny, vq_tiny
from mmjax.training.text_to_image_task import TextToImageTask


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()  # the same data, tokenizer and text length (32)
    config.task = TextToImageTask
    config.model = ml_collections.ConfigDict()
    # The tokenizer's architecture must be the one vq_tiny trained (its weights are loaded).
    config.model.tokenizer = vq_tiny.get_config().model.tokenizer
    # text_depth: bidirectional blocks that encode the caption before the `depth` causal blocks
    # read it. One text block in place of a fourth causal one binds each object's words to its
    # cell: over one tokenizer, test scene_match 0.97 against 0.41 for four causal blocks, whose
    # samples drew well-formed objects in each other's cells; 0.97 / 0.95 / 0.985 / 0.98 over
    # four vq_tiny seeds, and the step is faster (fewer tokens go through it; docs/text_to_image.md).
    config.model.prior = ml_collections.ConfigDict(dict(
        vocab_size=config.data.vocab_size, width=256, depth=3, num_heads=8, mlp_dim=1024,
        activation=jax.nn.relu, dropout_rate=0.0, unroll=True, text_depth=1,
        # jnp.bfloat16 computes in bfloat16 (parameters and logits stay float32): for accelerators;
        # on a CPU it was no faster here (docs/text_to_image.md).
        dtype=jnp.float32,
    ))
    # The stage-1 run whose `tokenizer/` parameters are loaded when this run starts.
    config.init_from = ml_collections.ConfigDict(dict(workdir="runs/vq_tiny", subtrees=("tokenizer",)))
    # Probability p that a training caption is replaced by the null text (classifier-free guidance).
    config.text_dropout = 0.1

    config.batch_size = 64
    # 1400 steps at a peak of 2e-3, chosen on the validation split: at 1e-3 / 2e-3 / 4e-3 its
    # scene_match was 0.546 / 0.695 / 0.241 (s = 1.5, temperature 0.5); 1400 steps keep the whole
    # run, training and evaluation, under 10 minutes on a 2-core CPU (README, "Text-to-image").
    config.num_steps = 1400
    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2e-3, end_learning_rate=1e-5, warmup_steps=100, weight_decay=0.05,
        b1=0.9, b2=0.98, eps=1e-8, grad_clip_norm=1.0, skip_nonfinite_steps=0, lr_mults=(),
    ))
    config.checkpoint_every = 500

    # One batch of 100 captions x 8 samples: on a CPU the cached steps are faster in one large batch.
    config.eval.batch_size = 800
    # Prompts: the first caption of each of the split's first num_captions scenes.
    config.eval.num_captions = 100
    config.eval.samples_per_caption = 8
    # Sampling: softmax(top_k(logits) / temperature); top_k = 0 keeps all codes. On the validation
    # split (s = 1.5) temperature 1 / 0.7 / 0.5 / 0.3 gave scene_match 0.68 / 0.75 / 0.78 / 0.80,
    # and two samples of one caption differ by 16.4 / 15.4 / 14.2 / 11.1 levels per pixel: 0.5
    # keeps most of the variety for most of the gain (on test, 0.81 at both 0.5 and 0.3).
    config.eval.temperature = 0.5
    config.eval.top_k = 0
    # s of classifier-free guidance (1: the conditional model alone), and the scales also reported.
    # 1.5 is the best of the sweep on the validation split (scene_match 0.73 / 0.78 / 0.76 / 0.67
    # at s = 1 / 1.5 / 2 / 3; over the λ = 0 tokenizer too: 0.61 / 0.70 / 0.67 / 0.58).
    config.eval.guidance_scale = 1.5
    # Each scale samples and judges 800 pictures (about 28 s); s = 3 (test 0.668 / 0.955, below
    # s = 1) is left to eval.py --config.eval.guidance_sweep='(1.0,1.5,2.0,3.0)', which keeps the
    # run under 10 minutes on the slower days of this CPU (10 min 12 s with it).
    config.eval.guidance_sweep = (1.0, 1.5, 2.0)
    # compositional_test at the configured scale only, for the same reason; sweep it with
    # eval.py --config.eval.split=compositional_test.
    config.eval.sweep_compositional = False
    config.eval.seed = 0
    # The independent judge of CLIP R-precision: a clip_tiny run ('' skips it).
    config.eval.clip_judge = ml_collections.ConfigDict(dict(workdir="runs/clip_tiny", config=clip_tiny.get_config()))
    return config
