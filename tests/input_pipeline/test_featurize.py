"""Tests for xtal2dos_jax.input_pipeline.featurize: neighbour graphs vs two brute-force references.

`reference_neighbours` (here) checks the physics: every periodic neighbour within the
radius in a generous image box, compared up to ties. `brute_force_graph`
(xtal2dos_jax/workflows/benchmarks/neighbours.py, the all-image distance tensor) pins the exact graph:
the featuriser must reproduce it bit for bit (senders, receivers, distances,
displacement vectors, edge order, truncation inside groups of equal distances) on special cells and on the
shipped data sets.
"""
import json
import math
import os

import ase
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.geometry import cellpar_to_cell

from configs import phdos, phdos_chgnet, smoke
from xtal2dos_jax.core import paths
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import featurize, readers
from xtal2dos_jax.training.config_check import validate
from xtal2dos_jax.workflows.benchmarks.neighbours import brute_force_graph

MAX_NBR = 12
DIST_TOL = 1e-5


# ----------------------------------------------------------------------------- crystals


def _triclinic():
  """Skewed triclinic cell (60/70/110 degrees), 4 atoms, some positions outside the cell."""
  cell = cellpar_to_cell([4.1, 4.6, 5.3, 60.0, 70.0, 110.0])
  scaled = np.array([[0.0, 0.0, 0.0], [0.5, 0.1, 0.3], [0.2, 0.6, 0.7], [0.8, 0.4, 0.55]])
  # Unwrapped coordinates: featurisation must wrap them back into the cell.
  scaled += np.array([[0, 0, 0], [1, 0, -1], [-2, 1, 0], [0, 0, 3]])
  return ase.Atoms("CuOSiN", scaled_positions=scaled, cell=cell, pbc=True)


def _flat_cell():
  """Very oblique cell (one face height 0.5 Å): needs many images along one axis."""
  cell = np.array([[4.1, 0.0, 0.0], [3.9, 0.5, 0.0], [0.2, 0.3, 3.0]])
  return ase.Atoms("Al2", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.8]], cell=cell,
                   pbc=True)


def _small_cube():
  """2.5 Å simple cubic, one atom: all neighbours are its own images."""
  return ase.Atoms("Po", positions=[[0.3, 0.2, 0.1]], cell=np.eye(3) * 2.5, pbc=True)


def _cube_at_origin():
  """One atom exactly on a lattice point: its 6 nearest images tie to the last bit."""
  return ase.Atoms("Po", positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * 2.5, pbc=True)


def _vacuum():
  """Two atoms in a cell with a wide vacuum along z."""
  return ase.Atoms("CO", positions=[[0.0, 0.0, 1.0], [0.0, 0.0, 2.13]],
                   cell=[3.2, 3.2, 20.0], pbc=True)


CRYSTALS = {
    "NaCl": lambda: bulk("NaCl", "rocksalt", a=5.64),
    "NaCl_cubic": lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True),
    "Si": lambda: bulk("Si", "diamond", a=5.43),
    "Fe_bcc": lambda: bulk("Fe", "bcc", a=2.87),
    "Fe_bcc_cubic": lambda: bulk("Fe", "bcc", a=2.87, cubic=True),
    "triclinic": _triclinic,
    "flat": _flat_cell,
    "small_cube": _small_cube,
    "cube_at_origin": _cube_at_origin,
    "Cu_fcc": lambda: bulk("Cu", "fcc", a=3.61),
    "vacuum": _vacuum,
}


# ----------------------------------------------------------------------------- reference


def _face_heights(cell):
  volume = abs(np.linalg.det(cell))
  return np.array([volume / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3]))
                   for a in range(3)])


