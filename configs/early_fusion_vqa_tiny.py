"""Early fusion (single stream, ViLT-like) VQA on `shapes`, sized for 2 CPU cores.

    python train.py --config configs/early_fusion_vqa_tiny.py --workdir runs/early_fusion_vqa_tiny
    python eval.py --config configs/early_fusion_vqa_tiny.py --workdir runs/early_fusion_vqa_tiny \
        --config.eval.split=compositional_test

One 4-layer transformer reads [CLS; 9 image patch tokens; the question's tokens], with full
attention over both modalities, and classifies the answer from the [CLS] output. The data,
optimizer and loop settings are clip_tiny's; the tokenizer is fitted on captions *and* questions.
"""

import jax
import ml_collections

from configs import clip_tiny
from mmjax.models.fusion import build_early_fusion
from mmjax.training.vqa_task import VqaTask

# The answer classes fitted on `shapes` (55 with <unk>), with room for a variant's extra answers.
NUM_ANSWERS = 64

# Sin-cos position embeddings with a short longest wavelength: with the usual 10 000, the 9 cells
# of a 3x3 patch grid get nearly identical embeddings (cosine 0.98 between neighbours) and the
# models learn *where* things are hundreds of steps late; questions and captions name positions.
POSITION_TEMPERATURE = 10.0


def image_tower() -> ml_collections.ConfigDict:
    """clip_tiny's ViT with position embeddings that tell the 9 cells apart."""
    vit = clip_tiny.get_config().model.image
    vit.position_temperature = POSITION_TEMPERATURE
    return vit


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    config.data.tokenizer_corpus = "captions_and_questions"
    # Questions are shorter than captions (at most 13 pieces + EOS on `shapes`).
    config.data.question_len = 16

    config.task = VqaTask
    config.build_model = build_early_fusion
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=256, max_text_len=16, patch_size=16, width=128, depth=4, num_heads=4,
        mlp_dim=512, num_answers=NUM_ANSWERS, position_embedding="sincos2d",
        position_temperature=POSITION_TEMPERATURE, activation=jax.nn.relu,
        # The layers compile as straight code, as clip_tiny's towers (about 15% faster steps).
        unroll=True,
    ))
    # Smaller batches, more steps: at this size the number of updates, not the batch, limits.
    config.batch_size = 128
    # About 0.19 s per step on 2 cores: 2800 steps stay within a 10-minute budget.
    config.num_steps = 2800
    config.optimizer.weight_decay = 0.05
    config.checkpoint_every = 1400
    del config.eval.prompt_templates
    return config
