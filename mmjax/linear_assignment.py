"""Linear assignment (the Hungarian algorithm) in JAX, for DETR-style set matching.

A set-prediction loss (DETR, Carion et al., 2020) must decide which prediction answers which
target before it can compare them. With C[i, j] the cost of explaining target i by prediction j,
it takes the one-to-one match σ of least total cost,

    σ* = argmin_σ Σ_i C[i, σ(i)]      over injections σ: {0..rows-1} → {0..cols-1}, rows ≤ cols,

trains prediction σ*(i) towards target i and every unmatched prediction towards "no object".

    linear_sum_assignment                  one cost matrix [rows, cols] -> the column of each row
    batched_linear_sum_assignment          a batch of them with padding rows -> both directions
    scipy_linear_sum_assignment_callback   the same optimum from SciPy through `jax.pure_callback`

Why a solver in JAX rather than a callback to `scipy.optimize.linear_sum_assignment`: the match
is computed inside the jitted training step, from costs that step has just computed. A callback
stops the step, copies the costs to the host, runs SciPy on one matrix after another in one
Python thread and copies the match back: on a TPU or GPU a round trip per step, and with the batch
sharded over devices, one host thread serving every device's images in turn. The solver here is
ordinary XLA: it compiles for every backend, is vmapped over the batch, and a batch sharded over
devices is matched where it lies, without a collective (the tests check the compiled program).
Even on the CPU, where there is no copy to save, the callback is the slower (`bench/matching.py`,
2 cores of an AMD EPYC shared with another job): matching 4 targets to 64 predictions for each
image of a batch of 256 takes 1.1 ms in JAX and 1.4 ms through the callback, of which SciPy's
solving is 1.0 ms; over batches of 64 and 256 and 36 or 64 predictions, the callback takes 1.15
to 1.35 times as long.

The solver is the shortest-augmenting-path form of the Hungarian algorithm (Kuhn, 1955; with
potentials, Tomizawa, 1971; Edmonds & Karp, 1972): rows are added one at a time, and each is
given a column by a Dijkstra search over the columns on reduced costs C[i, j] - u[i] - v[j] ≥ 0,
where the dual potentials u, v keep the match built so far optimal. Adding row i takes at most i
search steps of O(cols) vector work each, O(rows² · cols) in all: for 4 targets, 10 search steps
per image. The loops run a number of steps fixed before they start (`_hungarian_col_to_row`
proves it suffices), so the solver terminates whatever the costs hold.

Costs are solved in float32. NaN and +inf entries mean "forbidden": they are replaced by a finite
cost larger than any assignment avoiding them could cost, so one is chosen only when every
assignment takes one, and the arithmetic never meets inf - inf. No gradient flows through the
match (it is a discrete choice); the loss differentiates the costs of the pairs it picked.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Finite costs are clipped to this magnitude, so that the forbidden cost derived from them
# (2 · rows · 1e18 + 1 at most) and the potentials, which reach about rows times the forbidden
# cost, stay far below float32's 3.4e38 for any number of rows a matching has. No matching cost
# is near it.
MAX_FINITE_COST = 1e18


class Assignment(NamedTuple):
    """The optimal match of a batch of cost matrices, in both directions.

    Attributes:
      row_to_col: [batch, rows] int32; row_to_col[b, i] is the column matched to valid row i of
        image b, and -1 where row i is not valid (a padding target).
      col_to_row: [batch, cols] int32; col_to_row[b, j] is the valid row matched to column j, and
        -1 where column j is matched to no valid row (a prediction of "no object").
    """

    row_to_col: Array
    col_to_row: Array


def _check_shape(rows: int, cols: int) -> None:
    if rows > cols:
        raise ValueError(
            f"linear assignment needs at most as many rows as columns (each row takes its own "
            f"column), got {rows} rows and {cols} columns"
        )


def _forbid_non_finite(cost: Array) -> Array:
    """Replaces NaN and +inf by a finite cost F that only a forced choice pays, -inf by -F.

    With M the largest finite |C[i, j]|, an assignment avoiding forbidden entries costs at most
    rows · M, and one taking a forbidden entry costs at least F - (rows - 1) · M; F = 2 · rows · M
    + 1 puts the second above the first, so the optimum avoids F whenever it can (and takes -F).
    """
    rows = cost.shape[0]
    finite = jnp.isfinite(cost)
    clipped = jnp.clip(jnp.where(finite, cost, 0.0), -MAX_FINITE_COST, MAX_FINITE_COST)
    forbidden = 2.0 * rows * jnp.max(jnp.abs(clipped)) + 1.0
    return jnp.where(finite, clipped, jnp.where(cost == -jnp.inf, -forbidden, forbidden))


def _hungarian_col_to_row(cost: Array) -> Array:
    """The shortest-augmenting-path Hungarian algorithm on a finite cost [rows, cols], rows ≤ cols.

    Returns col_to_row [cols] int32: the row of each column, -1 for the cols - rows unmatched ones.

    Indices are 1-based as in the classic formulation: column 0 is a virtual column that holds the
    row being added, and p[j] = 0 means column j is free. Invariant after each added row: the
    reduced costs C[i, j] - u[i] - v[j] are ≥ 0, and 0 on every matched pair, so the match is
    optimal for the rows added so far (complementary slackness).

    That invariant is also why no array u is kept: the potential of a matched row is implied by
    its column, u[p[j]] = C[p[j], j] - v[j], and stays so while the search shifts u[p[j]] and v[j]
    by the same delta. Only the potential of the row being added, u_i, is carried, which spares a
    scatter into u at every step.

    Every loop runs a number of steps fixed before it starts, so the solver terminates whatever
    the costs hold. Adding row i needs at most i search steps: each step makes one more column
    final and the search stops at the first free one it reaches; every column made final before
    that is column 0 or one of the i - 1 matched columns, so the i-th step at the latest reaches a
    free column (one always exists, as i ≤ rows ≤ cols). The path it found visits at most i columns
    besides column 0, so i augmenting steps suffice too. The steps left over once a loop is done
    change nothing. A while_loop stopping when the search does would skip some of them (under
    vmap it runs until the slowest image of the batch is done, which often needs fewer than i;
    15% of the time at a batch of 256 x 4 x 64 on a CPU), but its condition would become an `any`
    over the batch, and with the batch sharded over devices, an all-reduce at every step.
    """
    rows, cols = cost.shape
    a = jnp.pad(cost, ((1, 0), (1, 0)))  # [rows + 1, cols + 1]; row 0 and column 0 are never used
    column = jnp.arange(cols + 1, dtype=jnp.int32)

    def add_row(i, state):
        v, p = state  # [cols + 1] each
        p = jnp.where(column == 0, i, p)

        def search_step(_, state):
            # minv[j]: the shortest reduced-cost path found so far from row i to column j;
            # way[j]: the column before j on that path; used: the columns whose path is final.
            v, way, minv, used, j0, u_i = state
            # j0, the column made final last, is matched: go on. Once it is free, the steps left
            # shift by delta = 0 and record no shorter path, which leaves v, way and j0 as they are
            searching = p[j0] != 0
            used = used | (column == j0)
            # relax the edges from row i0, the row of column j0
            i0 = p[j0]
            row = a[i0]  # [cols + 1]
            u_i0 = jnp.where(j0 == 0, u_i, row[j0] - v[j0])
            reduced = row - u_i0 - v
            shorter = searching & ~used & (reduced < minv)
            minv = jnp.where(shorter, reduced, minv)
            way = jnp.where(shorter, j0, way)
            # the closest column not yet final, the first of ties (two plain reductions: with an
            # argmin, a reduction over (value, index) pairs, the solver takes 1.3x as long on a CPU)
            unused_minv = jnp.where(used, jnp.inf, minv)
            delta = jnp.where(searching, jnp.min(unused_minv), 0.0)
            j1 = jnp.where(searching, jnp.min(jnp.where(unused_minv == delta, column, cols)), j0)
            # shift the potentials so that the path to j1 becomes tight: u[p[j]] += delta for the
            # used columns (implied for matched rows, carried for row i), v[j] -= delta
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(used, minv, minv - delta)
            return v, way, minv, used, j1, u_i + delta

        search = (
            v,
            jnp.zeros((cols + 1,), jnp.int32),  # way
            jnp.full((cols + 1,), jnp.inf, jnp.float32),  # minv
            jnp.zeros((cols + 1,), bool),  # used
            jnp.int32(0),  # j0
            jnp.float32(0.0),  # u_i
        )
        v, way, _, _, j0, _ = jax.lax.fori_loop(0, i, search_step, search)

        # augment along the path back to column 0: each column on it takes the row of the column
        # before it, and row i goes to the first column after column 0
        def augment_step(_, state):
            p, j0 = state
            on_path = j0 != 0
            j1 = way[j0]
            return jnp.where(on_path & (column == j0), p[j1], p), jnp.where(on_path, j1, 0)

        p, _ = jax.lax.fori_loop(0, i, augment_step, (p, j0))
        return v, p

    state = (jnp.zeros((cols + 1,), jnp.float32), jnp.zeros((cols + 1,), jnp.int32))
    _, p = jax.lax.fori_loop(1, rows + 1, add_row, state)
    return p[1:] - 1


def _invert(col_to_row: Array, rows: int) -> Array:
    """row_to_col [rows] from col_to_row [cols] (-1 entries, unmatched columns, are dropped)."""
    cols = col_to_row.shape[0]
    target = jnp.where(col_to_row >= 0, col_to_row, rows)  # out of bounds: dropped
    columns = jnp.arange(cols, dtype=jnp.int32)
    return jnp.full((rows,), -1, jnp.int32).at[target].set(columns, mode="drop")


def _solve(cost: Array) -> Array:
    """col_to_row [cols] of the optimal assignment of cost [rows, cols]."""
    cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
    return _hungarian_col_to_row(_forbid_non_finite(cost))


def linear_sum_assignment(cost: Array) -> Array:
    """The column of each row in a least-cost one-to-one assignment of rows to columns.

        row_to_col = argmin Σ_i cost[i, row_to_col[i]]   over distinct columns row_to_col[i]

    Jittable and vmappable (static shapes, `jax.lax` loops of fixed length). Among tied optima any
    one is returned.

    Args:
      cost: [rows, cols] with rows ≤ cols, any float dtype (solved in float32). NaN and +inf mark
        forbidden pairs, taken only when every assignment takes one; -inf pairs are taken whenever
        possible. Finite entries beyond ±1e18 are clipped.

    Returns:
      row_to_col: [rows] int32, distinct columns.

    Raises:
      ValueError: if rows > cols.

    Examples:
      >>> cost = jnp.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0]])
      >>> linear_sum_assignment(cost)
      Array([1, 0], dtype=int32)
    """
    if cost.ndim != 2:
        raise ValueError(f"cost must be [rows, cols], got shape {cost.shape}")
    rows, cols = cost.shape
    _check_shape(rows, cols)
    if rows == 0:
        return jnp.zeros((0,), jnp.int32)
    return _invert(_solve(cost), rows)


def batched_linear_sum_assignment(cost: Array, valid_rows: Array | None = None) -> Assignment:
    """`linear_sum_assignment` of each image of a batch, where some rows may be padding.

    Padding rows (valid_rows False) are given the constant cost 0 in every column before solving.
    That leaves the match of the valid rows optimal for the valid rows alone: the padding rows add
    the same total whichever columns they take, and since rows ≤ cols every injection of the valid
    rows extends to one of all rows (the cols - valid spare columns can take the padding rows), so
    minimising over all rows minimises over the valid rows' choices plus a constant.

    Args:
      cost: [batch, rows, cols] with rows ≤ cols (rows: targets, padded; cols: predictions).
      valid_rows: [batch, rows] bool, True for real targets; None: every row is valid.

    Returns:
      `Assignment`(row_to_col [batch, rows] int32, -1 for padding rows; col_to_row [batch, cols]
      int32, -1 for columns no valid row takes).

    Raises:
      ValueError: if rows > cols, or valid_rows does not have cost's [batch, rows].

    Examples:
      >>> cost = jnp.array([[[4.0, 1.0, 3.0], [9.0, 9.0, 9.0]]])
      >>> match = batched_linear_sum_assignment(cost, jnp.array([[True, False]]))
      >>> match.row_to_col, match.col_to_row
      (Array([[ 1, -1]], dtype=int32), Array([[-1,  0, -1]], dtype=int32))
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be [batch, rows, cols], got shape {cost.shape}")
    batch, rows, cols = cost.shape
    _check_shape(rows, cols)
    if valid_rows is None:
        valid_rows = jnp.ones((batch, rows), bool)
    if valid_rows.shape != (batch, rows):
        raise ValueError(f"valid_rows must be [batch, rows] = {(batch, rows)}, got {valid_rows.shape}")
    if rows == 0:
        return Assignment(jnp.zeros((batch, 0), jnp.int32), jnp.full((batch, cols), -1, jnp.int32))
    # padding rows become a constant row, whatever they held (a NaN, a huge cost)
    cost = jnp.where(valid_rows[:, :, None], cost, 0.0)
    col_to_row = jax.vmap(_solve)(cost)  # [batch, cols]
    row_to_col = jax.vmap(_invert, in_axes=(0, None))(col_to_row, rows)
    row_to_col = jnp.where(valid_rows, row_to_col, -1)
    taken_by_valid_row = jnp.take_along_axis(valid_rows, jnp.maximum(col_to_row, 0), axis=1)
    col_to_row = jnp.where((col_to_row >= 0) & taken_by_valid_row, col_to_row, -1)
    return Assignment(row_to_col, col_to_row)