def reference_neighbours(atoms, radius, max_num_nbr):
  """Brute force: every (j, image) in a generous box, 0 < d <= radius, sorted by d.

  Returns per centre i a tuple (js, ds) of the first `max_num_nbr` neighbours and
  `next_d`, the distance of the first candidate left out (inf if none).
  """
  cell = np.asarray(atoms.cell.array, np.float64)
  pos = np.asarray(atoms.positions, np.float64)  # deliberately NOT wrapped
  frac = np.linalg.solve(cell.T, pos.T).T
  unwrap = int(np.ceil(np.abs(frac).max()))
  reach = max(6, int(np.ceil(radius / _face_heights(cell).min())) + 2 + unwrap)
  rng = np.arange(-reach, reach + 1)
  images = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
  shifts = images @ cell
  is_origin = np.all(images == 0, axis=1)
  n = len(atoms)
  out = []
  for i in range(n):
    d = np.linalg.norm(pos[:, None, :] + shifts[None, :, :] - pos[i], axis=-1)  # [n, m]
    j_of = np.broadcast_to(np.arange(n)[:, None], d.shape)
    self_mask = (j_of == i) & is_origin[None, :]
    keep = (~self_mask) & (d <= radius)
    dd, jj = d[keep], j_of[keep]
    # The test geometries must not put a neighbour on the cutoff sphere itself.
    assert not np.any(np.abs(d[~self_mask] - radius) < 1e-4), "ambiguous test geometry"
    assert np.all(dd > 1e-6)
    order = np.argsort(dd, kind="stable")
    dd, jj = dd[order], jj[order]
    next_d = dd[max_num_nbr] if len(dd) > max_num_nbr else np.inf
    out.append((jj[:max_num_nbr], dd[:max_num_nbr], next_d))
  return out


def _neighbours_of(graph, i):
  mask = graph.receivers == i
  return graph.senders[mask], graph.distances[mask]


def _assert_same_neighbours(graph, ref, label):
  for i, (ref_j, ref_d, next_d) in enumerate(ref):
    js, ds = _neighbours_of(graph, i)
    assert len(ds) == len(ref_d), f"{label} atom {i}: {len(ds)} edges, expected {len(ref_d)}"
    np.testing.assert_allclose(np.sort(ds), ref_d, atol=DIST_TOL, rtol=0,
                               err_msg=f"{label} atom {i}")
    # Neighbour identities: if the last kept and first dropped candidates tie, which
    # of the tied atoms is kept is arbitrary, so only compare the ones strictly inside.
    if len(ref_d) and next_d - ref_d[-1] < DIST_TOL:
      cut = ref_d[-1] - DIST_TOL
      ref_j, ref_d = ref_j[ref_d < cut], ref_d[ref_d < cut]
      js, ds = js[ds < cut], ds[ds < cut]
    for j in np.union1d(ref_j, js):
      np.testing.assert_allclose(np.sort(ds[js == j]), np.sort(ref_d[ref_j == j]), atol=DIST_TOL,
                                 rtol=0, err_msg=f"{label} atom {i}, neighbour {j}")


@pytest.fixture(scope="module")
def crystals():
  return {name: make() for name, make in CRYSTALS.items()}


# ----------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_matches_brute_force_radius_8(crystals, name):
  atoms = crystals[name]
  graph = featurize.featurize_crystal(atoms, radius=8.0, max_num_nbr=MAX_NBR, name=name)
  ref = reference_neighbours(atoms, 8.0, MAX_NBR)
  # With 8 Å every atom of these cells has at least 12 neighbours.
  assert all(len(r[1]) == MAX_NBR for r in ref)
  assert len(graph.distances) == MAX_NBR * len(atoms)
  _assert_same_neighbours(graph, ref, name)


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_matches_brute_force_small_radius(crystals, name):
  """3 Å: most atoms have fewer than 12 neighbours; no fake edges may appear."""
  atoms = crystals[name]
  ref = reference_neighbours(atoms, 3.0, MAX_NBR)
  counts = [len(r[1]) for r in ref]
  if min(counts) == 0:
    with pytest.raises(InputError):
      featurize.featurize_crystal(atoms, radius=3.0, max_num_nbr=MAX_NBR, name=name)
    return
  graph = featurize.featurize_crystal(atoms, radius=3.0, max_num_nbr=MAX_NBR, name=name)
  np.testing.assert_array_equal(np.bincount(graph.receivers, minlength=len(atoms)), counts)
  assert np.all(graph.distances > 0) and np.all(graph.distances <= 3.0 + 1e-6)
  _assert_same_neighbours(graph, ref, name)


