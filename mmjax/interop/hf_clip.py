"""Hugging Face CLIP checkpoints (`model.safetensors` + `config.json`) <-> mmjax CLIP.

transformers' `CLIPModel` is OpenAI's CLIP with separate query/key/value projections and its own
names. For layer i of a tower of width W, heads h, MLP width M, embedding E, patch p, N patches,
vocabulary V and context length L:

    transformers                                         mmjax
    vision_model.embeddings.patch_embedding.weight       image_encoder/patch_embed/conv/kernel
                                    [W, 3, p, p]           [p, p, 3, W]
    vision_model.embeddings.class_embedding  [W]         image_encoder/cls_token        [1, 1, W]
    vision_model.embeddings.position_embedding.weight    image_encoder/pos_embed/embedding [1+N, W]
    vision_model.pre_layrnorm (sic)                      image_encoder/ln_pre
    vision_model.encoder.layers.i.layer_norm1            image_encoder/encoder/blocks/ln_attn  [i, W]
      .self_attn.{q,k,v}_proj.weight  [W, W]             .../attn/{query,key,value}/kernel [i, W, h, W/h]
      .self_attn.{q,k,v}_proj.bias    [W]                .../attn/{query,key,value}/bias   [i, h, W/h]
      .self_attn.out_proj.weight      [W, W]             .../attn/out/kernel               [i, h, W/h, W]
      .layer_norm2                                       .../ln_mlp
      .mlp.fc1 / .mlp.fc2   [M, W] / [W, M]              .../mlp/fc1 / fc2 (transposed)
    vision_model.post_layernorm                          image_encoder/encoder/ln_final
    visual_projection.weight        [E, W]               image_projection/kernel        [W, E]
    text_model.embeddings.token_embedding.weight [V, W]  text_encoder/token_embed/embed/embedding
    text_model.embeddings.position_embedding.weight      text_encoder/pos_embed/embedding   [L, W]
    text_model.encoder.layers.i.*                        text_encoder/encoder/blocks/*
    text_model.final_layer_norm                          text_encoder/encoder/ln_final
    text_projection.weight          [E, W]               text_projection/kernel         [W, E]
    logit_scale                     []                   logit_scale

`position_ids` (the buffer [1, L] = 0..L-1 that older checkpoints store) is checked and dropped:
mmjax adds the first `seq` rows of the position table, which is what those ids select.

`config.json` gives everything else: heads, `hidden_act` ("quick_gelu" for OpenAI's models),
`layer_norm_eps`, and the text pooling. transformers pools at the *largest* token id when
`eos_token_id == 2` (the configs written before the fix of that id, OpenAI's among them: their
<|endoftext|> is the largest id) and at the first `eos_token_id` otherwise.
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
    kernel_to_linear,
    layer_norm,
    linear_to_kernel,
    mlp_from_torch,
    mlp_to_torch,
    read_state_dict,
    stack_layers,
    unstack_layers,
    write_safetensors,
)

# transformers' defaults for keys a config.json leaves out (CLIPTextConfig, CLIPVisionConfig).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, eos_token_id=49407)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
# The eos_token_id of configs written before transformers fixed it, which switches to argmax pooling.
LEGACY_EOS_ID = 2
PIL_RESAMPLE = {3: "bicubic", 2: "bilinear"}


def load_hf_clip(directory: str | os.PathLike) -> ImportedCLIP:
    """Loads a Hugging Face CLIP folder (`config.json` + `model.safetensors`, or
    `pytorch_model.bin` read with torch's weights-only loader) into an mmjax CLIP.

    `preprocessor_config.json`, when present, gives the image size, crop, mean and std.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"no config.json in {directory}: a Hugging Face CLIP folder holds config.json and "
            "model.safetensors (for open_clip weights use load_open_clip)"
        )
    with open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(directory, name)):
            weights = os.path.join(directory, name)
            break
    else:
        raise FileNotFoundError(f"no model.safetensors (or pytorch_model.bin) in {directory}")
    config, params = hf_to_mmjax(read_state_dict(weights), hf_config, source=weights)
    image_size = _vision_config(hf_config)["image_size"]
    preprocessor = os.path.join(directory, "preprocessor_config.json")
    processor_config = {}
    if os.path.exists(preprocessor):
        with open(preprocessor, encoding="utf-8") as f:
            processor_config = json.load(f)
    return ImportedCLIP(config, params, preprocessing_from_config(processor_config, image_size))


