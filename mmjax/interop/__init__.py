"""Pretrained weights in and out: open_clip / OpenAI and Hugging Face CLIP checkpoints.

    from mmjax.interop import load_open_clip, load_hf_clip

    clip = load_hf_clip("clip-vit-base-patch32")          # model.safetensors + config.json
    clip = load_open_clip("vit_base_patch32_clip_224.openai")   # open_clip_model.safetensors + config
    out = clip.model.apply({"params": clip.params}, images, token_ids)

Each importer maps the PyTorch state dict onto mmjax's `CLIP(ViT, TextTransformer)` tensor by
tensor (the tables are in the module docstrings of `open_clip.py` and `hf_clip.py`), builds the
matching mmjax config (QuickGELU or GELU, LayerNorm epsilon, class-token and end-of-text pooling)
and checks both ways: every key of the checkpoint is used and every mmjax parameter is filled with
the right shape, or the error names the key. `save_open_clip` / `save_hf_clip` write mmjax weights
back in either format; import then export gives back the same bits.

The tests (tests/interop/) build the PyTorch models themselves at small sizes with random weights
and check that the mmjax model gives the same embeddings and logits (relative error < 1e-5).
`mmjax.interop.preprocess` prepares images as the original models do, and
`mmjax.data.clip_tokenizer` gives their token ids.
"""

from mmjax.interop.hf_clip import load_hf_clip, mmjax_to_hf, save_hf_clip
from mmjax.interop.open_clip import load_open_clip, mmjax_to_open_clip, save_open_clip
from mmjax.interop.preprocess import ImagePreprocessing
from mmjax.interop.weights import ImportedCLIP

__all__ = [
    "ImagePreprocessing",
    "ImportedCLIP",
    "load_hf_clip",
    "load_open_clip",
    "mmjax_to_hf",
    "mmjax_to_open_clip",
    "save_hf_clip",
    "save_open_clip",
]