@pytest.mark.parametrize("name", ["triclinic", "flat", "small_cube", "vacuum", "NaCl",
                                  "Fe_bcc_cubic"])
def test_all_neighbours_within_radius(crystals, name):
  """No max_num_nbr truncation: the image search must reach the whole cutoff sphere."""
  atoms = crystals[name]
  graph = featurize.featurize_crystal(atoms, radius=8.0, max_num_nbr=100_000, name=name)
  ref = reference_neighbours(atoms, 8.0, 100_000)
  assert min(len(r[1]) for r in ref) > 20
  _assert_same_neighbours(graph, ref, name)


def test_small_radius_really_has_fewer_than_12(crystals):
  """Guards the test above: the 3 Å case must exercise partial neighbour lists."""
  expected = {"NaCl": [6, 6], "Si": [4, 4], "vacuum": [1, 1], "small_cube": [6]}
  for name, counts in expected.items():
    graph = featurize.featurize_crystal(crystals[name], radius=3.0, max_num_nbr=MAX_NBR)
    np.testing.assert_array_equal(np.bincount(graph.receivers), counts, err_msg=name)


def test_max_num_nbr_truncates(crystals):
  atoms = crystals["small_cube"]
  for k in (1, 5, 6, 7, 30):
    graph = featurize.featurize_crystal(atoms, radius=8.0, max_num_nbr=k)
    ref = reference_neighbours(atoms, 8.0, k)
    assert len(graph.distances) == k
    _assert_same_neighbours(graph, ref, f"k={k}")


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_edge_order_and_dtypes(crystals, name):
  graph = featurize.featurize_crystal(crystals[name], radius=8.0, max_num_nbr=MAX_NBR)
  n = len(crystals[name])
  assert graph.atomic_numbers.dtype == np.int32
  assert graph.senders.dtype == np.int32 and graph.receivers.dtype == np.int32
  assert graph.distances.dtype == np.float32
  chex.assert_equal_shape([graph.senders, graph.receivers, graph.distances])
  np.testing.assert_array_equal(graph.atomic_numbers, crystals[name].numbers)
  assert np.all(np.diff(graph.receivers) >= 0), "receivers must be sorted"
  assert np.all((graph.senders >= 0) & (graph.senders < n))
  assert np.all((graph.receivers >= 0) & (graph.receivers < n))
  for i in range(n):
    _, ds = _neighbours_of(graph, i)
    assert np.all(np.diff(ds) >= 0), f"atom {i}: distances not non-decreasing"


def test_edge_direction_neighbour_to_centre():
  """receiver = centre i, sender = neighbour j, checked where the relation is asymmetric.

  Atoms on a line at x = 0, 2, 4.5 in a big box, one neighbour each:
  A <- B (2.0), B <- A (2.0 < 2.5), C <- B (2.5).
  """
  atoms = ase.Atoms("HHeLi", positions=[[0, 0, 0], [2.0, 0, 0], [4.5, 0, 0]],
                    cell=np.eye(3) * 30.0, pbc=True)
  graph = featurize.featurize_crystal(atoms, radius=2.6, max_num_nbr=1)
  np.testing.assert_array_equal(graph.receivers, [0, 1, 2])
  np.testing.assert_array_equal(graph.senders, [1, 0, 1])
  np.testing.assert_allclose(graph.distances, [2.0, 2.0, 2.5], atol=1e-6)