def preprocessing_from_config(processor: dict, image_size: int) -> ImagePreprocessing:
    """`preprocessor_config.json` of a CLIPImageProcessor -> ImagePreprocessing (HF convention)."""
    size, crop = processor.get("size", image_size), processor.get("crop_size", image_size)
    resize = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    if resize is None or crop[0] != crop[1]:
        raise ValueError(f"preprocessor size {size} / crop {crop}: mmjax supports a shortest-edge "
                         "resize and a square center crop")
    resample = processor.get("resample", 3)
    if resample not in PIL_RESAMPLE:
        raise ValueError(f"preprocessor resample={resample} is not supported (3 = bicubic, 2 = bilinear)")
    return ImagePreprocessing(
        image_size=crop[0], resize_size=resize,
        mean=tuple(processor.get("image_mean", OPENAI_CLIP_MEAN)),
        std=tuple(processor.get("image_std", OPENAI_CLIP_STD)),
        interpolation=PIL_RESAMPLE[resample], convention="hf",
    )


def _text_config(hf_config: dict) -> dict[str, Any]:
    return {**TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}


def _vision_config(hf_config: dict) -> dict[str, Any]:
    return {**VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}


def hf_to_mmjax(state_dict: dict[str, np.ndarray], hf_config: dict,
                source: str = "the Hugging Face state dict") -> tuple[ml_collections.ConfigDict, Params]:
    """A transformers CLIPModel state dict + its config.json -> (mmjax model config, parameters)."""
    model_type = hf_config.get("model_type")
    if model_type != "clip":
        raise ValueError(
            f"{source}: config.json has model_type {model_type!r} (unknown architecture): mmjax imports "
            "Hugging Face CLIPModel checkpoints, model_type 'clip'"
        )
    vision, text = _vision_config(hf_config), _text_config(hf_config)
    if vision["num_channels"] != 3:
        raise ValueError(f"{source}: vision_config.num_channels={vision['num_channels']}; mmjax takes RGB images")
    eos = text["eos_token_id"]
    text_section = dict(
        vocab_size=text["vocab_size"], max_len=text["max_position_embeddings"], width=text["hidden_size"],
        depth=text["num_hidden_layers"], num_heads=text["num_attention_heads"], mlp_dim=text["intermediate_size"],
        pool="argmax" if eos == LEGACY_EOS_ID else "eos",
        activation=activation_from_name(text["hidden_act"], source), layer_norm_epsilon=text["layer_norm_eps"],
    )
    if eos != LEGACY_EOS_ID:
        text_section["eos_id"] = eos
    config = clip_config(
        embed_dim=hf_config.get("projection_dim", 512),
        image=dict(
            patch_size=vision["patch_size"], width=vision["hidden_size"], depth=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"], ln_pre=True,
            activation=activation_from_name(vision["hidden_act"], source),
            layer_norm_epsilon=vision["layer_norm_eps"],
        ),
        text=text_section,
        logit_scale=float(np.asarray(state_dict.get("logit_scale", hf_config.get("logit_scale_init_value", 2.6592)))),
    )
    for tower, section in (("vision", config.image), ("text", config.text)):
        if section.width % section.num_heads:
            raise ValueError(f"{source}: {tower} hidden_size {section.width} is not divisible by "
                             f"{section.num_heads} attention heads")

    reader = StateDictReader(state_dict, source)
    take = reader.take
    image, txt = config.image, config.text
    W, Wt, E, p = image.width, txt.width, config.embed_dim, image.patch_size
    n_pos = (vision["image_size"] // p) ** 2 + 1

    def ln(name: str, width: int) -> Params:
        return layer_norm(take(name + ".weight", (width,)), take(name + ".bias", (width,)))

    def blocks(prefix: str, width: int, mlp: int, depth: int, heads: int) -> Params:
        def projection(name: str) -> tuple[np.ndarray, np.ndarray]:
            return take(name + ".weight", (width, width)), take(name + ".bias", (width,))

        layers = []
        for i in range(depth):
            b = f"{prefix}.encoder.layers.{i}."
            q, k, v, out = (projection(b + f"self_attn.{n}_proj") for n in ("q", "k", "v", "out"))
            layers.append({
                "ln_attn": ln(b + "layer_norm1", width),
                "attn": attention_from_torch(q, k, v, out, heads),
                "ln_mlp": ln(b + "layer_norm2", width),
                "mlp": mlp_from_torch(
                    (take(b + "mlp.fc1.weight", (mlp, width)), take(b + "mlp.fc1.bias", (mlp,))),
                    (take(b + "mlp.fc2.weight", (width, mlp)), take(b + "mlp.fc2.bias", (width,))),
                ),
            })
        return {"blocks": stack_layers(layers)}

    # Older checkpoints store the position ids; they must be the plain 0..L-1 that mmjax assumes.
    for key, length in (("vision_model.embeddings.position_ids", n_pos),
                        ("text_model.embeddings.position_ids", txt.max_len)):
        if key in state_dict:
            ids = np.asarray(state_dict[key]).reshape(-1)
            if not np.array_equal(ids, np.arange(length)):
                raise ValueError(f"{source}: {key} is not 0..{length - 1}: custom position ids are not supported")
            reader.skip(key)

    params = {
        "image_encoder": {
            "patch_embed": {"conv": {"kernel": conv_to_kernel(
                take("vision_model.embeddings.patch_embedding.weight", (W, 3, p, p)))}},
            "cls_token": take("vision_model.embeddings.class_embedding", (W,)).reshape(1, 1, W),
            "pos_embed": {"embedding": take("vision_model.embeddings.position_embedding.weight", (n_pos, W))},
            "ln_pre": ln("vision_model.pre_layrnorm", W),
            "encoder": {**blocks("vision_model", W, image.mlp_dim, image.depth, image.num_heads),
                        "ln_final": ln("vision_model.post_layernorm", W)},
        },
        "text_encoder": {
            "token_embed": {"embed": {"embedding": take("text_model.embeddings.token_embedding.weight",
                                                        (txt.vocab_size, Wt))}},
            "pos_embed": {"embedding": take("text_model.embeddings.position_embedding.weight", (txt.max_len, Wt))},
            "encoder": {**blocks("text_model", Wt, txt.mlp_dim, txt.depth, txt.num_heads),
                        "ln_final": ln("text_model.final_layer_norm", Wt)},
        },
        "image_projection": {"kernel": linear_to_kernel(take("visual_projection.weight", (E, W)))},
        "text_projection": {"kernel": linear_to_kernel(take("text_projection.weight", (E, Wt)))},
        "logit_scale": take("logit_scale", ()),
    }
    reader.finish()
    check_params_match(config, params, vision["image_size"])
    return config, params


# ----------------------------------------------------------------------------------------------
# Export.


def hf_config_dict(params: Params, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config.json of an mmjax CLIP, for transformers' CLIPModel."""
    check_exportable(config, "Hugging Face")
    image, text = config.image, config.text
    if not image.get("ln_pre", False):
        raise ValueError("this mmjax model cannot be written as a Hugging Face CLIP: image.ln_pre must "
                         "be True (transformers' CLIP always has pre_layrnorm)")
    pool = text.get("pool", "eot")
    if pool == "argmax":
        eos = LEGACY_EOS_ID  # transformers' switch to argmax pooling
    elif pool == "eos":
        eos = text.eos_id
        if eos == LEGACY_EOS_ID:
            raise ValueError("eos_id 2 cannot be written: transformers reads eos_token_id=2 as argmax pooling")
    else:
        raise ValueError(
            f"text pooling {pool!r} has no Hugging Face counterpart: transformers pools at the largest "
            "token id or at the first eos_token_id (mmjax pool 'argmax' or 'eos')"
        )
    positions = np.shape(params["image_encoder"]["pos_embed"]["embedding"])[0]
    grid = math.isqrt(positions - 1)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": float(np.asarray(params["logit_scale"])),
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": text.vocab_size, "hidden_size": text.width,
            "intermediate_size": text.mlp_dim, "num_hidden_layers": text.depth,
            "num_attention_heads": text.num_heads, "max_position_embeddings": text.max_len,
            "hidden_act": activation_name(text.activation),
            "layer_norm_eps": text.get("layer_norm_epsilon", 1e-5),
            "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": eos, "projection_dim": config.embed_dim,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": image.width, "intermediate_size": image.mlp_dim,
            "num_hidden_layers": image.depth, "num_attention_heads": image.num_heads, "num_channels": 3,
            "image_size": grid * image.patch_size, "patch_size": image.patch_size,
            "hidden_act": activation_name(image.activation),
            "layer_norm_eps": image.get("layer_norm_epsilon", 1e-5), "projection_dim": config.embed_dim,
        },
    }


