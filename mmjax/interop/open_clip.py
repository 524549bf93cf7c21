"""open_clip (and OpenAI) CLIP checkpoints <-> mmjax CLIP.

open_clip's `CLIP` with a ViT image tower is OpenAI's model, parameter for parameter, so its
state dict (what `model.state_dict()` gives, OpenAI's released weights included) maps onto mmjax's
`CLIP(ViT, TextTransformer)` one tensor at a time. For layer i of a tower of width W, heads h,
MLP width M, embedding E, patch p, N patches, vocabulary V and context length L:

    open_clip                                   mmjax (image_encoder/... for visual.*)
    visual.conv1.weight          [W, 3, p, p]   image_encoder/patch_embed/conv/kernel  [p, p, 3, W]
    visual.class_embedding       [W]            image_encoder/cls_token                [1, 1, W]
    visual.positional_embedding  [1+N, W]       image_encoder/pos_embed/embedding      [1+N, W]
    visual.ln_pre                               image_encoder/ln_pre        (absent with no_ln_pre)
    visual.transformer.resblocks.i.ln_1         encoder/blocks/ln_attn                 [i, W]
      .attn.in_proj_weight       [3W, W]        encoder/blocks/attn/{query,key,value}/kernel
                                                  [i, W, h, W/h]  (rows 0:W, W:2W, 2W:3W)
      .attn.in_proj_bias         [3W]           encoder/blocks/attn/{query,key,value}/bias [i, h, W/h]
      .attn.out_proj.weight      [W, W]         encoder/blocks/attn/out/kernel         [i, h, W/h, W]
      .ln_2                                     encoder/blocks/ln_mlp
      .mlp.c_fc / .mlp.c_proj    [M, W] / [W, M] encoder/blocks/mlp/fc1 / fc2 (transposed)
    visual.ln_post                              image_encoder/encoder/ln_final
    visual.proj                  [W, E]         image_projection/kernel                [W, E]
    token_embedding.weight       [V, W]         text_encoder/token_embed/embed/embedding
    positional_embedding         [L, W]         text_encoder/pos_embed/embedding
    transformer.resblocks.i.*                   text_encoder/encoder/blocks/*
    ln_final                                    text_encoder/encoder/ln_final
    text_projection              [W, E]         text_projection/kernel
    logit_scale                  []             logit_scale          (both store log(scale))
    logit_bias                   []             logit_bias           (only models that have one)

LayerNorm weight/bias are mmjax's scale/bias. The ViT's ln_post on the class token equals the
encoder's final LayerNorm on every token followed by taking the class token.

What the weights do not say is read from open_clip's model config (the JSON of
`open_clip/model_configs/<name>.json`, or `model_cfg` of the `open_clip_config.json` published
beside the weights): the number of heads, QuickGELU or GELU, the text pooling. Without a config,
the shapes give everything else and heads = width / 64 (OpenAI's rule); the activation must then be
named (`quick_gelu=True` for OpenAI's weights and open_clip's "-quickgelu" models).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np

from mmjax.interop.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocessing
from mmjax.interop.weights import (
    ImportedCLIP,
    Params,
    StateDictReader,
    activation_from_name,
    activation_name,
    attention_from_torch,
    attention_to_torch,
    check_exportable,
    check_params_match,
    clip_config,
    conv_to_kernel,
    kernel_to_conv,
    layer_norm,
    mlp_from_torch,
    mlp_to_torch,
    read_state_dict,
    stack_layers,
    unstack_layers,
    write_safetensors,
)

WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_NAME = "open_clip_config.json"

# open_clip settings mmjax reproduces only at these values (anything else is another architecture).
_VISION_FIXED = {
    "ls_init_value": None, "attentional_pool": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "block_type": ("default", None),
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None,
}
_TEXT_FIXED = {
    "ls_init_value": None, "embed_cls": False, "final_ln_after_pool": False, "proj_bias": False,
    "proj_type": "linear", "act_kwargs": None, "block_type": ("default", None), "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "hf_model_name": None, "pool_type": ("argmax", "eos", "first"),
}
# Settings read below, and settings that only matter for training or for other towers.
_VISION_READ = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "no_ln_pre", "norm_kwargs"}
_VISION_IGNORED = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",
                   "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
                   "timm_drop_path"}
_TEXT_READ = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "eos_id",
              "no_causal_mask", "norm_kwargs"}
_TEXT_IGNORED = {"output_tokens", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
                 "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_TOP_READ = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias"}
_TOP_FIXED = {"custom_text": False, "nonscalar_logit_scale": False}
_TOP_IGNORED = {"cast_dtype", "output_dict"}


# ----------------------------------------------------------------------------------------------
# Import.


def load_open_clip(
    path: str | os.PathLike,
    model_config: dict | str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
) -> ImportedCLIP:
    """Loads open_clip CLIP weights into an mmjax CLIP.

    Args:
      path: a weights file (`.safetensors`, or `.bin` / `.pt` / `.pth` read with
        `torch.load(weights_only=True)`, which needs torch), or a folder holding
        `open_clip_model.safetensors` (or `open_clip_pytorch_model.bin`), as published on model hubs.
      model_config: open_clip's model config: a dict, or a JSON file (a `model_configs/*.json` or
        an `open_clip_config.json`). Defaults to the `open_clip_config.json` beside the weights.
      quick_gelu: needed only without a config: True for OpenAI's weights and "-quickgelu" models.

    Returns:
      An `ImportedCLIP`: the mmjax config, the parameters and the image preprocessing.

    Example (OpenAI's ViT-B/32 from the folder of open_clip's published copy):
      >>> clip = load_open_clip("vit_base_patch32_clip_224.openai")  # doctest: +SKIP
      >>> clip.model.apply({"params": clip.params}, images, token_ids)  # doctest: +SKIP
    """
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in WEIGHTS_NAMES if os.path.exists(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"no open_clip weights in {path}: expected one of {WEIGHTS_NAMES}")
        path = found[0]
    if model_config is None and os.path.exists(os.path.join(folder, CONFIG_NAME)):
        model_config = os.path.join(folder, CONFIG_NAME)
    model_cfg, preprocess_cfg = read_model_config(model_config)
    config, params = open_clip_to_mmjax(read_state_dict(path), model_cfg, quick_gelu, source=path)
    image_size = _image_size(params)
    return ImportedCLIP(config, params, preprocessing_from_config(preprocess_cfg, image_size))


def read_model_config(model_config: dict | str | os.PathLike | None) -> tuple[dict | None, dict]:
    """(model config, preprocess config) from a dict or a JSON file in either of open_clip's layouts."""
    if model_config is None:
        return None, {}
    if not isinstance(model_config, dict):
        with open(model_config, encoding="utf-8") as f:
            model_config = json.load(f)
    if "model_cfg" in model_config:
        return model_config["model_cfg"], model_config.get("preprocess_cfg", {})
    return model_config, {}