def test_translation_and_wrapping_invariance(crystals):
  """Shifting all atoms (and unwrapping them by lattice vectors) leaves the graph alone."""
  atoms = crystals["triclinic"]
  moved = atoms.copy()
  moved.positions += np.array([0.37, -1.1, 2.3]) + 2 * atoms.cell[0] - atoms.cell[2]
  g0 = featurize.featurize_crystal(atoms)
  g1 = featurize.featurize_crystal(moved)
  np.testing.assert_array_equal(g0.receivers, g1.receivers)
  np.testing.assert_allclose(g0.distances, g1.distances, atol=1e-5)
  # Vectors per atom as a set (rounding decides the order among equal distances), on the
  # radius graph, where no cut through equal distances picks among them.
  r0, r1 = featurize.featurize_crystal(atoms, 6.0, 0), featurize.featurize_crystal(moved, 6.0, 0)
  np.testing.assert_array_equal(r0.receivers, r1.receivers)
  for i in range(len(atoms)):
    v0, v1 = (np.round(g.vectors[g.receivers == i], 4) + 0.0 for g in (r0, r1))
    np.testing.assert_allclose(v0[np.lexsort(v0.T)], v1[np.lexsort(v1.T)], atol=1e-3)


@pytest.mark.parametrize("max_num_nbr", [12, 0])
def test_displacement_vectors_reproduce_the_distances(crystals, max_num_nbr):
  """|vector| = distance, and vector = r_j + lattice shift - r_i with an integer shift."""
  for name, atoms in crystals.items():
    graph = featurize.featurize_crystal(atoms, 6.0, max_num_nbr)
    chex.assert_shape(graph.vectors, (len(graph.distances), 3))
    assert graph.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(graph.vectors.astype(np.float64), axis=1),
                               graph.distances, rtol=1e-6, atol=1e-6, err_msg=name)
    pos = atoms.positions
    shift = graph.vectors - (pos[graph.senders] - pos[graph.receivers])
    frac = np.linalg.solve(atoms.cell.array.T, shift.T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-4, err_msg=name)


def test_radius_graph_keeps_every_neighbour_within_the_radius(crystals):
  """max_num_nbr=0: the graph of an unbounded k (brute force with k above any count)."""
  for name, atoms in crystals.items():
    graph = featurize.featurize_crystal(atoms, 4.0, 0, name=name)
    _assert_graphs_identical(graph, brute_force_graph(atoms, 4.0, 100_000), name)
  config = smoke.get_config()
  config.data.max_num_nbr = -1
  with pytest.raises(InputError, match="config.data.max_num_nbr: -1 must be >= 0"):
    validate(config)


# ----------------------------------------------------------------------------- exact graphs

# Crystals of each shipped set compared in the default run; XTAL2DOS_FULL_NEIGHBOUR_CHECK=1
# compares all of them (2,545 crystals).
SHIPPED_SAMPLE = 100
SHIPPED_SETS = {"phdos_dfpt": phdos, "phdos": phdos_chgnet}


def _assert_graphs_identical(graph, ref, label):
  for field in featurize.CrystalGraph._fields:
    got, want = getattr(graph, field), getattr(ref, field)
    assert got.dtype == want.dtype, f"{label}: {field} dtype {got.dtype} != {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=f"{label}: {field}")


@pytest.mark.parametrize("radius,max_num_nbr", [(8.0, 12), (3.0, 12), (8.0, 1), (8.0, 5),
                                                (8.0, 7), (8.0, 100_000), (5.0, 0)])
@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_identical_to_brute_force_graph(crystals, name, radius, max_num_nbr):
  """Tiny cells needing many images, 1-atom cells, atoms with fewer than `max_num_nbr`
  neighbours (3 Å), truncation inside groups of equal distances (k = 1, 5, 7), and the
  radius graph (k = 0: every neighbour within 5 Å, as the E3NN configs use)."""
  atoms = crystals[name]
  ref = brute_force_graph(atoms, radius, max_num_nbr)
  if np.bincount(ref.receivers, minlength=len(atoms)).min() == 0:
    with pytest.raises(InputError, match="has no neighbour"):
      featurize.featurize_crystal(atoms, radius, max_num_nbr, name=name)
    return
  graph = featurize.featurize_crystal(atoms, radius, max_num_nbr, name=name)
  _assert_graphs_identical(graph, ref, f"{name} r={radius} k={max_num_nbr}")


