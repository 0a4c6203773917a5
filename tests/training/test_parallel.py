"""Data parallelism: one device vs four devices give the same training trajectory."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh process so XLA_FLAGS can create 4 CPU devices before jax starts.
_SCRIPT = r"""
import json, sys
import numpy as np
import jax
from ase.build import bulk
from configs import smoke
from xtal2dos_jax.input_pipeline import batching, graph_cache, labels
from xtal2dos_jax.training import model_setup, train

assert jax.local_device_count() == 4, jax.devices()
config = smoke.get_config()
config.model.encoder_dropout = 0.0   # dropout streams differ per device by design
config.model.decoder_dropout = 0.0
config.train.warmup_epochs = 0
# SGD, not Adam: Adam divides by |g|, which turns float summation-order noise in
# near-zero gradients into full-size steps and hides a wrong gradient scale.
config.train.optimizer = "sgd"
config.train.learning_rate = 0.05
crystals = [bulk("NaCl", "rocksalt", a=5.6), bulk("Si"), bulk("Cu"), bulk("MgO", "rocksalt", a=4.2),
            bulk("Fe"), bulk("GaAs", "zincblende", a=5.65), bulk("Al"), bulk("LiF", "rocksalt", a=4.0)]
crystals[1] = crystals[1].repeat((2, 1, 1))
ids = [str(i) for i in range(len(crystals))]
graphs, skipped = graph_cache.featurize_structures(ids, crystals, 8.0, 12)
assert not skipped
rng = np.random.default_rng(0)
y = rng.random((len(ids), 51)).astype(np.float32)
scaler = labels.LabelScaler.fit("normalized_sum", y)
ys, scale = scaler.transform(y)
data = batching.LabelledGraphs(graphs, np.asarray(ys, np.float32), np.asarray(scale, np.float32))
order = [np.arange(8), np.array([3, 1, 7, 0, 5, 2, 6, 4]), np.arange(8)[::-1]]

# The initial state depends on the config alone (not on the padding budget): one for both.
initial = model_setup.create_train_state(
    config, batching.make_budget(graphs.n_node, graphs.n_edge, 8), steps_per_epoch=3)

def run(num_devices):
  devices = jax.local_devices()[:num_devices]
  per_device = 8 // num_devices
  budget = batching.make_budget(graphs.n_node, graphs.n_edge, per_device)
  trainer = train.Trainer(config, scaler, devices=devices)
  state = trainer.replicate(initial)
  losses = []
  for step in order:
    groups = np.split(step, num_devices)
    batch = batching.stack([batching.assemble(data, g, budget) for g in groups])
    state, out = trainer.p_train_step(state, batch)
    losses.append(float(out["loss_sum"][0] / out["count"][0]))
  params = jax.tree.map(lambda x: np.asarray(x[0]).tolist(), state.params)
  # Evaluation and prediction over the whole set through the Trainer's own plan.
  metrics = trainer.evaluate(state.params, data, budget, bin_width=20.0)
  pred = trainer.predict(state.params, data, budget)
  return losses, params, metrics["normalized"], pred.tolist()

l1, p1, m1, y1 = run(1)
l4, p4, m4, y4 = run(4)
json.dump({"l1": l1, "l4": l4, "p1": p1, "p4": p4, "m1": m1, "m4": m4, "y1": y1, "y4": y4},
          sys.stdout)
"""


@pytest.mark.slow
def test_one_device_equals_four_devices():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {os.environ['XLA_FLAGS']}")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(out["l1"], out["l4"], rtol=1e-5)
  flat1 = np.concatenate([np.ravel(x) for x in _leaves(out["p1"])])
  flat4 = np.concatenate([np.ravel(x) for x in _leaves(out["p4"])])
  assert flat1.shape == flat4.shape and flat1.size > 1000
  np.testing.assert_allclose(flat1, flat4, rtol=1e-4, atol=1e-6)
  # The steps did train: the loss moved.
  assert abs(out["l1"][-1] - out["l1"][0]) > 1e-4
  # Evaluation and prediction cover every crystal once, whatever the device count.
  y1, y4 = np.asarray(out["y1"]), np.asarray(out["y4"])
  assert y1.shape == (8, 51) and (np.abs(y1).sum(axis=1) > 0).all()
  np.testing.assert_allclose(y1, y4, rtol=1e-4, atol=1e-7)
  for key in ("r2", "mae", "mse", "wd"):
    np.testing.assert_allclose(out["m1"][key], out["m4"][key], rtol=1e-4, err_msg=key)


def _leaves(tree):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield np.asarray(tree, np.float64)
