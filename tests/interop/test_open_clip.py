"""open_clip import and export, against open_clip's own PyTorch CLIP with random weights."""

import json
import os

import jax
import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from torch_reference import (  # noqa: E402
    numpy_state_dict,
    random_images,
    random_token_ids,
    randomize_,
    relative_error,
    to_torch_images,
)

from mmjax.interop.open_clip import (  # noqa: E402
    load_open_clip,
    mmjax_to_open_clip,
    open_clip_model_config,
    open_clip_to_mmjax,
    save_open_clip,
)
from mmjax.models.clip import build_clip  # noqa: E402

# Small open_clip configs that differ in every way the importer has to get right.
CONFIGS = {
    "quickgelu_p8": dict(
        embed_dim=16, quick_gelu=True,
        vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=dict(context_length=12, vocab_size=100, width=24, heads=2, layers=2),
    ),
    "gelu_p4_no_ln_pre_eos": dict(
        embed_dim=24, quick_gelu=False,
        vision_cfg=dict(layers=1, width=48, head_width=16, patch_size=4, image_size=16, mlp_ratio=2.0,
                        no_ln_pre=True),
        text_cfg=dict(context_length=10, vocab_size=80, width=32, heads=4, layers=3, pool_type="eos", eos_id=77),
    ),
    "gelu_p16_eps_bias": dict(
        embed_dim=32, quick_gelu=False, init_logit_bias=-10.0,
        vision_cfg=dict(layers=3, width=64, head_width=32, patch_size=16, image_size=48,
                        norm_kwargs={"eps": 1e-6}),
        text_cfg=dict(context_length=16, vocab_size=120, width=40, heads=5, layers=1, mlp_ratio=3.0,
                      norm_kwargs={"eps": 1e-6}),
    ),
}
TOLERANCE = 1e-5


def make_open_clip(model_cfg: dict, seed: int) -> torch.nn.Module:
    model = open_clip.model.CLIP(**model_cfg).eval()
    randomize_(model, seed)
    return model


def save_folder(path, model, model_cfg) -> str:
    os.makedirs(path, exist_ok=True)
    safetensors_torch.save_file(model.state_dict(), os.path.join(path, "open_clip_model.safetensors"))
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, f)
    return str(path)


