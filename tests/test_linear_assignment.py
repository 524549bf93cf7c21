"""The JAX Hungarian solver against brute force and SciPy: optimal total cost, a valid injection,
padding rows that change nothing, ties, mixed magnitudes, and NaN/inf costs that still terminate."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.linear_assignment import (
    batched_linear_sum_assignment,
    linear_sum_assignment,
    scipy_linear_sum_assignment_callback,
)

scipy_optimize = pytest.importorskip("scipy.optimize")

# Jitted once; each test keeps to a few shapes, since compiling is most of the time the tests take.
solve_padded = jax.jit(batched_linear_sum_assignment)
solve_each = jax.jit(jax.vmap(linear_sum_assignment))
scipy_callback = jax.jit(scipy_linear_sum_assignment_callback)


def solve(cost, valid_rows=None):
    """The jitted solver, always given valid_rows so that a shape compiles once; NumPy outputs."""
    if valid_rows is None:
        valid_rows = np.ones(cost.shape[:2], bool)
    return jax.tree.map(np.asarray, solve_padded(cost, valid_rows))


def total(cost, row_to_col, valid=None):
    """Σ_i cost[i, row_to_col[i]] over the valid rows, in float64."""
    cost = np.asarray(cost, np.float64)
    rows = np.arange(cost.shape[0]) if valid is None else np.flatnonzero(valid)
    return cost[rows, np.asarray(row_to_col)[rows]].sum()


def brute_force_optimum(cost, valid):
    """The least total over every injection of the valid rows into the columns."""
    rows = np.flatnonzero(valid)
    cols = cost.shape[1]
    columns = np.array(list(itertools.permutations(range(cols), len(rows))))  # [perms, valid rows]
    return np.asarray(cost, np.float64)[rows, columns].sum(axis=1).min()


def scipy_optimum(cost, valid=None):
    cost = np.asarray(cost, np.float64)
    if valid is not None:
        cost = cost[np.asarray(valid)]
    rows, cols = scipy_optimize.linear_sum_assignment(cost)
    return cost[rows, cols].sum()


def assert_valid_match(row_to_col, col_to_row, valid, cols):
    """Valid rows take distinct columns in range; the two directions are each other's inverse."""
    row_to_col, col_to_row, valid = map(np.asarray, (row_to_col, col_to_row, valid))
    assert row_to_col.dtype == np.int32 and col_to_row.dtype == np.int32
    taken = row_to_col[valid]
    assert ((taken >= 0) & (taken < cols)).all() and len(set(taken.tolist())) == len(taken)
    assert (row_to_col[~valid] == -1).all()
    expected = np.full(cols, -1)
    expected[taken] = np.flatnonzero(valid)
    np.testing.assert_array_equal(col_to_row, expected)


def random_valid_rows(rng, batch, rows):
    """[batch, rows] bool: each count of valid rows from 1 to rows in turn, at random positions."""
    valid = np.zeros((batch, rows), bool)
    for b in range(batch):
        valid[b, rng.choice(rows, size=1 + b % rows, replace=False)] = True
    return valid


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 3), (4, 6)])
def test_total_cost_equals_brute_force_on_small_problems(rows, cols):
    """Every problem size from 1 x 1 to 4 x 6 in three compiled shapes: padding rows make the
    smaller row counts, and forbidden (+inf) columns, which the optimum avoids, the smaller column
    counts. A quarter of the costs are small integers, so that many assignments tie."""
    rng = np.random.default_rng(rows * 10 + cols)
    sizes = [(r, c) for r in range(1, rows + 1) for c in range(r, cols + 1)]
    batch = 64
    cost = rng.standard_normal((batch, rows, cols)).astype(np.float32)
    cost[::4] = rng.integers(0, 3, (batch // 4, rows, cols))
    valid = np.zeros((batch, rows), bool)
    real_cols = np.zeros((batch, cols), bool)
    for b in range(batch):
        r, c = sizes[b % len(sizes)]
        valid[b, rng.choice(rows, size=r, replace=False)] = True
        real_cols[b, rng.choice(cols, size=c, replace=False)] = True
    cost = np.where(real_cols[:, None, :], cost, np.float32(np.inf))
    match = solve(cost, valid)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], valid[b], cols)
        assert real_cols[b, match.row_to_col[b][valid[b]]].all()
        assert total(cost[b], match.row_to_col[b], valid[b]) == pytest.approx(
            brute_force_optimum(cost[b][:, real_cols[b]], valid[b]), abs=1e-5
        )


