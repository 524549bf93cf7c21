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


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    config.data.tokenizer_corpus = "captions_and_questions"
    # Questions are shorter than captions (at most 13 pieces + EOS on `shapes`).
    config.data.question_len = 16

    config.task = VqaTask
    config.build_model = build_early_fusion
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=256, max_text_len=16, patch_size=16, width=128, depth=4, num_heads=4,
        mlp_dim=512, num_answers=NUM_ANSWERS, position_embedding="sincos2d", activation=jax.nn.relu,
    ))
    # Smaller batches, more steps: at this size the number of updates, not the batch, limits.
    config.batch_size = 128
    config.num_steps = 800
    config.optimizer.weight_decay = 0.05
    config.checkpoint_every = 400
    del config.eval.prompt_templates
    return config