def test_ties_are_broken_by_neighbour_index(crystals):
  """Guards the test above: truncation cuts through a group of equal distances.

  In cubic NaCl, Na (atom 0) has six Cl at exactly the same float64 distance, spread
  over several Cl indices; k = 3 keeps the first three in ascending neighbour index.
  """
  nacl = crystals["NaCl_cubic"]
  cands = brute_force_graph(nacl, 3.0, 100)
  js = cands.senders[cands.receivers == 0]
  assert len(js) == 6 and len(np.unique(cands.distances[cands.receivers == 0])) == 1
  assert len(np.unique(js[:3])) > 1 and not np.array_equal(js[:3], js[3:])
  np.testing.assert_array_equal(js, np.sort(js))
  top3 = featurize.featurize_crystal(nacl, 8.0, 3)
  np.testing.assert_array_equal(top3.senders[top3.receivers == 0], js[:3])


@pytest.mark.parametrize("radius,expected", [(2.5, 6), (5.0, 6 + 12 + 8 + 6)])
def test_neighbours_exactly_on_the_cutoff_are_kept(crystals, radius, expected):
  """0 < d <= radius: images at exactly 2.5 Å (and 5 Å, the second axis shell) count."""
  atoms = crystals["cube_at_origin"]
  graph = featurize.featurize_crystal(atoms, radius, 100)
  assert len(graph.distances) == expected and graph.distances.max() == np.float32(radius)
  _assert_graphs_identical(graph, brute_force_graph(atoms, radius, 100), f"r={radius}")


@pytest.fixture(scope="module", params=sorted(SHIPPED_SETS))
def shipped_sample(request):
  """(set name, ids, structures): a fixed random sample of one shipped set, or all of it."""
  raw = readers.load_raw_dataset(SHIPPED_SETS[request.param].get_config().data)
  picked = np.arange(len(raw.ids))
  if os.environ.get("XTAL2DOS_FULL_NEIGHBOUR_CHECK") != "1":
    picked = np.sort(np.random.default_rng(0).choice(picked, SHIPPED_SAMPLE, replace=False))
  return request.param, [raw.ids[i] for i in picked], [raw.structures[i] for i in picked]


@pytest.mark.parametrize("radius,max_num_nbr", [(8.0, 12), (3.0, 12)])
def test_identical_to_brute_force_graph_on_shipped_sets(shipped_sample, radius, max_num_nbr):
  """The default graph (8 Å, 12 neighbours) and a 3 Å one, where many atoms have fewer
  than 12 neighbours and some none (those crystals must be rejected)."""
  set_name, ids, structures = shipped_sample
  rejected = 0
  for rid, atoms in zip(ids, structures):
    ref = brute_force_graph(atoms, radius, max_num_nbr)
    if np.bincount(ref.receivers, minlength=len(atoms)).min() == 0:
      with pytest.raises(InputError, match="has no neighbour"):
        featurize.featurize_crystal(atoms, radius, max_num_nbr, name=rid)
      rejected += 1
      continue
    graph = featurize.featurize_crystal(atoms, radius, max_num_nbr, name=rid)
    _assert_graphs_identical(graph, ref, f"{set_name} {rid} r={radius}")
  assert (rejected > 0) == (radius < 4.0), rejected


# ----------------------------------------------------------------------------- input errors


def test_isolated_atom_raises_naming_crystal_and_atom():
  atoms = ase.Atoms("NaClAr", positions=[[0, 0, 0], [2.8, 0, 0], [10, 10, 10]],
                    cell=np.eye(3) * 20.0, pbc=True)
  with pytest.raises(InputError) as info:
    featurize.featurize_crystal(atoms, radius=3.0, name="mp-isolated")
  msg = str(info.value)
  assert info.value.name == "mp-isolated"
  assert "mp-isolated" in msg and "atom 2" in msg and "Ar" in msg
  assert "\n" not in msg


