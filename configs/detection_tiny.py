"""Open-vocabulary detection on `shapes` (OWL-ViT) from a clip_tiny run's towers.

    python train.py --config configs/clip_tiny.py --workdir runs/clip_tiny          # first: CLIP
    python train.py --config configs/detection_tiny.py --workdir runs/detection_tiny
    python -m mmjax.detect --checkpoint runs/detection_tiny --config configs/detection_tiny.py \
        --images DIR --queries "red circle,blue square"

clip_tiny's image tower (48 px images, 16 px patches: one token per cell of the 3x3 scene grid,
so each token answers for the object in its cell) and its projection start the detector's image
side; its text tower and projection embed the queries and stay frozen, so a phrase held out of
training ("a blue cross") lands where CLIP put it. Each training image is asked for its own
classes and for negatives up to `num_queries`; the held-out colour–shape pairs are never asked.
Evaluation asks every image for all 30 classes, on the test split and on `compositional_test`.
"""

import ml_collections

from configs import clip_tiny
from mmjax.training.detection_task import DetectionTask


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    config.task = DetectionTask
    clip_model = config.model

    # Boxes and queries: up to 3 boxes per image (the dataset's most objects per scene); each image gets
    # its own classes first and absent ones up to num_queries; phrases like "a red circle".
    config.data.max_boxes = 3
    config.data.num_queries = 8
    config.data.query_len = 8

    config.model = ml_collections.ConfigDict(dict(
        image=clip_model.image, text=clip_model.text, embed_dim=clip_model.embed_dim, box_hidden=256,
    ))
    config.init_from = ml_collections.ConfigDict(dict(
        workdir="runs/clip_tiny",
        subtrees=("image_encoder", "image_projection", "text_encoder", "text_projection"),
    ))
    config.freeze = ("^text_encoder/", "^text_projection/")
    # λ of the set loss (mmjax.losses.DetectionLossWeights): Deformable DETR's.
    config.detection_loss = ml_collections.ConfigDict(dict(class_weight=2.0, l1_weight=5.0, giou_weight=2.0))

    config.batch_size = 64
    config.num_steps = 3000
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    # The pre-trained image tower moves at a third of the heads' rate.
    config.optimizer.lr_mults = (("^image_encoder/", 0.3),)
    config.checkpoint_every = 1000
    config.log_every = 100

    del config.eval.prompt_templates, config.eval.retrieval_hit
    config.eval.batch_size = 250
    config.eval.max_detections = 100
    # On the test split, evaluate compositional_test too (results.json's compositional_* keys).
    config.eval.with_compositional = True
    return config
