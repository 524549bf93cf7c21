"""Fixtures shared by the tests of the text-to-image priors (autoregressive and MaskGIT)."""

import jax
import numpy as np
import pytest


@pytest.fixture(scope="session")
def random_prior_params():
    """prior -> (params, text [3, T]) at random (not initial) weights: the initial ones plus
    0.3·N(0, 1) on every leaf, so no path is trivially zero; random captions."""
    return _random_prior_params


def _random_prior_params(prior):
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(1, prior.text_vocab_size, (3, prior.text_len)), jnp.int32)
    codes = jnp.asarray(rng.integers(0, prior.num_codes, (3, prior.image_len)), jnp.int32)
    params = prior.init(jax.random.key(1), text, codes)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]), text


@pytest.fixture(scope="session")
def text_named_codes():
    """64 texts [64, 3] (vocabulary 8) and the 4 codes each names (K = 7): code j = (t_1 + j·t_2)
    mod 7, so the codes are a function of the text that a prior must learn to read."""
    rng = np.random.default_rng(11)
    text = np.concatenate([rng.integers(1, 8, (64, 2)), np.full((64, 1), 2)], axis=1).astype(np.int32)
    codes = ((text[:, :1] + np.arange(4)[None] * text[:, 1:2]) % 7).astype(np.int32)
    return text, codes


@pytest.fixture(scope="session")
def changed_code_logits():
    """(prior, params, text, codes [b, N], num_ids, rng) -> (logits, [logits with code j changed to
    another of the num_ids ids, for each j]): what each code position moves."""
    import jax.numpy as jnp

    def run(prior, params, text, codes, num_ids, rng):
        logits = prior.apply({"params": params}, text, jnp.asarray(codes))
        changed_logits = []
        for j in range(codes.shape[1]):
            changed = codes.copy()
            changed[:, j] = (changed[:, j] + 1 + rng.integers(0, num_ids - 2, len(codes))) % num_ids
            changed_logits.append(prior.apply({"params": params}, text, jnp.asarray(changed)))
        return logits, changed_logits

    return run


@pytest.fixture(scope="session")
def fit_adam():
    """(loss(params, key) -> scalar, params, steps) -> (params, last loss): Adam at 3e-3, jitted,
    a fresh key each step."""
    import optax

    def fit(loss, params, steps, learning_rate=3e-3):
        optimizer = optax.adam(learning_rate)
        state = optimizer.init(params)

        @jax.jit
        def step(params, state, key):
            value, grads = jax.value_and_grad(loss)(params, key)
            updates, state = optimizer.update(grads, state)
            return optax.apply_updates(params, updates), state, value

        for i in range(steps):
            params, state, value = step(params, state, jax.random.key(100 + i))
        return params, float(value)

    return fit