@pytest.mark.parametrize("z", [0, 101, 118])
def test_unsupported_atomic_number_raises(z):
  atoms = ase.Atoms(numbers=[11, z], positions=[[0, 0, 0], [1.5, 0, 0]],
                    cell=np.eye(3) * 3.0, pbc=True)
  with pytest.raises(InputError) as info:
    featurize.featurize_crystal(atoms, name="bad-z")
  assert info.value.name == "bad-z" and str(z) in str(info.value)


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), [[3, 0, 0], [0, 3, 0], [3, 3, 0]]],
                         ids=["no_cell", "coplanar"])
def test_zero_volume_cell_raises(cell):
  atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=cell, pbc=True)
  with pytest.raises(InputError) as info:
    featurize.featurize_crystal(atoms, name="flat-cell")
  assert info.value.name == "flat-cell" and "volume" in str(info.value)


def test_non_periodic_raises():
  atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=np.eye(3) * 5.0,
                    pbc=[True, True, False])
  with pytest.raises(InputError, match="not periodic"):
    featurize.featurize_crystal(atoms, name="slab")


@pytest.mark.parametrize("atoms,message", [
    (ase.Atoms("NaClAr", positions=[[0, 0, 0], [3.0, 0, 0], [3.05, 0, 0]],
               cell=np.eye(3) * 6.0, pbc=True), r"atoms 1 \(Cl\) and 2 \(Ar\) overlap"),
    (ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0]], cell=np.eye(3) * 3.0, pbc=True),
     r"atoms 0 \(Cu\) and 1 \(Cu\) overlap"),
    # Across the cell boundary: 0.02 Å apart through the periodic image only.
    (ase.Atoms("Cu2", positions=[[0.01, 0, 0], [3.99, 0, 0]], cell=np.eye(3) * 4.0, pbc=True),
     "overlap"),
    (ase.Atoms("Cu", positions=[[0, 0, 0]], cell=[[0.05, 0, 0], [0, 3, 0], [0, 0, 3]],
               pbc=True), "own periodic image"),
], ids=["pair", "same_place", "through_image", "own_image"])
def test_overlapping_atoms_raise(atoms, message):
  with pytest.raises(InputError, match=message) as info:
    featurize.featurize_crystal(atoms, radius=2.0, name="crowded")
  assert info.value.name == "crowded"


def test_close_but_not_overlapping_is_accepted():
  atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0.11, 0, 0]], cell=np.eye(3) * 3.0, pbc=True)
  graph = featurize.featurize_crystal(atoms, radius=3.0, max_num_nbr=1)
  np.testing.assert_allclose(graph.distances, [0.11, 0.11], atol=1e-6)


def test_empty_structure_raises():
  with pytest.raises(InputError):
    featurize.featurize_crystal(ase.Atoms(cell=np.eye(3) * 3.0, pbc=True), name="empty")


# ----------------------------------------------------------------------------- gaussian


def test_gaussian_centres():
  mu = featurize.gaussian_centres(8.0, 0.2)
  chex.assert_shape(mu, (41,))
  np.testing.assert_allclose(mu, np.arange(41) * 0.2, atol=1e-6)
  chex.assert_shape(featurize.gaussian_centres(4.0, 0.5), (9,))


def test_gaussian_expansion_formula_and_jit():
  d = np.array([0.0, 0.1, 1.0, 2.345, 4.0, 7.99, 8.0], np.float32)
  out = featurize.gaussian_expansion(jnp.asarray(d), 8.0, 0.2)
  chex.assert_shape(out, (len(d), 41))
  mu = np.arange(41) * 0.2
  expected = np.exp(-((d[:, None].astype(np.float64) - mu) ** 2) / 0.2**2)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  # A distance exactly on a centre gives 1 there.
  np.testing.assert_allclose(np.asarray(out)[2, 5], 1.0, atol=1e-6)
  jitted = jax.jit(featurize.gaussian_expansion, static_argnums=(1, 2))(jnp.asarray(d), 8.0, 0.2)
  chex.assert_trees_all_close(jitted, out, atol=1e-6)
  # Works on batched (e.g. device-stacked) distances too.
  chex.assert_shape(featurize.gaussian_expansion(jnp.zeros((3, 5)), 8.0, 0.2), (3, 5, 41))


