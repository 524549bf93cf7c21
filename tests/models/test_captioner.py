"""CoCa: outputs, causality, cached decoding against recomputation, greedy and beam search, EOS."""

import collections
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.captioner import (
    EOS_ID,
    START_ID,
    CaptionDecoder,
    CoCa,
    beam_search,
    greedy_search,
    gather_beams_in_cache,
    generate,
    init_decode_cache,
    shift_right,
)
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT

VOCAB, TEXT_LEN, MAX_LEN, BATCH = 24, 8, 8, 3


@functools.cache
def make_model(scan: bool = True, unroll: int | bool = 1) -> CoCa:
    return CoCa(
        image_encoder=ViT(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="mean"),
        text_encoder=TextTransformer(
            vocab_size=VOCAB, max_len=TEXT_LEN, width=32, depth=1, num_heads=2, mlp_dim=64
        ),
        decoder=CaptionDecoder(
            vocab_size=VOCAB, max_len=MAX_LEN, width=32, depth=2, num_heads=2, mlp_dim=64, scan=scan,
            unroll=unroll,
        ),
        embed_dim=16,
    )


@functools.cache
def _jitted():
    """The model's init and forward pass under jit, compiled once for the module."""
    model = make_model()
    return jax.jit(model.init), jax.jit(model.apply)


# The jitted entry points are shared by all tests, so each compiles once per beam size; TRACES
# counts how often each was traced (the wrapper's body runs at tracing only).
TRACES = collections.Counter()


def _jit_counting_traces(search):
    def traced(model, params, images, **kwargs):
        TRACES[search.__name__, kwargs.get("beam_size", 1)] += 1
        return search(model, params, images, **kwargs)

    return jax.jit(traced, static_argnames=("model", "max_len", "beam_size"))


_generate_jit = _jit_counting_traces(generate)
_beam_search_jit = _jit_counting_traces(beam_search)


def run_generate(params, images, *, eos_id=EOS_ID, beam_size=1, length_penalty=0.0, stop_early=True):
    """`generate` under jit. Every call passes the same arguments (values change, types do not)."""
    return _generate_jit(
        make_model(), params, images, max_len=MAX_LEN, start_id=START_ID, eos_id=eos_id,
        beam_size=beam_size, length_penalty=float(length_penalty), stop_early=bool(stop_early),
    )


def run_beam_search(params, images, *, eos_id=EOS_ID, beam_size, length_penalty=0.0, stop_early=True):
    """`beam_search` under jit, called like `run_generate`."""
    return _beam_search_jit(
        make_model(), params, images, max_len=MAX_LEN, start_id=START_ID, eos_id=eos_id,
        beam_size=beam_size, length_penalty=float(length_penalty), stop_early=bool(stop_early),
    )


