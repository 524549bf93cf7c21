"""CLIP-tiny on the synthetic `shapes` benchmark: the `make train` default, sized for 2 CPU cores.

    python train.py --config configs/clip_tiny.py --workdir runs/clip_tiny

A 4-layer ViT (48 px images, 16 px patches: one patch token per cell of the 3x3 scene grid) and a
2-layer causal text tower, trained with the CLIP loss. On a 2-core CPU it trains in a few minutes and
retrieves the right scene among 1000 test scenes (see the README's results table).
"""

import jax
import ml_collections

from mmjax.training.tasks import ContrastiveTask


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Seed of parameter initialisation, dropout and the data order.
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # Which dataset: "shapes" (the synthetic world, built on first use), the name of a dataset
    # built with `python -m mmjax.data.build --name NAME`, or a TFDS image-text set ("coco_captions").
    config.data.name = "shapes"
    # Where datasets live.
    config.data.data_dir = "data"
    # A sentencepiece .model to use (`python -m mmjax.data.tokenizer`); "" = the dataset's own.
    config.data.tokenizer = ""
    # Image side in pixels; a multiple of the patch size.
    config.data.image_size = 48
    # Split sizes of the generated dataset.
    config.data.num_train = 20_000
    config.data.num_validation = 1_000
    config.data.num_test = 1_000
    config.data.num_compositional_test = 1_000
    # Tokenizer size (sentencepiece may stop short of it on the small grammar) and padded text length.
    config.data.vocab_size = 256
    config.data.text_len = 32
    # Horizontal flips, with "left"/"right" swapped in the caption.
    config.data.flip_probability = 0.5
    # Loader threads (batches are prepared while the device computes).
    config.data.num_threads = 1
    # Keep decoded examples in memory (~0.3 GB at 48 px): each is read from disk and decoded
    # once, not once per epoch, which leaves the CPU to the train step.
    config.data.cache_decoded = True

    # What is learned: the model, its loss, its preprocessing and its evaluation.
    config.task = ContrastiveTask

    config.model = ml_collections.ConfigDict()
    # Width of the shared image-text embedding space.
    config.model.embed_dim = 128
    # ReLU rather than GELU: on a CPU, XLA's erf/tanh GELU costs about 40% of this small step,
    # and at this scale ReLU trains as well. unroll=True: the scanned layers compile as straight
    # code (parameters still stacked), about 15% faster steps on a CPU (BENCHMARKS.md).
    config.model.image = ml_collections.ConfigDict(dict(
        patch_size=16, width=128, depth=4, num_heads=4, mlp_dim=512,
        pool="mean", position_embedding="sincos2d", activation=jax.nn.relu, unroll=True,
    ))
    config.model.text = ml_collections.ConfigDict(dict(
        vocab_size=256, max_len=32, width=128, depth=2, num_heads=4, mlp_dim=512,
        activation=jax.nn.relu, unroll=True,
    ))

    # Global batch (split over all devices) and number of optimizer steps.
    config.batch_size = 256
    config.num_steps = 400

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=50, weight_decay=0.1,
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0,
        # > 0: skip (up to this many consecutive) steps whose gradients are NaN/Inf instead of
        # stopping at the first one.
        skip_nonfinite_steps=0,
        # (regex, m) pairs: parameters whose names match learn at m times the rate (first match).
        lr_mults=(),
    ))
    # > 1: compute each step in this many microbatches (same update, less activation memory).
    config.grad_accum_steps = 1

    # Device mesh (mmjax/training/sharding.py): data parallel × fully sharded (FSDP) × tensor
    # parallel; the product is the device count and -1 takes the remaining devices. Here: pure
    # data parallelism over every device. E.g. dict(data=2, fsdp=-1, tensor=2) on 16 devices.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.log_every = 50
    config.eval_every = 0  # 0: evaluate only at the end
    config.checkpoint_every = 200
    config.keep_checkpoints = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "test"
    config.eval.during_training_split = "validation"
    config.eval.batch_size = 256
    # What a retrieval hit shares with the query: "item" (the same scene, or image) or "label".
    config.eval.retrieval_hit = "item"
    # Zero-shot prompts in the captions' own phrasing (no final period, which captions never
    # have), naming the size too: the label is the class of the *largest* object.
    config.eval.prompt_templates = (
        "a large {}", "there is a large {}", "a big {}", "a picture of a large {}",
        "an image of a big {}", "this image shows a large {}",
    )
    return config
