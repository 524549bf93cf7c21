"""Mid, early and late fusion: output shapes, padding invariance, which inputs each output reads."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.models.fusion import build_early_fusion, build_late_fusion_classifier, build_mid_fusion

BATCH, TEXT_LEN, VOCAB, NUM_ANSWERS = 3, 8, 41, 7
# 16x16 images in 8x8 patches: N = 4 image tokens.
IMAGE_SIDE, NUM_PATCHES = 16, 4


def image_config(**kw):
    # Unrolled (scan=False) depth-1 towers: the fastest to trace on a CPU.
    return dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="mean", scan=False, **kw)


def text_config(**kw):
    # The text tower is narrower than the image tower: cross-attention maps one width to the other.
    return dict(vocab_size=VOCAB, max_len=16, width=24, depth=1, num_heads=2, mlp_dim=48, scan=False, **kw)


def mid_config():
    return ml_collections.ConfigDict(dict(
        embed_dim=16, num_answers=NUM_ANSWERS,
        image=image_config(), text=text_config(),
        fusion=dict(depth=2, num_heads=2, mlp_dim=48, scan=False),
    ))


def early_config():
    return ml_collections.ConfigDict(dict(
        vocab_size=VOCAB, max_text_len=16, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64,
        num_answers=NUM_ANSWERS, scan=False,
    ))


def late_config():
    return ml_collections.ConfigDict(dict(
        num_answers=NUM_ANSWERS, image=image_config(), text=text_config(causal=False, pool="mean"),
    ))


def random_batch(seed, lengths=(8, 5, 2)):
    """Images [B, 16, 16, 3] and token ids [B, 8]: row i has lengths[i] real tokens, then padding."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((len(lengths), IMAGE_SIDE, IMAGE_SIDE, 3)).astype(np.float32)
    ids = np.zeros((len(lengths), TEXT_LEN), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, VOCAB, n)
    return images, ids


def with_more_padding(ids, extra=4):
    return np.pad(ids, ((0, 0), (0, extra)))


def init_key(seed):
    # XLA's RngBitGenerator: its initializers compile several times faster on a CPU than threefry's.
    return jax.random.key(seed, impl="rbg")


def assert_differs(a, b, min_difference=1e-4):
    assert float(jnp.max(jnp.abs(a - b))) > min_difference


@pytest.fixture(scope="module")
def mid():
    model = build_mid_fusion(mid_config())
    variables = model.init(init_key(0), *random_batch(0))
    return model, variables


@pytest.fixture(scope="module")
def early():
    model = build_early_fusion(early_config())
    variables = model.init(init_key(1), *random_batch(0))
    return model, variables


@pytest.fixture(scope="module")
def late():
    model = build_late_fusion_classifier(late_config())
    variables = model.init(init_key(2), *random_batch(0))
    return model, variables


# ------------------------------------------------------------------------------------------------
# Mid fusion.
# ------------------------------------------------------------------------------------------------


def test_mid_fusion_init_creates_every_head_and_methods_have_the_documented_shapes(mid):
    model, variables = mid
    assert set(variables["params"]) == {
        "image_encoder", "text_encoder", "image_projection", "text_projection", "logit_scale",
        "fusion_encoder", "itm_head", "mlm_head", "vqa_head",
    }
    images, ids = random_batch(10)

    image = model.apply(variables, images, method="encode_image")
    assert image["tokens"].shape == (BATCH, NUM_PATCHES, 32)
    text = model.apply(variables, ids, method="encode_text")
    assert text["tokens"].shape == (BATCH, TEXT_LEN, 24)
    np.testing.assert_array_equal(text["mask"], ids != 0)
    for embedding in (image["embedding"], text["embedding"]):
        assert embedding.shape == (BATCH, 16)
        np.testing.assert_allclose(jnp.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)

    fused = model.apply(variables, text["tokens"], text["mask"], image["tokens"], method="fuse")
    assert fused.shape == (BATCH, TEXT_LEN, 24)
    assert model.apply(variables, fused, method="itm_logits").shape == (BATCH, 2)
    assert model.apply(variables, fused, method="mlm_logits").shape == (BATCH, TEXT_LEN, VOCAB)
    assert model.apply(variables, fused, method="vqa_logits").shape == (BATCH, NUM_ANSWERS)
    np.testing.assert_allclose(model.apply(variables, method="logit_scale"), 1 / 0.07, rtol=1e-5)

    # __call__ is the same computation as the methods chained.
    out = model.apply(variables, images, ids)
    np.testing.assert_allclose(out["fused"], fused, rtol=1e-5, atol=1e-5)
    assert out["mlm_logits"].shape == (BATCH, TEXT_LEN, VOCAB)


