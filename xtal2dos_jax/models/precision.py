"""Numerical precision of the model's computation (config.model.dtype).

Parameters are float32 in every mode; the mode decides the activations' dtype and how
matrix products are computed:

  'float32'      float32 activations and matmuls (the default; the reference numbers).
  'bfloat16'     bfloat16 activations and matmul outputs (norms and softmaxes still
                 float32). Meant for accelerators; on CPU it is slower than float32.
  'bf16_matmul'  float32 activations; every matmul (Dense layers and attention einsums)
                 rounds its operands to bfloat16 and accumulates and returns float32,
                 in the forward and the backward pass (`bf16_dot_general`). Faster on
                 CPUs with bfloat16 dot-product units (e.g. AVX512_BF16), ~3 significant
                 digits per operand.

Modules take `dtype` (activations) and `dot_general` (the matmul used by their
`nn.Dense`/`nn.DenseGeneral` layers and attention einsums); `precision_kwargs(config)`
gives both. Not covered by 'bf16_matmul': the GRU cells and Luong attention products of
the RNN ablation decoders (float32). XLA:CPU runs bfloat16-input dots only inside its
fused YNNPACK kernels, so use 'bf16_matmul' under `jax.jit` (op-by-op batched dots fail).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax


Dtype = Any
DotGeneral = Callable[..., jax.Array]
DimensionNumbers = Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]],
                         Tuple[Tuple[int, ...], Tuple[int, ...]]]


def _normalise(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> DimensionNumbers:
  """Dimension numbers with non-negative axes, as hashable tuples."""
  (lc, rc), (lb, rb) = dimension_numbers
  norm = lambda axes, ndim: tuple(int(a) % ndim for a in axes)
  return ((norm(lc, lhs_ndim), norm(rc, rhs_ndim)), (norm(lb, lhs_ndim), norm(rb, rhs_ndim)))


def _free(ndim: int, contract: Sequence[int], batch: Sequence[int]) -> list[int]:
  return [a for a in range(ndim) if a not in contract and a not in batch]


def _dot(lhs: jax.Array, rhs: jax.Array, dims: DimensionNumbers) -> jax.Array:
  return lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dims,
                         preferred_element_type=jnp.float32)


def _lhs_cotangent(g: jax.Array, rhs: jax.Array, dims: DimensionNumbers,
                   lhs_ndim: int) -> jax.Array:
  """d(sum g * dot(lhs, rhs)) / d lhs, laid out like lhs (float32)."""
  (lc, rc), (lb, rb) = dims
  nb, lf = len(lb), _free(lhs_ndim, lc, lb)
  rf = _free(rhs.ndim, rc, rb)
  g_rhs_free = tuple(range(nb + len(lf), g.ndim))       # g = [batch, lhs free, rhs free]
  out = _dot(g, rhs, ((g_rhs_free, tuple(rf)), (tuple(range(nb)), rb)))
  # out = [batch, lhs free, rhs contracting axes in increasing order] -> lhs layout.
  axes = list(lb) + lf + [lc[rc.index(r)] for r in sorted(rc)]
  return jnp.transpose(out, np.argsort(axes))


def _rhs_cotangent(g: jax.Array, lhs: jax.Array, dims: DimensionNumbers,
                   rhs_ndim: int) -> jax.Array:
  """d(sum g * dot(lhs, rhs)) / d rhs, laid out like rhs (float32).

  XLA's CPU bfloat16 matmuls need the left operand's contracting axes minor, so lhs is
  transposed to [batch, contracting, free] (the barrier keeps XLA from folding the
  transpose back into the dot) and contracted over its free axes with g.
  """
  (lc, rc), (lb, rb) = dims
  nb, lf = len(lb), _free(lhs.ndim, lc, lb)
  rf = _free(rhs_ndim, rc, rb)
  lhs_t = lax.optimization_barrier(jnp.transpose(lhs, list(lb) + sorted(lc) + lf))
  nc = len(lc)
  out = _dot(lhs_t, g, ((tuple(range(nb + nc, lhs.ndim)), tuple(range(nb, nb + len(lf)))),
                        (tuple(range(nb)), tuple(range(nb)))))
  # out = [batch, lhs contracting axes in increasing order, rhs free] -> rhs layout.
  axes = list(rb) + [rc[lc.index(a)] for a in sorted(lc)] + rf
  return jnp.transpose(out, np.argsort(axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_dot(lhs: jax.Array, rhs: jax.Array, dims: DimensionNumbers) -> jax.Array:
  return _dot(lhs, rhs, dims)


def _bf16_dot_fwd(lhs, rhs, dims):
  lhs16, rhs16 = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
  # The zero-size arrays carry the operands' dtypes to the backward pass.
  res = (lhs16, rhs16, jnp.zeros((0,), lhs.dtype), jnp.zeros((0,), rhs.dtype))
  return _dot(lhs16, rhs16, dims), res


def _bf16_dot_bwd(dims, res, g):
  lhs16, rhs16, lhs_dtype, rhs_dtype = res
  g16 = g.astype(jnp.bfloat16)
  return (_lhs_cotangent(g16, rhs16, dims, lhs16.ndim).astype(lhs_dtype.dtype),
          _rhs_cotangent(g16, lhs16, dims, rhs16.ndim).astype(rhs_dtype.dtype))


_bf16_dot.defvjp(_bf16_dot_fwd, _bf16_dot_bwd)


def bf16_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs) -> jax.Array:
  """`lax.dot_general` on bfloat16-rounded operands, accumulated and returned in float32.

  A drop-in `dot_general` for `nn.Dense(dot_general=)` and `jnp.einsum(_dot_general=)`
  (`precision`, `preferred_element_type` and other options are ignored). The backward
  pass rounds the output cotangent to bfloat16 too and returns float32 cotangents (in
  the operands' dtypes), so both passes run on bfloat16 dot-product units.
  """
  del precision, preferred_element_type, kwargs
  return _bf16_dot(lhs, rhs, _normalise(dimension_numbers, lhs.ndim, rhs.ndim))


def same_precision(module: Any) -> Dict[str, Any]:
  """{'dtype', 'dot_general'} of `module`: keyword arguments that build a submodule
  (or `nn.Dense`) computing with the same precision."""
  return {"dtype": module.dtype, "dot_general": module.dot_general}


# config.model.dtype -> (activation dtype, matmul).
PRECISIONS: Dict[str, Tuple[Dtype, DotGeneral]] = {
    "float32": (jnp.float32, lax.dot_general),
    "bfloat16": (jnp.bfloat16, lax.dot_general),
    "bf16_matmul": (jnp.float32, bf16_dot_general),
}


def precision_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """{'dtype': activation dtype, 'dot_general': matmul} named by config.model.dtype."""
  dtype, dot_general = PRECISIONS[config.model.dtype]
  return {"dtype": dtype, "dot_general": dot_general}