def random_inputs(seed: int):
    """Images [BATCH, 16, 16, 3] and captions [BATCH, TEXT_LEN] ending in EOS, padded with 0."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((BATCH, 16, 16, 3)).astype(np.float32)
    token_ids = np.zeros((BATCH, TEXT_LEN), np.int32)
    for row, length in enumerate(rng.integers(2, TEXT_LEN + 1, BATCH)):
        token_ids[row, : length - 1] = rng.integers(3, VOCAB, length - 1)
        token_ids[row, length - 1] = EOS_ID
    return images, token_ids


def init_params(seed: int):
    images, token_ids = random_inputs(seed)
    init, _ = _jitted()
    # An RBG key: its initialisers compile in about half the time of the default (threefry) ones.
    key = jax.random.key(seed, impl="rbg")
    return nn.unbox(init(key, images, token_ids, shift_right(token_ids, START_ID)))["params"]


def teacher_forced_logits(params, images, decoder_input_ids):
    """The full forward pass: logits [batch, L, vocab] for the given decoder inputs, no cache.

    The text tower's input does not reach the logits; the decoder inputs stand in for it.
    """
    _, forward = _jitted()
    return forward({"params": params}, images, decoder_input_ids, decoder_input_ids)["logits"]


def caption_log_probs(params, images, tokens):
    """log p(tokens | image) [batch], summed over the tokens up to and including the first EOS."""
    logits = teacher_forced_logits(params, images, shift_right(jnp.asarray(tokens), START_ID))
    token_log_probs = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], -1)[..., 0]
    is_eos = tokens == EOS_ID
    up_to_first_eos = (np.cumsum(is_eos, axis=1) - is_eos) == 0
    return np.sum(token_log_probs * up_to_first_eos, axis=1)


def assert_padded_after_first_eos(tokens, eos_id):
    """Every sequence along the last axis is 0 after its first eos_id."""
    tokens = np.asarray(tokens).reshape(-1, tokens.shape[-1])
    for row in tokens:
        eos_positions = np.flatnonzero(row == eos_id)
        if eos_positions.size:
            assert not np.any(row[eos_positions[0] + 1 :]), row


def test_shift_right_puts_the_start_token_in_front():
    ids = jnp.array([[5, 6, 2, 0], [7, 8, 9, 2]])
    np.testing.assert_array_equal(shift_right(ids, START_ID), [[2, 5, 6, 2], [2, 7, 8, 9]])


def test_outputs_have_documented_shapes_dtypes_and_norms():
    images, token_ids = random_inputs(0)
    params = init_params(0)
    _, forward = _jitted()
    out = forward({"params": params}, images, token_ids, shift_right(token_ids, START_ID))
    assert out["image_embeddings"].shape == out["text_embeddings"].shape == (BATCH, 16)
    assert out["logits"].shape == (BATCH, TEXT_LEN, VOCAB)
    for name in ("image_embeddings", "text_embeddings", "logits"):
        assert out[name].dtype == jnp.float32, name
    np.testing.assert_allclose(np.linalg.norm(out["image_embeddings"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_embeddings"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    # The scale is clamped at 100.
    clamped = {**params, "logit_scale": jnp.asarray(7.0)}
    assert float(forward({"params": clamped}, images, token_ids, token_ids)["logit_scale"]) == 100.0
    # Contrastive text tower and caption decoder are separate stacks.
    assert {"text_encoder", "decoder", "image_encoder"} <= set(params)


def test_decoder_logits_are_causal():
    images, token_ids = random_inputs(1)
    params = init_params(1)
    decoder_input_ids = shift_right(token_ids, START_ID)
    changed = np.array(decoder_input_ids)
    changed[:, 4] = (changed[:, 4] + 1 - 3) % (VOCAB - 3) + 3  # another real token at position 4
    logits = np.asarray(teacher_forced_logits(params, images, decoder_input_ids))
    logits_changed = np.asarray(teacher_forced_logits(params, images, changed))
    np.testing.assert_allclose(logits_changed[:, :4], logits[:, :4], rtol=0, atol=1e-6)
    assert np.all(np.abs(logits_changed[:, 4:] - logits[:, 4:]).max(axis=-1) > 1e-4)


def test_cached_greedy_decoding_equals_recomputing_the_prefix_every_step():
    images, _ = random_inputs(2)
    params = init_params(2)
    model = make_model()
    tokens = np.asarray(run_generate(params, images, eos_id=-1))  # no EOS: all MAX_LEN steps count
    assert tokens.shape == (BATCH, MAX_LEN) and tokens.dtype == np.int32

    # Without a cache: at step i, the full teacher-forced forward over [START, t_0 .. t_{i-1}]
    # (padded to MAX_LEN so one compilation serves every step; the decoder is causal, so the
    # padding cannot reach position i), then argmax.
    reference_tokens = np.zeros((BATCH, MAX_LEN), np.int32)
    reference_logits = []
    for i in range(MAX_LEN):
        decoder_input_ids = shift_right(jnp.asarray(reference_tokens), START_ID)
        step_logits = np.asarray(teacher_forced_logits(params, images, decoder_input_ids))[:, i]
        reference_logits.append(step_logits)
        reference_tokens[:, i] = np.argmax(step_logits, axis=-1)
    np.testing.assert_array_equal(tokens, reference_tokens)

    # With the cache: the decode step `generate` runs, fed the same tokens one at a time.
    image_tokens = model.apply({"params": params}, images, method=CoCa.encode_image_tokens)
    cache = init_decode_cache(model, image_tokens, MAX_LEN)

    @jax.jit
    def cached_step(cache, token):
        logits, variables = model.apply(
            {"params": params, "cache": cache}, token, image_tokens, method=CoCa.decode_step, mutable=["cache"]
        )
        return logits[:, 0], variables["cache"]

    for i, fed in enumerate(np.asarray(shift_right(jnp.asarray(tokens), START_ID)).T):
        step_logits, cache = cached_step(cache, jnp.asarray(fed[:, None]))
        np.testing.assert_allclose(step_logits, reference_logits[i], rtol=1e-5, atol=1e-5, err_msg=f"step {i}")
    assert int(cache["decoder"]["position"]) == MAX_LEN


def test_unrolled_decoder_trains_and_decodes_like_the_loop():
    """`unroll=True` compiles the decoder's blocks as straight-line code on the same stacked
    parameters (and stacked cache): the same teacher-forced logits and the same greedy captions."""
    images, token_ids = random_inputs(5)
    params = init_params(5)
    unrolled = make_model(unroll=True)
    decoder_input_ids = shift_right(token_ids, START_ID)
    logits = jax.jit(unrolled.apply)({"params": params}, images, token_ids, decoder_input_ids)["logits"]
    np.testing.assert_allclose(logits, teacher_forced_logits(params, images, decoder_input_ids),
                               rtol=1e-5, atol=1e-5)
    search = functools.partial(generate, max_len=MAX_LEN, start_id=START_ID, eos_id=-1)
    tokens = jax.jit(search, static_argnums=0)(unrolled, params, images)
    np.testing.assert_array_equal(tokens, run_generate(params, images, eos_id=-1))


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_beam_search_with_one_beam_is_greedy(length_penalty):
    for seed in range(3):
        images, _ = random_inputs(10 + seed)
        params = init_params(10 + seed)
        greedy = run_generate(params, images)
        beams = run_beam_search(params, images, beam_size=1, length_penalty=length_penalty)
        np.testing.assert_array_equal(beams.tokens[:, 0], greedy)


def test_beam_log_probs_are_those_of_the_returned_captions():
    """If the cache rows did not follow their beams, the log-probs would not match the captions."""
    images, _ = random_inputs(20)
    params = init_params(20)
    beams = run_beam_search(params, images, beam_size=4, length_penalty=0.6)
    assert beams.tokens.shape == (BATCH, 4, MAX_LEN) and beams.log_probs.shape == (BATCH, 4)
    tokens = np.asarray(beams.tokens)
    for k in range(4):
        np.testing.assert_allclose(
            beams.log_probs[:, k], caption_log_probs(params, images, tokens[:, k]), rtol=1e-4, atol=1e-4
        )
    # Ranked best first, and the four beams of an image are four different captions.
    assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)
    assert all(len({tuple(beam) for beam in tokens[b]}) == 4 for b in range(BATCH))


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_gathering_beams_moves_the_rows_of_cached_keys_and_values_only(scan):
    decoder = make_model(scan).decoder
    rows = 6
    cache = jax.eval_shape(
        lambda: decoder.init(
            jax.random.key(0), jnp.zeros((rows, MAX_LEN), jnp.int32), jnp.zeros((rows, 5, 32)), decode=True
        )
    )["cache"]

    def is_key_or_value(path):
        return path[-1].key in ("cached_key", "cached_value")

    def fill(path, shape):
        # Row r of a key/value holds r everywhere; the step counters hold 3.
        if is_key_or_value(path):
            row_axis = len(shape.shape) - 4
            row_ids = np.arange(rows).reshape([-1 if a == row_axis else 1 for a in range(len(shape.shape))])
            return jnp.asarray(np.broadcast_to(row_ids, shape.shape), shape.dtype)
        return jnp.full(shape.shape, 3, shape.dtype)

    cache = jax.tree_util.tree_map_with_path(fill, cache)
    index = np.array([2, 2, 0, 5, 4, 1])
    leaves = jax.tree_util.tree_leaves_with_path(gather_beams_in_cache(cache, jnp.asarray(index)))
    for path, leaf in leaves:
        if is_key_or_value(path):
            by_row = np.moveaxis(np.asarray(leaf), leaf.ndim - 4, 0).reshape(rows, -1)
            np.testing.assert_array_equal(by_row, np.broadcast_to(index[:, None], by_row.shape))
        else:
            np.testing.assert_array_equal(leaf, 3)
    names = [path[-1].key for path, _ in leaves]
    assert names.count("cached_key") == (1 if scan else 2) and "position" in names


def test_wider_beam_finds_captions_at_least_as_probable_as_greedy():
    # Not a theorem (the greedy prefix can fall out of the beam), but what a working search does.
    greedy_log_probs, beam_log_probs = [], []
    for seed in range(4):
        images, _ = random_inputs(30 + seed)
        params = init_params(30 + seed)
        greedy = np.asarray(run_generate(params, images))
        best_beam = np.asarray(run_generate(params, images, beam_size=4))
        greedy_log_probs.append(caption_log_probs(params, images, greedy))
        beam_log_probs.append(caption_log_probs(params, images, best_beam))
    greedy_log_probs, beam_log_probs = np.concatenate(greedy_log_probs), np.concatenate(beam_log_probs)
    assert np.all(beam_log_probs >= greedy_log_probs - 1e-5), (beam_log_probs, greedy_log_probs)
    assert np.any(beam_log_probs > greedy_log_probs + 1e-3)  # and it does find better ones


def test_generation_stops_at_eos_and_pads_the_rest():
    images, _ = random_inputs(40)
    params = init_params(40)
    free = np.asarray(run_generate(params, images, eos_id=-1))

    # Call "EOS" a token that greedy decoding first emits at step s >= 2 of some caption: that
    # caption must stop there, and every caption must stop at its first such token.
    row, step = next(
        (r, s) for r in range(BATCH) for s in range(2, MAX_LEN) if free[r, s] not in free[r, :s]
    )
    eos = int(free[row, step])
    stopped = np.asarray(run_generate(params, images, eos_id=eos))
    np.testing.assert_array_equal(stopped[row], np.r_[free[row, : step + 1], np.zeros(MAX_LEN - step - 1)])
    for r in range(BATCH):
        hits = np.flatnonzero(free[r] == eos)
        end = hits[0] + 1 if hits.size else MAX_LEN
        np.testing.assert_array_equal(stopped[r, :end], free[r, :end])
        assert not np.any(stopped[r, end:])
    beams = run_beam_search(params, images, eos_id=eos, beam_size=4)
    assert_padded_after_first_eos(beams.tokens, eos)
    assert np.any(np.asarray(beams.tokens)[..., :-1] == eos)

    # A large output bias on EOS ends every caption at the first step, so the loops stop early;
    # the output is the same as running all MAX_LEN steps.
    biased = jax.tree.map(lambda x: x, params)
    bias = biased["decoder"]["output_projection"]["bias"]
    biased["decoder"]["output_projection"]["bias"] = bias.at[EOS_ID].add(50.0)
    only_eos = np.array([[EOS_ID] + [0] * (MAX_LEN - 1)] * BATCH)
    for stop_early in (True, False):
        np.testing.assert_array_equal(run_generate(biased, images, stop_early=stop_early), only_eos)
    for beam_size in (1, 4):
        early, full = (run_beam_search(biased, images, beam_size=beam_size, stop_early=s) for s in (True, False))
        for early_leaf, full_leaf in zip(early, full):
            np.testing.assert_array_equal(early_leaf, full_leaf)
        np.testing.assert_array_equal(early.tokens[:, 0], only_eos)
        assert_padded_after_first_eos(early.tokens, EOS_ID)


def test_generate_compiles_once_per_beam_size():
    for beam_size in (1, 4):
        for i, seed in enumerate((50, 51, 52)):
            images, _ = random_inputs(seed)
            # New parameters, images, EOS id and length penalty: new values, the same shapes.
            tokens = run_generate(
                init_params(seed), images, eos_id=EOS_ID + i, beam_size=beam_size, length_penalty=0.1 * i
            )
            assert tokens.shape == (BATCH, MAX_LEN) and tokens.dtype == jnp.int32
        # Every call in this module, this test's and the others', shared one trace.
        assert TRACES["generate", beam_size] == 1


def test_a_prompt_is_forced_then_decoding_continues_greedily():
    """Generative VQA: the prompt's tokens come out as given, then the greedy continuation of it."""
    images, _ = random_inputs(5)
    params = init_params(5)
    model = make_model()
    rng = np.random.default_rng(5)
    lengths = np.array([1, 3, 4], np.int32)
    prompt = np.zeros((BATCH, 4), np.int32)
    for row, n in enumerate(lengths):
        prompt[row, :n] = rng.integers(3, VOCAB, n)
    search = jax.jit(lambda p, im, ids, n: greedy_search(
        model, p, im, max_len=MAX_LEN, start_id=START_ID, eos_id=-1, prompt_ids=ids, prompt_lengths=n))
    tokens = np.asarray(search(params, images, prompt, lengths))
    # Reference without a cache: prompt, then argmax of the teacher-forced logits step by step.
    reference = np.zeros((BATCH, MAX_LEN), np.int32)
    for row, n in enumerate(lengths):
        reference[row, :n] = prompt[row, :n]
    for i in range(MAX_LEN):
        logits = np.asarray(teacher_forced_logits(params, images, shift_right(jnp.asarray(reference), START_ID)))
        free = i >= lengths
        reference[free, i] = np.argmax(logits[free, i], axis=-1)
    np.testing.assert_array_equal(tokens, reference)
    with pytest.raises(ValueError, match="go together"):
        greedy_search(model, params, images, max_len=MAX_LEN, start_id=START_ID, eos_id=EOS_ID, prompt_ids=prompt)