def compare_forward(clip_config, params, torch_model, model_cfg, rng) -> dict[str, float]:
    """Relative errors of image embeddings, text embeddings and logits on fresh random inputs."""
    size, text = model_cfg["vision_cfg"]["image_size"], model_cfg["text_cfg"]
    images = random_images(rng, 4, size)
    eos = text.get("eos_id") if text.get("pool_type") == "eos" else None
    ids = random_token_ids(rng, 5, text["context_length"], text["vocab_size"], eos_id=eos)
    out = jax.jit(build_clip(clip_config).apply)({"params": params}, images, ids)
    logits = out["logit_scale"] * out["image_embeddings"] @ out["text_embeddings"].T
    if "logit_bias" in out:
        logits = logits + out["logit_bias"]
    with torch.no_grad():
        expected = torch_model(to_torch_images(images), torch.from_numpy(ids))
        expected_logits, _ = torch_model.get_logits(to_torch_images(images), torch.from_numpy(ids))
    return {
        "image": relative_error(out["image_embeddings"], expected[0].numpy()),
        "text": relative_error(out["text_embeddings"], expected[1].numpy()),
        "logits": relative_error(logits, expected_logits.numpy()),
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_imported_model_equals_open_clip_and_exports_back_exactly(name, tmp_path):
    model_cfg = CONFIGS[name]
    torch_model = make_open_clip(model_cfg, seed=len(name))
    clip = load_open_clip(save_folder(tmp_path / "in", torch_model, model_cfg))

    errors = compare_forward(clip.config, clip.params, torch_model, model_cfg, np.random.default_rng(1))
    print(f"{name}: relative errors {errors}")
    assert max(errors.values()) < TOLERANCE, errors
    assert clip.preprocessing.image_size == model_cfg["vision_cfg"]["image_size"]

    # Export, then load into a fresh open_clip model built from the exported config.
    save_open_clip(tmp_path / "out", clip.params, clip.config, clip.preprocessing)
    with open(tmp_path / "out" / "open_clip_config.json") as f:
        exported_cfg = json.load(f)["model_cfg"]
    fresh = open_clip.model.CLIP(**exported_cfg).eval()
    fresh.load_state_dict(safetensors_torch.load_file(str(tmp_path / "out" / "open_clip_model.safetensors")))
    original, reloaded = numpy_state_dict(torch_model), numpy_state_dict(fresh)
    assert sorted(original) == sorted(reloaded)
    for key in original:
        np.testing.assert_array_equal(reloaded[key], original[key], err_msg=key)
    # The exported config describes the same model (heads, activation, pooling): same outputs.
    rng = np.random.default_rng(2)
    images = to_torch_images(random_images(rng, 2, model_cfg["vision_cfg"]["image_size"]))
    eos = model_cfg["text_cfg"].get("eos_id") if model_cfg["text_cfg"].get("pool_type") == "eos" else None
    ids = torch.from_numpy(random_token_ids(rng, 3, model_cfg["text_cfg"]["context_length"],
                                            model_cfg["text_cfg"]["vocab_size"], eos_id=eos))
    with torch.no_grad():
        for got, want in zip(fresh(images, ids), torch_model(images, ids)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torch_file_training_checkpoint_and_bare_openai_weights(tmp_path):
    """A torch file read weights-only, unwrapped from {"state_dict": {"module." ...}}; without a
    config, heads come from OpenAI's 64-wide rule and the activation must be named."""
    model_cfg = dict(
        embed_dim=16, quick_gelu=True,
        vision_cfg=dict(layers=1, width=64, head_width=64, patch_size=8, image_size=16),
        text_cfg=dict(context_length=8, vocab_size=60, width=64, heads=1, layers=1),
    )
    torch_model = make_open_clip(model_cfg, seed=3)
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in torch_model.state_dict().items()}}, path)

    with pytest.raises(ValueError, match="quick_gelu=True for OpenAI"):
        load_open_clip(path)
    clip = load_open_clip(path, quick_gelu=True)
    assert (clip.config.image.num_heads, clip.config.text.num_heads) == (1, 1)
    errors = compare_forward(clip.config, clip.params, torch_model, model_cfg, np.random.default_rng(4))
    assert max(errors.values()) < TOLERANCE, errors


def test_mmjax_trained_shape_exports_to_open_clip(tmp_path):
    """An mmjax-native tower (sentencepiece ids: EOS 2 then 0-padding, a padding mask, "eot"
    pooling) exports as open_clip's "eos" pooling and gives the same embeddings there."""
    import flax.linen as nn
    import jax
    import ml_collections

    from mmjax.nn.transformer import gelu

    config = ml_collections.ConfigDict(dict(
        embed_dim=16,
        image=dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pool="token",
                   position_embedding="learned", ln_pre=True, patch_bias=False, activation=gelu),
        text=dict(vocab_size=50, max_len=12, width=32, depth=2, num_heads=4, mlp_dim=64, activation=gelu),
    ))
    rng = np.random.default_rng(5)
    model = build_clip(config)
    images = random_images(rng, 3, 24)
    ids = np.zeros((3, 12), np.int64)
    for row, n in enumerate([12, 5, 2]):
        ids[row, : n - 1], ids[row, n - 1] = rng.integers(3, 50, n - 1), 2
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, ids)["params"])
    params = jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape).astype(np.float32), shapes)

    save_open_clip(tmp_path, params, config)
    with open(tmp_path / "open_clip_config.json") as f:
        model_cfg = json.load(f)["model_cfg"]
    assert model_cfg["text_cfg"]["pool_type"] == "eos" and model_cfg["text_cfg"]["eos_id"] == 2
    torch_model = open_clip.model.CLIP(**model_cfg).eval()
    torch_model.load_state_dict(safetensors_torch.load_file(str(tmp_path / "open_clip_model.safetensors")))
    out = jax.jit(model.apply)({"params": params}, images, ids)
    with torch.no_grad():
        image_emb, text_emb, _ = torch_model(to_torch_images(images), torch.from_numpy(ids))
    assert relative_error(out["image_embeddings"], image_emb.numpy()) < TOLERANCE
    assert relative_error(out["text_embeddings"], text_emb.numpy()) < TOLERANCE


