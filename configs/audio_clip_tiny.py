"""Audio-text CLIP on the synthetic `sounds` clips, sized for 2 CPU cores.

    python train.py --config configs/audio_clip_tiny.py --workdir runs/audio_clip_tiny

A 4-layer Audio Spectrogram Transformer reads 1 s of 8 kHz samples: the log-mel spectrogram
(a frame every 125 samples, 32 mel bins) is computed inside the model, on the
device, and cut into patches of 4 frames x all 32 bins (16 time steps = 16 tokens). A
caption names each event's length, pitch and kind, in order ("a short high beep then a long low
hiss"). Retrieval is scored on 1000 test clips (a hit: the same events in the same order) and on
`compositional_test`, whose clips hold pitch-kind pairs never trained on.
"""

import jax
import ml_collections

from mmjax.data.audio import SpectrogramConfig
from mmjax.models.audio import AudioTransformer
from mmjax.models.text import TextTransformer
from mmjax.training.multimodal_task import MultiModalContrastiveTask


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # The audio world (mmjax.data.sounds), built on first use into data_dir.
    config.data.name = "sounds"
    config.data.data_dir = "data"
    config.data.tokenizer = ""
    config.data.sample_rate = 8000
    config.data.num_train = 10_000
    config.data.vocab_size = 256
    config.data.text_len = 28
    # A sound has no left and right to mirror.
    config.data.flip_probability = 0.0
    config.data.num_threads = 1
    config.data.cache_decoded = True

    config.task = MultiModalContrastiveTask

    config.model = ml_collections.ConfigDict()
    config.model.embed_dim = 128
    config.model.modalities = ("audio", "text")
    config.model.pairs = (("audio", "text"),)
    config.model.towers = ml_collections.ConfigDict()
    # 8000 samples -> 1 + 8000 // 125 = 65 frames, of which 64 are kept.
    config.model.towers.audio = ml_collections.ConfigDict(dict(
        module=AudioTransformer, spectrogram=SpectrogramConfig(sample_rate=8000, n_fft=256, hop_length=125, n_mels=32),
        num_frames=64, patch_frames=4, patch_bins=32, width=128, depth=4, num_heads=4, mlp_dim=512,
        activation=jax.nn.relu, unroll=True,
    ))
    config.model.towers.text = ml_collections.ConfigDict(dict(
        module=TextTransformer, vocab_size=256, max_len=28, width=128, depth=2, num_heads=4, mlp_dim=512,
        activation=jax.nn.relu, unroll=True,
    ))

    config.batch_size = 256
    config.num_steps = 1000

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=50, weight_decay=0.1,
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, skip_nonfinite_steps=0, lr_mults=(),
    ))
    config.grad_accum_steps = 1
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 500
    config.keep_checkpoints = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "test"
    config.eval.during_training_split = "validation"
    config.eval.batch_size = 256
    return config