def _scipy_row_to_col(cost: np.ndarray) -> np.ndarray:
    """SciPy's optimum of every matrix of cost [..., rows, cols], one after another on the host."""
    from scipy.optimize import linear_sum_assignment as scipy_solve

    cost = np.asarray(cost)
    row_to_col = np.empty(cost.shape[:-1], np.int32)
    for index in np.ndindex(cost.shape[:-2]):
        _, cols = scipy_solve(cost[index])  # rows ≤ cols: the row indices are 0..rows-1 in order
        row_to_col[index] = cols
    return row_to_col


def scipy_linear_sum_assignment_callback(cost: Array) -> Array:
    """`scipy.optimize.linear_sum_assignment` of each matrix, called from a jitted program.

    The alternative to the JAX solver that this module argues against (see its docstring): the
    program stops, the costs go to the host, SciPy solves the matrices one at a time, and the
    match comes back. Kept for comparison (`bench/matching.py`, the tests).

    Under `jax.vmap` the callback is called once with the vmapped axes in front
    (`vmap_method="expand_dims"`), since it loops over leading axes itself.

    Args:
      cost: [batch, rows, cols] with rows ≤ cols, without NaN (SciPy raises on NaN, and an
        exception in a callback leaves the program undefined); +inf marks a forbidden pair, and
        some assignment must avoid them all.

    Returns:
      row_to_col: [batch, rows] int32.
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be [batch, rows, cols], got shape {cost.shape}")
    _check_shape(cost.shape[1], cost.shape[2])
    result = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(_scipy_row_to_col, result, cost, vmap_method="expand_dims")