# ----------------------------------------------------------------------------- composition


def test_composition_fractions_exact_and_padding():
  # Graphs: NaCl, Fe2O, padding graph holding two Z=0 nodes, an empty graph.
  z = jnp.array([11, 17, 26, 26, 8, 0, 0], jnp.int32)
  n_node = jnp.array([2, 3, 2, 0], jnp.int32)
  for fn in (featurize.composition_fractions, jax.jit(featurize.composition_fractions)):
    comp = np.asarray(fn(z, n_node))
    chex.assert_shape(comp, (4, featurize.NUM_COMPOSITION_ELEMENTS))
    expected = np.zeros((4, 103), np.float32)
    expected[0, 10] = expected[0, 16] = 0.5
    expected[1, 25], expected[1, 7] = 2 / 3, 1 / 3
    np.testing.assert_allclose(comp, expected, atol=1e-6)
    np.testing.assert_allclose(comp[:2].sum(-1), 1.0, atol=1e-6)


def test_composition_fractions_featurised_nacl(crystals):
  g = featurize.featurize_crystal(crystals["NaCl_cubic"])
  comp = np.asarray(featurize.composition_fractions(jnp.asarray(g.atomic_numbers),
                                                    jnp.array([len(g.atomic_numbers)])))
  assert comp[0, 10] == pytest.approx(0.5) and comp[0, 16] == pytest.approx(0.5)
  assert comp.sum() == pytest.approx(1.0)


def test_composition_heaviest_elements():
  z = jnp.array([100, 1, 0], jnp.int32)
  comp = np.asarray(featurize.composition_fractions(z, jnp.array([2, 1])))
  assert comp[0, 99] == pytest.approx(0.5) and comp[0, 0] == pytest.approx(0.5)
  np.testing.assert_array_equal(comp[1], 0.0)


# ----------------------------------------------------------------------------- atom table


def test_atom_feature_table():
  table = featurize.atom_feature_table()
  chex.assert_shape(table, (101, 92))
  assert table.dtype == np.float32
  np.testing.assert_array_equal(table[0], 0.0)
  path = os.path.join(paths.DATA_DIR, "atom_init.json")
  with open(path) as f:
    raw = json.load(f)
  np.testing.assert_array_equal(table[8], np.asarray(raw["8"], np.float32))
  for z in range(1, 101):
    np.testing.assert_array_equal(table[z], np.asarray(raw[str(z)], np.float32))
  assert np.all(np.abs(table[1:]).sum(-1) > 0), "every element 1..100 has a feature vector"


def test_mass_columns_of_the_atom_table():
  """cgcnn_mass = the CGCNN vectors and [ln m / ln 260, 1 / sqrt m] (m in u), against
  hand-entered standard masses of H, O, Fe and U; padding stays zero."""
  base = featurize.atom_feature_table("cgcnn")
  table = featurize.atom_feature_table("cgcnn_mass")
  chex.assert_shape(table, (101, 94))
  assert table.dtype == np.float32
  np.testing.assert_array_equal(table[:, :92], base)
  np.testing.assert_array_equal(table[0], 0.0)
  masses = {1: 1.008, 8: 15.999, 26: 55.845, 92: 238.029}
  for z, m in masses.items():
    chex.assert_trees_all_close(table[z, 92:], np.array([math.log(m) / math.log(260.0),
                                                         m ** -0.5], np.float32), rtol=1e-4)
  assert np.all((table[1:, 92:] > 0) & (table[1:, 92:] <= 1))


def test_unknown_atom_features_is_one_line_error():
  config = smoke.get_config()
  config.model.atom_features = "mass"
  with pytest.raises(InputError, match=r"config.model.atom_features.*cgcnn_mass"):
    validate(config)
