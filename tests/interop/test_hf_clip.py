"""Hugging Face CLIP import and export, against transformers' CLIPModel with random weights."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from torch_reference import (  # noqa: E402
    numpy_state_dict,
    random_images,
    random_token_ids,
    randomize_,
    relative_error,
    to_torch_images,
)

from mmjax.interop.hf_clip import hf_to_mmjax, load_hf_clip, save_hf_clip  # noqa: E402

TOLERANCE = 1e-5
# eos_token_id 2 is transformers' switch to argmax pooling (OpenAI's config); any other id pools at
# its first occurrence, which lets a tokenizer pad with the end-of-text id itself.
CONFIGS = {
    "quickgelu_argmax_p8": dict(
        projection_dim=16,
        text_config=dict(hidden_size=24, intermediate_size=96, num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=12, vocab_size=100, hidden_act="quick_gelu",
                         bos_token_id=0, pad_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
    ),
    "gelu_eos_p4_eps": dict(
        projection_dim=24,
        text_config=dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_hidden_layers=1,
                         max_position_embeddings=10, vocab_size=90, hidden_act="gelu", layer_norm_eps=1e-6,
                         bos_token_id=87, pad_token_id=89, eos_token_id=89),
        vision_config=dict(hidden_size=48, intermediate_size=80, num_attention_heads=3, num_hidden_layers=3,
                           image_size=20, patch_size=4, hidden_act="gelu", layer_norm_eps=1e-6),
    ),
}


def make_hf_clip(config: dict, seed: int):
    model = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    randomize_(model, seed)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_imported_model_equals_transformers_and_exports_back_exactly(name, tmp_path):
    config = CONFIGS[name]
    torch_model = make_hf_clip(config, seed=len(name))
    torch_model.save_pretrained(tmp_path / "in")
    clip = load_hf_clip(tmp_path / "in")

    # Fresh random inputs; with eos pooling the texts are padded with the end-of-text id, as
    # transformers' CLIP tokenizer pads.
    rng = np.random.default_rng(0)
    text = config["text_config"]
    eos = None if text["eos_token_id"] == 2 else text["eos_token_id"]
    images = random_images(rng, 4, config["vision_config"]["image_size"])
    ids = random_token_ids(rng, 5, text["max_position_embeddings"], text["vocab_size"], eos_id=eos,
                           pad_id=0 if eos is None else eos)
    out = jax.jit(clip.model.apply)({"params": clip.params}, images, ids)
    with torch.no_grad():
        expected = torch_model(input_ids=torch.from_numpy(ids), pixel_values=to_torch_images(images))
    errors = {
        "image": relative_error(out["image_embeddings"], expected.image_embeds.numpy()),
        "text": relative_error(out["text_embeddings"], expected.text_embeds.numpy()),
        "logits": relative_error(out["logit_scale"] * out["image_embeddings"] @ out["text_embeddings"].T,
                                 expected.logits_per_image.numpy()),
    }
    print(f"{name}: relative errors {errors}")
    assert max(errors.values()) < TOLERANCE, errors

    # Export: the safetensors file holds the original tensors bit for bit, and transformers
    # loads the folder into the same model.
    save_hf_clip(tmp_path / "out", clip.params, clip.config, clip.preprocessing)
    original = safetensors_numpy.load_file(str(tmp_path / "in" / "model.safetensors"))
    exported = safetensors_numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    for key, value in numpy_state_dict(torch_model).items():
        np.testing.assert_array_equal(numpy_state_dict(reloaded)[key], value, err_msg=key)
    assert reloaded.config.text_config.eos_token_id == text["eos_token_id"]
    assert reloaded.config.vision_config.hidden_act == config["vision_config"]["hidden_act"]


def test_position_ids_of_older_checkpoints_are_checked_and_dropped():
    config = CONFIGS["quickgelu_argmax_p8"]
    state_dict = numpy_state_dict(make_hf_clip(config, seed=0))
    hf_config = {**config, "model_type": "clip"}
    with_ids = {**state_dict, "text_model.embeddings.position_ids": np.arange(12)[None],
                "vision_model.embeddings.position_ids": np.arange(17)[None]}
    _, params = hf_to_mmjax(with_ids, hf_config)
    np.testing.assert_array_equal(params["logit_scale"], state_dict["logit_scale"])
    shuffled = {**with_ids, "text_model.embeddings.position_ids": np.arange(12)[None, ::-1]}
    with pytest.raises(ValueError, match="text_model.embeddings.position_ids is not 0..11"):
        hf_to_mmjax(shuffled, hf_config)


def test_clear_errors_for_unknown_architectures_keys_and_shapes(tmp_path):
    config = CONFIGS["quickgelu_argmax_p8"]
    state_dict = numpy_state_dict(make_hf_clip(config, seed=1))
    hf_config = {**config, "model_type": "clip"}

    with pytest.raises(ValueError, match="model_type 'siglip' \\(unknown architecture\\)"):
        hf_to_mmjax(state_dict, {**hf_config, "model_type": "siglip"})
    with pytest.raises(ValueError, match="activation 'relu' is not supported"):
        hf_to_mmjax(state_dict, {**hf_config, "text_config": {**config["text_config"], "hidden_act": "relu"}})

    damaged = {k: v for k, v in state_dict.items() if k != "vision_model.post_layernorm.weight"}
    damaged["vision_model.head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as error:
        hf_to_mmjax(damaged, hf_config)
    assert "missing keys (1): vision_model.post_layernorm.weight" in str(error.value)
    assert "unexpected keys (1): vision_model.head.weight" in str(error.value)

    # A config that disagrees with the weights: every layer's MLP has the wrong shape.
    wrong = {**hf_config, "text_config": {**config["text_config"], "intermediate_size": 48}}
    with pytest.raises(ValueError, match=r"text_model.encoder.layers.0.mlp.fc1.weight has shape \(96, 24\) "
                                         r"in the checkpoint .* needs \(48, 24\)"):
        hf_to_mmjax(state_dict, wrong)

    os.makedirs(tmp_path / "no_weights")
    with open(tmp_path / "no_weights" / "config.json", "w") as f:
        json.dump(hf_config, f)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_clip(tmp_path / "no_weights")