def mmjax_to_hf(params: Params, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """mmjax CLIP parameters -> transformers CLIPModel state dict (float32 numpy), the inverse of
    `hf_to_mmjax`."""
    hf_config_dict(params, config)  # raises for a model transformers cannot represent
    out: dict[str, np.ndarray] = {}

    def ln(name: str, tree: Params) -> None:
        out[name + ".weight"], out[name + ".bias"] = tree["scale"], tree["bias"]

    def blocks(prefix: str, encoder: Params, depth: int) -> None:
        for i, block in enumerate(unstack_layers(encoder, depth)):
            b = f"{prefix}.encoder.layers.{i}."
            attn = attention_to_torch(block["attn"])
            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj")):
                out[b + f"self_attn.{theirs}.weight"], out[b + f"self_attn.{theirs}.bias"] = attn[ours]
            ln(b + "layer_norm1", block["ln_attn"])
            ln(b + "layer_norm2", block["ln_mlp"])
            (fc1_w, fc1_b), (fc2_w, fc2_b) = mlp_to_torch(block["mlp"])
            out[b + "mlp.fc1.weight"], out[b + "mlp.fc1.bias"] = fc1_w, fc1_b
            out[b + "mlp.fc2.weight"], out[b + "mlp.fc2.bias"] = fc2_w, fc2_b

    image, text = params["image_encoder"], params["text_encoder"]
    out["vision_model.embeddings.patch_embedding.weight"] = kernel_to_conv(np.asarray(image["patch_embed"]["conv"]["kernel"]))
    out["vision_model.embeddings.class_embedding"] = np.asarray(image["cls_token"]).reshape(-1)
    out["vision_model.embeddings.position_embedding.weight"] = image["pos_embed"]["embedding"]
    ln("vision_model.pre_layrnorm", image["ln_pre"])
    blocks("vision_model", image["encoder"], config.image.depth)
    ln("vision_model.post_layernorm", image["encoder"]["ln_final"])
    out["text_model.embeddings.token_embedding.weight"] = text["token_embed"]["embed"]["embedding"]
    out["text_model.embeddings.position_embedding.weight"] = text["pos_embed"]["embedding"]
    blocks("text_model", text["encoder"], config.text.depth)
    ln("text_model.final_layer_norm", text["encoder"]["ln_final"])
    out["visual_projection.weight"] = kernel_to_linear(np.asarray(params["image_projection"]["kernel"]))
    out["text_projection.weight"] = kernel_to_linear(np.asarray(params["text_projection"]["kernel"]))
    out["logit_scale"] = params["logit_scale"]
    return {k: np.array(v, np.float32, order="C") for k, v in out.items()}


def save_hf_clip(
    directory: str | os.PathLike,
    params: Params,
    config: ml_collections.ConfigDict,
    preprocessing: ImagePreprocessing | None = None,
) -> str:
    """Writes `model.safetensors`, `config.json` and `preprocessor_config.json` into `directory`,
    which `transformers.CLIPModel.from_pretrained(directory)` and `load_hf_clip` read. The tokenizer
    files (vocab.json, merges.txt) are the user's to copy beside them. Returns the weights path."""
    hf_config = hf_config_dict(params, config)
    image_size = hf_config["vision_config"]["image_size"]
    preprocessing = preprocessing or ImagePreprocessing(image_size=image_size, convention="hf")
    processor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": True,
        "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": preprocessing.resize_size or preprocessing.image_size},
        "crop_size": {"height": preprocessing.image_size, "width": preprocessing.image_size},
        "resample": {v: k for k, v in PIL_RESAMPLE.items()}[preprocessing.interpolation],
        "image_mean": list(preprocessing.mean), "image_std": list(preprocessing.std),
    }
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, "model.safetensors")
    write_safetensors(weights, mmjax_to_hf(params, config))
    for name, content in (("config.json", hf_config), ("preprocessor_config.json", processor)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
    return weights