# (batch, rows, cols): DETR's 4 targets against 36 patch tokens, a larger set, a square problem.
SCIPY_SHAPES = [(16, 4, 36), (16, 9, 64), (16, 16, 16)]


@pytest.mark.parametrize("batch, rows, cols", SCIPY_SHAPES)
def test_total_cost_equals_scipy_on_larger_problems(batch, rows, cols):
    rng = np.random.default_rng(rows)
    cost = rng.uniform(0.0, 10.0, (batch, rows, cols)).astype(np.float32)
    match = solve(cost)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], np.ones(rows, bool), cols)
        assert total(cost[b], match.row_to_col[b]) == pytest.approx(scipy_optimum(cost[b]), abs=1e-4)


def test_padding_rows_leave_the_valid_rows_optimal():
    """Each image's valid rows are matched as well as the unpadded problem allows, whatever the
    padding rows hold (here NaN and huge costs that would dominate if they counted)."""
    rng = np.random.default_rng(0)
    batch, rows, cols = SCIPY_SHAPES[1]
    cost = rng.uniform(0.0, 5.0, (batch, rows, cols)).astype(np.float32)
    valid = random_valid_rows(rng, batch, rows)
    cost[~valid] = np.where(rng.random((np.sum(~valid), cols)) < 0.5, np.nan, -1e6)
    match = solve(cost, valid)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], valid[b], cols)
        assert total(cost[b], match.row_to_col[b], valid[b]) == pytest.approx(
            scipy_optimum(cost[b], valid[b]), abs=1e-4
        )


def test_ties_still_give_an_optimal_injection():
    """All-equal costs (the last row's search visits every matched column before a free one),
    integer costs with many ties, and duplicated columns."""
    rng = np.random.default_rng(1)
    batch, rows, cols = SCIPY_SHAPES[2]
    cost = np.empty((batch, rows, cols), np.float32)
    cost[0] = 1.0
    cost[1] = 0.0
    cost[2:8] = rng.integers(0, 2, (6, rows, cols))
    cost[8:] = np.repeat(rng.integers(0, 4, (8, rows, cols // 4)), 4, axis=2)  # each column 4 times
    match = solve(cost)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], np.ones(rows, bool), cols)
        assert total(cost[b], match.row_to_col[b]) == scipy_optimum(cost[b])


def test_costs_of_very_different_magnitudes():
    """Costs log-uniform over 1e-3 .. 1e4: optimal up to float32 rounding of the largest."""
    rng = np.random.default_rng(2)
    batch, rows, cols = SCIPY_SHAPES[0]
    cost = (10.0 ** rng.uniform(-3, 4, (batch, rows, cols))).astype(np.float32)
    cost[:4] *= rng.choice([-1.0, 1.0], (4, rows, cols))
    match = solve(cost)
    for b in range(batch):
        scale = float(np.abs(cost[b]).max())
        tolerance = 1e-6 * rows * scale
        assert total(cost[b], match.row_to_col[b]) == pytest.approx(scipy_optimum(cost[b]), abs=tolerance)


def test_nan_and_inf_costs_terminate_with_a_valid_injection():
    """NaN and +inf are forbidden pairs: avoided when possible (SciPy's answer, which treats +inf
    so), taken when every assignment needs one; -inf pairs are taken."""
    rng = np.random.default_rng(3)
    batch, rows, cols = SCIPY_SHAPES[0]
    cost = rng.uniform(0.0, 10.0, (batch, rows, cols)).astype(np.float32)
    forbidden = rng.random((batch, rows, cols)) < 0.5
    forbidden[:, :, :rows] &= ~np.eye(rows, dtype=bool)  # row i may always take column i
    cost[:8][forbidden[:8]] = np.inf
    cost[8:12][forbidden[8:12]] = np.nan
    cost[12] = np.nan
    cost[13] = np.inf
    cost[14, 0] = np.inf  # row 0 must take a forbidden column
    cost[15, 2, 5] = -np.inf
    match = solve(cost)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], np.ones(rows, bool), cols)
    for b in range(12):
        finite = np.where(np.isnan(cost[b]), np.inf, cost[b])
        assert total(finite, match.row_to_col[b]) == pytest.approx(scipy_optimum(finite), abs=1e-4)
    # an all-forbidden row is a constant row: the other rows are matched as if it were padding
    assert total(cost[14], match.row_to_col[14], np.arange(rows) > 0) == pytest.approx(
        scipy_optimum(cost[14, 1:]), abs=1e-4
    )
    assert match.row_to_col[15, 2] == 5


