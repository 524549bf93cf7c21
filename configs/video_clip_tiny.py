"""Video-text CLIP on the synthetic `moving_shapes` clips, sized for 2 CPU cores.

    python train.py --config configs/video_clip_tiny.py --workdir runs/video_clip_tiny

A 3-layer ViViT (8 frames of 32 px; tubelets of 4 frames x 8 px: 2 time steps x 16 places = 32
tokens, joint space-time attention) and a 2-layer causal text tower, trained with the CLIP loss.
A two-object clip has two slots of 4 frames, one per move, so each time step holds one whole move.
(Tubelets of 2 frames x 16 px, 16 tokens through 4 layers, were cheaper per step but reached only
R@1 0.905 / 0.898 in 1200 steps: every miss was a two-object clip whose objects' properties got
swapped or confused, README.)
A caption names each object's size, colour, shape and direction, and the order of the moves
("a large red circle moves left, then a small blue cross moves up"): a single frame shows none of
the directions, so the tower has to read motion across its time steps. Retrieval is scored on
1000 test clips (a hit: the same scene) and on `compositional_test`, whose clips show
shape-direction pairs never trained on.
"""

import jax
import ml_collections

from mmjax.models.text import TextTransformer
from mmjax.models.video import VideoTransformer
from mmjax.training.multimodal_task import MultiModalContrastiveTask


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # The video world (mmjax.data.moving_shapes), built on first use into data_dir.
    config.data.name = "moving_shapes"
    config.data.data_dir = "data"
    config.data.tokenizer = ""
    # Frame side in pixels and frames per clip (fixed by the world; a multiple of the tubelet).
    config.data.image_size = 32
    config.data.num_frames = 8
    config.data.num_train = 10_000
    config.data.vocab_size = 256
    config.data.text_len = 28
    # Mirrored clips with "left"/"right" swapped in the caption: a clip moving left becomes one
    # moving right, which doubles the direction-shape combinations seen.
    config.data.flip_probability = 0.5
    config.data.num_threads = 1
    config.data.cache_decoded = True

    config.task = MultiModalContrastiveTask

    config.model = ml_collections.ConfigDict()
    config.model.embed_dim = 128
    config.model.modalities = ("video", "text")
    config.model.pairs = (("video", "text"),)
    config.model.towers = ml_collections.ConfigDict()
    config.model.towers.video = ml_collections.ConfigDict(dict(
        module=VideoTransformer, patch_size=8, tubelet_size=4, width=128, depth=3, num_heads=4, mlp_dim=512,
        activation=jax.nn.relu, unroll=True,
    ))
    config.model.towers.text = ml_collections.ConfigDict(dict(
        module=TextTransformer, vocab_size=256, max_len=28, width=128, depth=2, num_heads=4, mlp_dim=512,
        activation=jax.nn.relu, unroll=True,
    ))

    config.batch_size = 256
    config.num_steps = 850

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=50, weight_decay=0.1,
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, skip_nonfinite_steps=0, lr_mults=(),
    ))
    config.grad_accum_steps = 1
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 425
    config.keep_checkpoints = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "test"
    config.eval.during_training_split = "validation"
    config.eval.batch_size = 256
    return config