def test_mid_fusion_outputs_are_invariant_to_appended_text_padding(mid):
    model, variables = mid
    images, ids = random_batch(11)
    out = model.apply(variables, images, ids)
    padded = model.apply(variables, images, with_more_padding(ids))
    for name in ("itm_logits", "vqa_logits", "text_embeddings"):
        np.testing.assert_allclose(out[name], padded[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # Real tokens' fused outputs and MLM logits do not see the padding either.
    real = (ids != 0)[..., None]
    np.testing.assert_allclose(
        out["mlm_logits"] * real, padded["mlm_logits"][:, :TEXT_LEN] * real, rtol=1e-5, atol=1e-5
    )


def test_mid_fusion_fused_tokens_read_the_image_and_text_embeddings_do_not(mid):
    model, variables = mid
    images, ids = random_batch(12)
    other_images, _ = random_batch(13)
    out = model.apply(variables, images, ids)
    other = model.apply(variables, other_images, ids)
    assert_differs(out["fused"], other["fused"])
    assert_differs(out["itm_logits"], other["itm_logits"])
    np.testing.assert_array_equal(out["text_embeddings"], other["text_embeddings"])


def test_mid_fusion_rejects_a_causal_text_tower():
    config = mid_config()
    config.text.causal = True
    with pytest.raises(ValueError, match="causal"):
        build_mid_fusion(config)


# ------------------------------------------------------------------------------------------------
# Early fusion.
# ------------------------------------------------------------------------------------------------


def test_early_fusion_init_creates_every_head_and_outputs_have_the_documented_shapes(early):
    model, variables = early
    params = variables["params"]
    for name in ("itm_head", "vqa_head", "modality_embedding", "cls_token", "encoder"):
        assert name in params, name
    assert params["modality_embedding"].shape == (2, 32)

    images, ids = random_batch(20)
    encoded = model.apply(variables, images, ids, method="encode")
    assert encoded["tokens"].shape == (BATCH, 1 + NUM_PATCHES + TEXT_LEN, 32)
    np.testing.assert_array_equal(encoded["mask"][:, : 1 + NUM_PATCHES], True)
    np.testing.assert_array_equal(encoded["mask"][:, 1 + NUM_PATCHES :], ids != 0)
    assert model.apply(variables, encoded["tokens"], method="itm_logits").shape == (BATCH, 2)
    assert model.apply(variables, encoded["tokens"], method="vqa_logits").shape == (BATCH, NUM_ANSWERS)


def test_early_fusion_logits_are_invariant_to_appended_text_padding(early):
    model, variables = early
    images, ids = random_batch(21)
    out = model.apply(variables, images, ids)
    padded = model.apply(variables, images, with_more_padding(ids))
    for name in ("itm_logits", "vqa_logits"):
        np.testing.assert_allclose(out[name], padded[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_early_fusion_answers_depend_on_the_text_and_on_the_image(early):
    model, variables = early
    images, ids = random_batch(22)
    other_images, _ = random_batch(23)
    changed_ids = ids.copy()
    changed_ids[:, 0] = (ids[:, 0] - 3 + 1) % (VOCAB - 3) + 3  # another real token
    out = model.apply(variables, images, ids)["vqa_logits"]
    assert_differs(out, model.apply(variables, images, changed_ids)["vqa_logits"])
    assert_differs(out, model.apply(variables, other_images, ids)["vqa_logits"])


def test_early_fusion_unroll_compiles_the_layers_without_a_loop_and_keeps_the_outputs():
    """`unroll` reaches the single-stream encoder: same stacked parameters, same logits, no loop."""
    images, ids = random_batch(24)
    looped = build_early_fusion(dict(early_config(), scan=True))
    unrolled = build_early_fusion(dict(early_config(), scan=True, unroll=True))
    variables = jax.jit(looped.init)(init_key(2), images, ids)
    out, out_unrolled = (jax.jit(m.apply)(variables, images, ids) for m in (looped, unrolled))
    for name in ("itm_logits", "vqa_logits"):
        np.testing.assert_allclose(out_unrolled[name], out[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert "while" in jax.jit(looped.apply).lower(variables, images, ids).as_text()
    assert "while" not in jax.jit(unrolled.apply).lower(variables, images, ids).as_text()


# ------------------------------------------------------------------------------------------------
# Late fusion.
# ------------------------------------------------------------------------------------------------


def test_late_fusion_answers_have_the_documented_shape_and_read_both_modalities(late):
    model, variables = late
    assert "vqa_head" in variables["params"]
    images, ids = random_batch(30)
    logits = model.apply(variables, images, ids)
    assert logits.shape == (BATCH, NUM_ANSWERS)
    # Pair every question with another example's image, and every image with another question:
    # each row's answer changes.
    permutation = np.roll(np.arange(BATCH), 1)
    for changed in (model.apply(variables, images[permutation], ids),
                    model.apply(variables, images, ids[permutation])):
        assert np.all(np.max(np.abs(logits - changed), axis=-1) > 1e-4)


# ------------------------------------------------------------------------------------------------
# Config errors.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, make_config, section",
    [
        (build_mid_fusion, mid_config, None),
        (build_mid_fusion, mid_config, "image"),
        (build_mid_fusion, mid_config, "text"),
        (build_mid_fusion, mid_config, "fusion"),
        (build_early_fusion, early_config, None),
        (build_late_fusion_classifier, late_config, None),
        (build_late_fusion_classifier, late_config, "text"),
    ],
)
def test_config_typo_names_the_field(build, make_config, section):
    config = make_config()
    (config if section is None else config[section]).dpeth = 2
    where = "config.model" if section is None else f"config.model.{section}"
    with pytest.raises(ValueError, match=rf"{where} has unknown field\(s\) \['dpeth'\]"):
        build(config)