def test_extreme_costs_keep_the_arithmetic_finite():
    """Costs up to ±1e20 (clipped to ±1e18) mixed with NaN and ±inf, half the rows forbidden
    everywhere in some images: still a valid injection; below the clip, still optimal."""
    rng = np.random.default_rng(8)
    batch, rows, cols = SCIPY_SHAPES[2]
    cost = rng.uniform(-1.0, 1.0, (batch, rows, cols)) * 10.0 ** rng.uniform(0, 20, (batch, 1, 1))
    kind = rng.random((batch, rows, cols))
    cost[8:][kind[8:] < 0.2] = np.inf
    cost[8:][(kind[8:] > 0.2) & (kind[8:] < 0.25)] = np.nan
    cost[8:][(kind[8:] > 0.25) & (kind[8:] < 0.27)] = -np.inf
    cost[12:, : rows // 2] = np.inf
    cost[:8] = rng.uniform(-1e17, 1e17, (8, rows, cols))
    cost = cost.astype(np.float32)
    match = solve(cost)
    for b in range(batch):
        assert_valid_match(match.row_to_col[b], match.col_to_row[b], np.ones(rows, bool), cols)
    for b in range(8):
        tolerance = 1e-6 * rows * 1e17
        assert total(cost[b], match.row_to_col[b]) == pytest.approx(scipy_optimum(cost[b]), abs=tolerance)


def test_more_rows_than_columns_is_an_error_naming_both():
    with pytest.raises(ValueError, match="3 rows and 2 columns"):
        linear_sum_assignment(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="5 rows and 4 columns"):
        batched_linear_sum_assignment(jnp.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="valid_rows"):
        batched_linear_sum_assignment(jnp.zeros((2, 3, 4)), jnp.ones((2, 4), bool))


def test_the_single_matrix_solver_vmapped_is_the_batched_one():
    rng = np.random.default_rng(4)
    cost = rng.standard_normal(SCIPY_SHAPES[0]).astype(np.float32)
    row_to_col = solve_each(cost)
    assert row_to_col.dtype == jnp.int32 and row_to_col.shape == cost.shape[:2]
    np.testing.assert_array_equal(row_to_col, solve(cost).row_to_col)


def test_the_scipy_callback_gives_the_same_optimum_under_jit_and_vmap():
    rng = np.random.default_rng(5)
    cost = rng.uniform(0.0, 10.0, SCIPY_SHAPES[0]).astype(np.float32)
    from_scipy = scipy_callback(cost)
    ours = solve(cost).row_to_col
    for b in range(cost.shape[0]):
        assert total(cost[b], from_scipy[b]) == pytest.approx(total(cost[b], ours[b]), abs=1e-4)
    # a vmap over a leading axis reaches the callback as one call with that axis in front
    vmapped = jax.jit(jax.vmap(scipy_linear_sum_assignment_callback))(cost.reshape(2, 8, 4, 36))
    np.testing.assert_array_equal(vmapped.reshape(16, 4), from_scipy)


def test_no_gradient_flows_through_the_match():
    """The loss of the matched pairs differentiates to 1 on those pairs and 0 elsewhere."""
    rng = np.random.default_rng(6)
    cost = rng.standard_normal(SCIPY_SHAPES[0]).astype(np.float32)

    def matched_cost(cost):
        row_to_col = batched_linear_sum_assignment(cost).row_to_col
        return jnp.sum(jnp.take_along_axis(cost, row_to_col[:, :, None], axis=2))

    grad = jax.jit(jax.grad(matched_cost))(cost)
    expected = np.zeros_like(cost)
    row_to_col = np.asarray(solve(cost).row_to_col)
    for b in range(cost.shape[0]):
        expected[b, np.arange(cost.shape[1]), row_to_col[b]] = 1.0
    np.testing.assert_array_equal(grad, expected)


def test_a_batch_sharded_over_devices_is_matched_where_it_lies():
    """Under jit the solver is partitioned with the batch: each device solves its own images,
    with no collective in the program, and the match comes out sharded like the costs."""
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(7)
    cost = jax.device_put(rng.uniform(0.0, 10.0, SCIPY_SHAPES[0]).astype(np.float32), sharding)
    valid = jax.device_put(np.ones(SCIPY_SHAPES[0][:2], bool), sharding)
    compiled = solve_padded.lower(cost, valid).compile()
    collectives = ("all-gather", "all-reduce", "all-to-all", "collective-permute")
    assert not any(op in compiled.as_text() for op in collectives)
    match = compiled(cost, valid)
    assert match.row_to_col.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(match.row_to_col, solve(np.asarray(cost)).row_to_col)