def test_build_coca_names_unknown_fields():
    from mmjax.models.captioner import build_coca

    config = dict(embed_dim=8, image=dict(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32),
                  text=dict(vocab_size=VOCAB, max_len=TEXT_LEN, width=16, depth=1, num_heads=2, mlp_dim=32),
                  decoder=dict(max_len=MAX_LEN, width=16, depth=1, num_heads=2, mlp_dim=32))
    model = build_coca(config)
    assert model.decoder.vocab_size == VOCAB and model.text_encoder.causal
    with pytest.raises(ValueError, match=r"config.model.decoder has unknown field\(s\) \['widht'\]"):
        build_coca(dict(config, decoder=dict(config["decoder"], widht=3)))



def _context_decoder(positions: bool) -> CaptionDecoder:
    return CaptionDecoder(vocab_size=VOCAB, max_len=MAX_LEN, width=32, depth=2, num_heads=2, mlp_dim=64,
                          context_position_embedding=positions)


def _decoder_inputs(seed: int):
    """Decoder inputs [BATCH, MAX_LEN] (no padding) and image tokens [BATCH, 9, 32]."""
    rng = np.random.default_rng(seed)
    ids = shift_right(jnp.asarray(rng.integers(3, VOCAB, (BATCH, MAX_LEN)), jnp.int32), START_ID)
    return ids, rng.standard_normal((BATCH, 9, 32)).astype(np.float32)