def test_models_without_an_open_clip_counterpart_are_refused():
    import jax
    import ml_collections

    config = ml_collections.ConfigDict(dict(
        embed_dim=8,
        image=dict(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, pool="mean",
                   position_embedding="sincos2d", activation=jax.nn.relu),
        text=dict(vocab_size=30, max_len=8, width=16, depth=1, num_heads=2, mlp_dim=32, activation=jax.nn.relu),
    ))
    with pytest.raises(ValueError, match="image.pool must be 'token'"):
        mmjax_to_open_clip({}, config)
    config.image.update(pool="token", position_embedding="learned", patch_bias=False)
    with pytest.raises(ValueError, match="activation 'relu' has no PyTorch CLIP counterpart"):
        open_clip_model_config({"image_encoder": {"pos_embed": {"embedding": np.zeros((5, 16))},
                                                  "patch_embed": {"conv": {"kernel": np.zeros((8, 8, 3, 16))}}}},
                               config)


# ------------------------------------------------------------------------------------------------
# Clear errors.


@pytest.fixture(scope="module")
def small_state_dict():
    model_cfg = CONFIGS["quickgelu_p8"]
    return model_cfg, numpy_state_dict(make_open_clip(model_cfg, seed=0))


def test_unknown_architectures_are_named(small_state_dict):
    model_cfg, state_dict = small_state_dict
    with pytest.raises(ValueError, match="timm image tower"):
        open_clip_to_mmjax({**state_dict, "visual.trunk.blocks.0.weight": np.zeros(3)}, model_cfg)
    with pytest.raises(ValueError, match="unknown architecture.*lacks.*visual.conv1.weight"):
        open_clip_to_mmjax({"encoder.weight": np.zeros(3)}, model_cfg)
    with pytest.raises(ValueError, match=r"vision_cfg.ls_init_value=1e-05 is not supported"):
        open_clip_to_mmjax(state_dict, {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "ls_init_value": 1e-5}})
    with pytest.raises(ValueError, match="unknown open_clip setting text_cfg.fancy_rope"):
        open_clip_to_mmjax(state_dict, {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "fancy_rope": True}})


def test_missing_and_extra_keys_are_named(small_state_dict):
    model_cfg, state_dict = small_state_dict
    damaged = {k: v for k, v in state_dict.items() if k not in ("visual.ln_post.bias", "ln_final.weight")}
    damaged["visual.extra_head.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError) as error:
        open_clip_to_mmjax(damaged, model_cfg)
    message = str(error.value)
    assert "missing keys (2): visual.ln_post.bias, ln_final.weight" in message
    assert "unexpected keys (1): visual.extra_head.weight" in message


def test_shape_mismatches_name_the_key_and_both_shapes(small_state_dict):
    model_cfg, state_dict = small_state_dict
    with pytest.raises(ValueError, match=r"text_projection has shape \(24, 15\) in the checkpoint .* needs \(24, 16\)"):
        open_clip_to_mmjax({**state_dict, "text_projection": np.zeros((24, 15), np.float32)}, model_cfg)
    with pytest.raises(ValueError, match="config says text_cfg.width=48 but the weights have 24"):
        open_clip_to_mmjax(state_dict, {**model_cfg, "text_cfg": {**model_cfg["text_cfg"], "width": 48}})