def preprocessing_from_config(preprocess_cfg: dict, image_size: int) -> ImagePreprocessing:
    """open_clip's preprocess config (mean, std, interpolation, resize_mode) -> ImagePreprocessing."""
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode != "shortest":
        raise ValueError(
            f"open_clip preprocess resize_mode {resize_mode!r} is not supported: mmjax resizes the "
            "shortest side and center crops ('shortest')"
        )
    return ImagePreprocessing(
        image_size=image_size,
        mean=tuple(preprocess_cfg.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(preprocess_cfg.get("std", OPENAI_CLIP_STD)),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        convention="torchvision",
    )


def open_clip_to_mmjax(
    state_dict: dict[str, np.ndarray],
    model_config: dict | None = None,
    quick_gelu: bool | None = None,
    source: str = "the open_clip state dict",
) -> tuple[ml_collections.ConfigDict, Params]:
    """An open_clip state dict (+ its model config) -> (mmjax model config, parameters)."""
    _check_architecture(state_dict, source)
    config = _mmjax_config(state_dict, model_config, quick_gelu, source)
    image, text = config.image, config.text
    reader = StateDictReader(state_dict, source)
    take = reader.take
    W, Wt, E = image.width, text.width, config.embed_dim
    p, n_pos = image.patch_size, state_dict["visual.positional_embedding"].shape[0]

    def tower_blocks(prefix: str, width: int, mlp: int, depth: int, heads: int) -> Params:
        layers = []
        for i in range(depth):
            b = f"{prefix}.resblocks.{i}."
            qkv_w, qkv_b = take(b + "attn.in_proj_weight", (3 * width, width)), take(b + "attn.in_proj_bias", (3 * width,))
            # The fused projection stacks the query, key and value rows (PyTorch's MultiheadAttention).
            q, k, v = [(qkv_w[j * width:(j + 1) * width], qkv_b[j * width:(j + 1) * width]) for j in range(3)]
            out = (take(b + "attn.out_proj.weight", (width, width)), take(b + "attn.out_proj.bias", (width,)))
            layers.append({
                "ln_attn": layer_norm(take(b + "ln_1.weight", (width,)), take(b + "ln_1.bias", (width,))),
                "attn": attention_from_torch(q, k, v, out, heads),
                "ln_mlp": layer_norm(take(b + "ln_2.weight", (width,)), take(b + "ln_2.bias", (width,))),
                "mlp": mlp_from_torch(
                    (take(b + "mlp.c_fc.weight", (mlp, width)), take(b + "mlp.c_fc.bias", (mlp,))),
                    (take(b + "mlp.c_proj.weight", (width, mlp)), take(b + "mlp.c_proj.bias", (width,))),
                ),
            })
        return {"blocks": stack_layers(layers)}

    def ln(name: str, width: int) -> Params:
        return layer_norm(take(name + ".weight", (width,)), take(name + ".bias", (width,)))

    image_encoder = {
        "patch_embed": {"conv": {"kernel": conv_to_kernel(take("visual.conv1.weight", (W, 3, p, p)))}},
        "cls_token": take("visual.class_embedding", (W,)).reshape(1, 1, W),
        "pos_embed": {"embedding": take("visual.positional_embedding", (n_pos, W))},
        "encoder": {**tower_blocks("visual.transformer", W, image.mlp_dim, image.depth, image.num_heads),
                    "ln_final": ln("visual.ln_post", W)},
    }
    if image.ln_pre:
        image_encoder["ln_pre"] = ln("visual.ln_pre", W)
    text_encoder = {
        "token_embed": {"embed": {"embedding": take("token_embedding.weight", (text.vocab_size, Wt))}},
        "pos_embed": {"embedding": take("positional_embedding", (text.max_len, Wt))},
        "encoder": {**tower_blocks("transformer", Wt, text.mlp_dim, text.depth, text.num_heads),
                    "ln_final": ln("ln_final", Wt)},
    }
    params = {
        "image_encoder": image_encoder,
        "text_encoder": text_encoder,
        "image_projection": {"kernel": take("visual.proj", (W, E))},
        "text_projection": {"kernel": take("text_projection", (Wt, E))},
        "logit_scale": take("logit_scale", ()),
    }
    if "logit_bias_init" in config:
        params["logit_bias"] = take("logit_bias", ())
    reader.finish()
    check_params_match(config, params, _image_size(params))
    return config, params


def _check_architecture(state_dict: dict[str, np.ndarray], source: str) -> None:
    """Names the open_clip family of an unsupported checkpoint instead of listing 200 keys."""
    keys = set(state_dict)
    families = [
        ("visual.trunk.", "a timm image tower (e.g. SigLIP or ConvNeXt models)"),
        ("visual.layer1.", "a ModifiedResNet image tower (OpenAI's RN50 family)"),
        ("text.", "a custom text tower (CustomTextCLIP: SigLIP, multilingual or HF text models)"),
        ("text_decoder.", "a CoCa captioning decoder"),
        ("visual.attn_pool.", "attentional pooling of the image tokens (CoCa)"),
    ]
    for prefix, family in families:
        if any(k.startswith(prefix) for k in keys):
            raise ValueError(
                f"{source} is an open_clip model with {family}; mmjax imports CLIP models with a "
                "ViT image tower and OpenAI's text tower (keys visual.conv1.weight, "
                "transformer.resblocks.*, token_embedding.weight)"
            )
    needed = ("visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight",
              "positional_embedding", "visual.proj", "text_projection")
    absent = [k for k in needed if k not in keys]
    if absent:
        sample = ", ".join(sorted(keys)[:5])
        raise ValueError(
            f"{source} is not an open_clip / OpenAI ViT CLIP state dict (unknown architecture): it "
            f"lacks {absent} (its first keys: {sample})"
        )


def _count_layers(state_dict: dict, prefix: str) -> int:
    layers = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    if layers != set(range(len(layers))):
        raise ValueError(f"the layers under {prefix} are not numbered 0..N-1: found {sorted(layers)}")
    return len(layers)


def _check_settings(section: dict, fixed: dict, read: set, ignored: set, where: str) -> None:
    for key, value in section.items():
        if key in read or key in ignored:
            continue
        if key not in fixed:
            raise ValueError(f"unknown open_clip setting {where}.{key}={value!r}: mmjax cannot tell "
                             "what it changes, so it does not import this model")
        allowed = fixed[key] if isinstance(fixed[key], tuple) else (fixed[key],)
        if value not in allowed:
            raise ValueError(
                f"open_clip setting {where}.{key}={value!r} is not supported by mmjax (supported: "
                f"{' or '.join(map(repr, allowed))})"
            )


def _heads(width: int, heads: int, where: str) -> int:
    if heads < 1 or width % heads:
        raise ValueError(
            f"{where}: width {width} does not split into {heads} heads; pass the model's open_clip config"
        )
    return heads


def _epsilon(cfg: dict, where: str) -> float:
    norm_kwargs = cfg.get("norm_kwargs") or {}
    unknown = set(norm_kwargs) - {"eps"}
    if unknown:
        raise ValueError(f"open_clip setting {where}.norm_kwargs {sorted(unknown)} is not supported (only eps)")
    return float(norm_kwargs.get("eps", 1e-5))


def _mmjax_config(state_dict: dict, model_cfg: dict | None, quick_gelu: bool | None,
                  source: str) -> ml_collections.ConfigDict:
    """The mmjax config of a checkpoint: shapes from the weights, the rest from the config."""
    if model_cfg is None:
        if quick_gelu is None:
            raise ValueError(
                f"{source}: without open_clip's model config the activation cannot be read from the "
                "weights: pass quick_gelu=True for OpenAI's weights and open_clip's '-quickgelu' models, "
                "quick_gelu=False for the others (or pass the model config)"
            )
        model_cfg = {"quick_gelu": quick_gelu, "vision_cfg": {}, "text_cfg": {}}
        heads_from_config = False
    else:
        heads_from_config = True
        if quick_gelu is not None and bool(model_cfg.get("quick_gelu", False)) != quick_gelu:
            raise ValueError(f"quick_gelu={quick_gelu} contradicts the model config's "
                             f"quick_gelu={model_cfg.get('quick_gelu', False)}")
    _check_settings(model_cfg, _TOP_FIXED, _TOP_READ, _TOP_IGNORED, "model")
    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    _check_settings(vision, _VISION_FIXED, _VISION_READ, _VISION_IGNORED, "vision_cfg")
    _check_settings(text, _TEXT_FIXED, _TEXT_READ, _TEXT_IGNORED, "text_cfg")
    if isinstance(vision.get("layers", 0), (list, tuple)):
        raise ValueError(f"{source}: vision_cfg.layers is a list: a ResNet image tower, which mmjax does not have")

    conv = state_dict["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    num_patches = state_dict["visual.positional_embedding"].shape[0] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"{source}: {num_patches} image positions are not a square grid")
    text_width = state_dict["token_embedding.weight"].shape[1]
    activation = activation_from_name("quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu", source)
    image_depth = _count_layers(state_dict, "visual.transformer.resblocks.")
    text_depth = _count_layers(state_dict, "transformer.resblocks.")

    def mlp_dim(prefix: str) -> int:
        key = prefix + "0.mlp.c_fc.weight"
        return state_dict[key].shape[0] if key in state_dict else 0

    # Sizes the config states must agree with the weights: a wrong config is caught here, by name.
    stated = [
        ("vision_cfg.width", vision.get("width"), width), ("vision_cfg.patch_size", vision.get("patch_size"), patch),
        ("vision_cfg.layers", vision.get("layers"), image_depth),
        ("vision_cfg.image_size", vision.get("image_size"), grid * patch),
        ("text_cfg.width", text.get("width"), text_width), ("text_cfg.layers", text.get("layers"), text_depth),
        ("text_cfg.vocab_size", text.get("vocab_size"), state_dict["token_embedding.weight"].shape[0]),
        ("text_cfg.context_length", text.get("context_length"), state_dict["positional_embedding"].shape[0]),
        ("embed_dim", model_cfg.get("embed_dim"), state_dict["visual.proj"].shape[1]),
    ]
    for name, value, actual in stated:
        if isinstance(value, (list, tuple)):
            value = value[0] if len(set(value)) == 1 else value
        if value is not None and value != actual:
            raise ValueError(f"{source}: the model config says {name}={value!r} but the weights have {actual}")

    pool = text.get("pool_type", "argmax")
    text_section = dict(
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        max_len=state_dict["positional_embedding"].shape[0],
        width=text_width, depth=text_depth,
        # open_clip's default is 8 heads; OpenAI's weights (no config) have 64-wide heads.
        num_heads=_heads(text_width, text.get("heads", 8) if heads_from_config else text_width // 64, "text tower"),
        mlp_dim=mlp_dim("transformer.resblocks."),
        causal=not text.get("no_causal_mask", False),
        pool=pool, pad_id=text.get("pad_id", 0),
        activation=activation, layer_norm_epsilon=_epsilon(text, "text_cfg"),
    )
    if pool == "eos":
        text_section["eos_id"] = text.get("eos_id", 2)
    config = clip_config(
        embed_dim=state_dict["visual.proj"].shape[1],
        image=dict(
            patch_size=patch, width=width, depth=image_depth,
            num_heads=_heads(width, width // vision.get("head_width", 64), "image tower"),
            mlp_dim=mlp_dim("visual.transformer.resblocks."),
            ln_pre="visual.ln_pre.weight" in state_dict and not vision.get("no_ln_pre", False),
            activation=activation, layer_norm_epsilon=_epsilon(vision, "vision_cfg"),
        ),
        text=text_section,
        logit_scale=float(np.asarray(state_dict.get("logit_scale", np.log(1 / 0.07)))),
        logit_bias=float(np.asarray(state_dict["logit_bias"])) if "logit_bias" in state_dict else None,
    )
    return config


def _image_size(params: Params) -> int:
    """Image side implied by the position table: p · sqrt(rows - 1)."""
    image = params["image_encoder"]
    rows = np.shape(image["pos_embed"]["embedding"])[0]
    return np.shape(image["patch_embed"]["conv"]["kernel"])[0] * math.isqrt(rows - 1)


# ----------------------------------------------------------------------------------------------
# Export.


def mmjax_to_open_clip(params: Params, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """mmjax CLIP parameters -> open_clip state dict (float32 numpy arrays), the inverse of
    `open_clip_to_mmjax`: `model.load_state_dict(...)` of open_clip's CLIP accepts it as is."""
    open_clip_model_config(params, config)  # raises for a model open_clip cannot represent
    out: dict[str, np.ndarray] = {}

    def tower(prefix: str, encoder: Params, depth: int) -> None:
        for i, block in enumerate(unstack_layers(encoder, depth)):
            b = f"{prefix}.resblocks.{i}."
            attn = attention_to_torch(block["attn"])
            out[b + "ln_1.weight"], out[b + "ln_1.bias"] = block["ln_attn"]["scale"], block["ln_attn"]["bias"]
            out[b + "attn.in_proj_weight"] = np.concatenate([attn[n][0] for n in ("query", "key", "value")])
            out[b + "attn.in_proj_bias"] = np.concatenate([attn[n][1] for n in ("query", "key", "value")])
            out[b + "attn.out_proj.weight"], out[b + "attn.out_proj.bias"] = attn["out"]
            out[b + "ln_2.weight"], out[b + "ln_2.bias"] = block["ln_mlp"]["scale"], block["ln_mlp"]["bias"]
            (fc_w, fc_b), (proj_w, proj_b) = mlp_to_torch(block["mlp"])
            out[b + "mlp.c_fc.weight"], out[b + "mlp.c_fc.bias"] = fc_w, fc_b
            out[b + "mlp.c_proj.weight"], out[b + "mlp.c_proj.bias"] = proj_w, proj_b

    image, text = params["image_encoder"], params["text_encoder"]
    out["visual.conv1.weight"] = kernel_to_conv(np.asarray(image["patch_embed"]["conv"]["kernel"]))
    out["visual.class_embedding"] = np.asarray(image["cls_token"]).reshape(-1)
    out["visual.positional_embedding"] = image["pos_embed"]["embedding"]
    if config.image.get("ln_pre", False):
        out["visual.ln_pre.weight"], out["visual.ln_pre.bias"] = image["ln_pre"]["scale"], image["ln_pre"]["bias"]
    tower("visual.transformer", image["encoder"], config.image.depth)
    ln_post = image["encoder"]["ln_final"]
    out["visual.ln_post.weight"], out["visual.ln_post.bias"] = ln_post["scale"], ln_post["bias"]
    out["visual.proj"] = params["image_projection"]["kernel"]
    out["token_embedding.weight"] = text["token_embed"]["embed"]["embedding"]
    out["positional_embedding"] = text["pos_embed"]["embedding"]
    tower("transformer", text["encoder"], config.text.depth)
    out["ln_final.weight"], out["ln_final.bias"] = text["encoder"]["ln_final"]["scale"], text["encoder"]["ln_final"]["bias"]
    out["text_projection"] = params["text_projection"]["kernel"]
    out["logit_scale"] = params["logit_scale"]
    if "logit_bias" in params:
        out["logit_bias"] = params["logit_bias"]
    return {k: np.array(v, np.float32, order="C") for k, v in out.items()}


def open_clip_model_config(params: Params, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """open_clip's model config (the JSON of its model_configs/) of an mmjax CLIP: with it,
    `open_clip.model.CLIP(**config)` builds the model the exported state dict loads into."""
    check_exportable(config, "open_clip")
    image, text = config.image, config.text
    activations = {activation_name(image.activation), activation_name(text.activation)}
    if len(activations) != 1:
        raise ValueError("open_clip uses one activation for both towers; this model mixes "
                         f"{sorted(activations)}")
    if image.width % image.num_heads:
        raise ValueError(f"image width {image.width} is not a multiple of its {image.num_heads} heads")
    for name, tower in (("image", image), ("text", text)):
        # open_clip sizes the MLP as int(width * mlp_ratio): the ratio must give mlp_dim back.
        if int(tower.width * (tower.mlp_dim / tower.width)) != tower.mlp_dim:
            raise ValueError(f"{name} mlp_dim {tower.mlp_dim} is not int(width * ratio) for any ratio "
                             f"open_clip can store; pick mlp_dim = width x a simple ratio")
    pool = text.get("pool", "eot")
    text_cfg: dict[str, Any] = dict(
        context_length=text.max_len, vocab_size=text.vocab_size, width=text.width, heads=text.num_heads,
        layers=text.depth, mlp_ratio=text.mlp_dim / text.width, no_causal_mask=not text.get("causal", True),
        norm_kwargs={"eps": text.get("layer_norm_epsilon", 1e-5)},
    )
    if pool == "argmax":
        text_cfg["pool_type"] = "argmax"
    elif pool in ("eos", "eot"):
        # mmjax's own towers end every text with EOS_ID (2) and pad after it: the last real token
        # is the first end-of-text token, which open_clip's "eos" pooling finds.
        from mmjax.data.tokenizer import EOS_ID

        text_cfg.update(pool_type="eos", eos_id=text.get("eos_id") if pool == "eos" else EOS_ID)
    else:
        raise ValueError(f"text pooling {pool!r} has no open_clip counterpart (argmax, eos or eot only)")
    model_cfg: dict[str, Any] = dict(
        embed_dim=config.embed_dim,
        quick_gelu=activations == {"quick_gelu"},
        vision_cfg=dict(
            image_size=_image_size(params), layers=image.depth, width=image.width,
            head_width=image.width // image.num_heads, mlp_ratio=image.mlp_dim / image.width,
            patch_size=image.patch_size, no_ln_pre=not image.get("ln_pre", False),
            norm_kwargs={"eps": image.get("layer_norm_epsilon", 1e-5)},
        ),
        text_cfg=text_cfg,
    )
    if "logit_bias" in params:
        model_cfg["init_logit_bias"] = float(np.asarray(params["logit_bias"]))
    return model_cfg


def save_open_clip(
    directory: str | os.PathLike,
    params: Params,
    config: ml_collections.ConfigDict,
    preprocessing: ImagePreprocessing | None = None,
) -> str:
    """Writes `open_clip_model.safetensors` and `open_clip_config.json` into `directory` (the
    layout open_clip's `create_model('local-dir:...')` and `load_open_clip` read). Returns the
    weights path."""
    model_cfg = open_clip_model_config(params, config)
    preprocessing = preprocessing or ImagePreprocessing(image_size=_image_size(params))
    preprocess_cfg = dict(
        size=preprocessing.image_size, mean=list(preprocessing.mean), std=list(preprocessing.std),
        interpolation=preprocessing.interpolation, resize_mode="shortest",
    )
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, WEIGHTS_NAMES[0])
    write_safetensors(weights, mmjax_to_open_clip(params, config))
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, f, indent=2)
    return weights