def test_context_positions_tell_the_decoder_which_image_token_is_where():
    """Cross-attention alone reads the image tokens as a set: shuffling them changes nothing. With
    a position per context token (`context_position_embedding`) the shuffle changes the logits,
    unless the positions are shuffled with the tokens."""
    ids, image_tokens = _decoder_inputs(11)
    shuffle = np.random.default_rng(12).permutation(9)
    key = jax.random.key(3, impl="rbg")

    plain = _context_decoder(False)
    p = nn.unbox(jax.jit(plain.init)(key, ids, image_tokens))
    apply = jax.jit(plain.apply)
    np.testing.assert_allclose(apply(p, ids, image_tokens[:, shuffle]), apply(p, ids, image_tokens),
                               rtol=1e-5, atol=1e-5)

    placed = _context_decoder(True)
    p = nn.unbox(jax.jit(placed.init)(key, ids, image_tokens))
    table = p["params"]["context_pos_embed"]
    assert table.shape == (9, 32)
    # Stronger positions than the initial 0.02, so the difference is far above rounding.
    p["params"]["context_pos_embed"] = table * 50
    apply = jax.jit(placed.apply)
    logits = apply(p, ids, image_tokens)
    assert np.abs(apply(p, ids, image_tokens[:, shuffle]) - logits).max() > 1e-3
    moved = jax.tree.map(lambda a: a, p)
    moved["params"]["context_pos_embed"] = p["params"]["context_pos_embed"][shuffle]
    np.testing.assert_allclose(apply(moved, ids, image_tokens[:, shuffle]), logits, rtol=1e-5, atol=1e-5)


def test_cached_decoding_reads_the_same_placed_context_as_teacher_forcing():
    """With context positions, the cached decode step adds them to the context at every step:
    step i's logits are the teacher-forced logits at position i (1e-5)."""
    ids, image_tokens = _decoder_inputs(13)
    decoder = _context_decoder(True)
    key = jax.random.key(4, impl="rbg")
    params = nn.unbox(jax.jit(decoder.init)(key, ids, image_tokens))["params"]
    params = {**params, "context_pos_embed": params["context_pos_embed"] * 50}
    teacher = np.asarray(jax.jit(decoder.apply)({"params": params}, ids, image_tokens))
    cache = jax.tree.map(jnp.zeros_like, decoder.init(key, ids, image_tokens, decode=True)["cache"])

    @jax.jit
    def step(cache, token):
        logits, variables = decoder.apply({"params": params, "cache": cache}, token, image_tokens,
                                          decode=True, mutable=["cache"])
        return logits[:, 0], variables["cache"]

    for i in range(MAX_LEN):
        logits, cache = step(cache, ids[:, i:i + 1])
        np.testing.assert_allclose(logits, teacher[:, i], rtol=1e-5, atol=1e-5, err_msg=f"step {i}")
