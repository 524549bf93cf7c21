"""CoCa on `shapes`: contrastive + captioning + generative VQA, sized for 2 CPU cores.

    python train.py --config configs/coca_tiny.py --workdir runs/coca_tiny
    python eval.py --config configs/coca_tiny.py --workdir runs/coca_tiny \
        --config.eval.split=compositional_test
    python eval.py --config configs/coca_tiny.py --workdir runs/coca_tiny --config.eval.beam_size=4

clip_tiny's image tower and causal text tower, plus a 2-layer caption decoder that cross-attends
to the 9 image tokens. The evaluation generates a caption per test image (greedy; beam search with
eval.beam_size > 1) and parses it back into a scene, and answers every test question by writing
the answer after the question.
"""

import ml_collections

from configs import early_fusion_vqa_tiny
from mmjax.training.coca_task import CocaTask


def get_config() -> ml_collections.ConfigDict:
    config = early_fusion_vqa_tiny.get_config()
    clip = early_fusion_vqa_tiny.clip_tiny.get_config()
    # Captions take up to 32 pieces with the question-aware tokenizer; question + answer up to 16.
    config.data.text_len = 36
    config.data.qa_len = 20
    # Questions answered per image and step (of the 7 each `shapes` scene has). 4 made each step
    # 1.6x slower on 2 cores without learning more per step than 1: the steps, not the number of
    # answers, limit this run.
    config.data.qa_per_image = 1
    config.task = CocaTask
    del config.build_model
    config.model = ml_collections.ConfigDict(dict(
        embed_dim=128,
        image=early_fusion_vqa_tiny.image_tower(),
        text=dict(clip.model.text, max_len=config.data.text_len),
        decoder=dict(max_len=config.data.text_len, width=128, depth=2, num_heads=4, mlp_dim=512,
                     activation=clip.model.image.activation, unroll=True),
    ))
    config.loss_weights = ml_collections.ConfigDict(dict(contrastive=1.0, caption=2.0, vqa=1.0))
    # Batch 64 and 2600 steps fill the 10-minute budget on 2 cores (about 0.22 s per step). At the
    # same minutes, batch 128 for 1300 steps (peak learning rate 2e-3) wrote exact captions for
    # 0.84 of the test scenes and batch 64 for 2300 steps 0.89: the number of updates limits here.
    config.batch_size = 64
    config.num_steps = 2600
    config.checkpoint_every = 1300
    config.eval.beam_size = 1
    config.eval.length_penalty = 0.0
    config.eval.prompt_templates = clip.eval.prompt_templates
    return config
