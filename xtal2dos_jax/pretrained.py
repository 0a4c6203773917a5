"""Exported models: a trained run reduced to what prediction needs, and the shipped ones.

`export_run` writes one model directory from a training workdir; `load_exported` reads it
back without touching the workdir or the training data. The package ships its models in
`xtal2dos_jax/pretrained/<name>/` (`models_dir`; `XTAL2DOS_PRETRAINED_DIR` points the
look-up elsewhere, e.g. at a test's temporary exports).

    <model>/config.json        the run's config (`workdir.load_config` reads it)
    <model>/label_scaler.json  the label scaling and its statistics
    <model>/setup.json         grid, training padding budget, l_y, ensemble size, storage
                               dtype, training elements, best epoch; for ensembles the
                               spread threshold and std scales (fitted on the validation
                               split) and the test coverage under them
    <model>/test_ids.json      ids of the run's test split (what the card's metrics cover)
    <model>/params.msgpack     the best checkpoint's evaluation parameters (the EMA ones
                               when the run kept an average), flax msgpack; no optimizer
                               state. An ensemble's leaves carry a leading member axis K.
    <model>/model_card.md      data, split sizes, recipe, test metrics, date, size

Members: K = config.train.ensemble_size (an absent key or 1 is a single model whose
parameters have no member axis); `ExportedModel.predict_members` vmaps the model over
the member axis when K > 1.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import serialization

from xtal2dos_jax import batching, labels, model_setup, models
from xtal2dos_jax import checkpoints as checkpoints_lib
from xtal2dos_jax import workdir as workdir_lib
from xtal2dos_jax.errors import InputError, check_choice

# The package directory of shipped models, one subdirectory each.
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
# Environment variable naming another directory to look models up in.
DIR_ENV = "XTAL2DOS_PRETRAINED_DIR"
# The model `Predictor.pretrained()` and the predict binary use when none is named.
DEFAULT = "phdos_dfpt"
PARAMS_FILE = "params.msgpack"
# Storage dtypes of the exported parameters (computation is always float32).
STORAGE_DTYPES = ("float32", "float16")
# Quantile of the validation crystals' ensemble spread that becomes the model's
# "high_spread" threshold (only for ensembles: a single model has no spread).
SPREAD_QUANTILE = 0.95
_FILES = ("config.json", "label_scaler.json", "setup.json", "test_ids.json", PARAMS_FILE)


def models_dir(directory: str | None = None) -> str:
  """Where models are looked up: `directory`, else $XTAL2DOS_PRETRAINED_DIR, else the
  package's `pretrained/`."""
  return directory or os.environ.get(DIR_ENV) or PACKAGE_DIR


def is_model_dir(path: str) -> bool:
  return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "setup.json",
                                                              PARAMS_FILE))


def available(directory: str | None = None) -> list[str]:
  """Names of the exported models in `models_dir(directory)`, sorted."""
  root = models_dir(directory)
  if not os.path.isdir(root):
    return []
  return sorted(n for n in os.listdir(root) if is_model_dir(os.path.join(root, n)))


def model_path(name: str | None = None, directory: str | None = None) -> str:
  """The directory of model `name` (default `DEFAULT`).

  Raises InputError naming the model and listing the available ones (or saying that
  none is shipped yet).
  """
  root = models_dir(directory)
  name = name or DEFAULT
  path = os.path.join(root, name)
  if is_model_dir(path):
    return path
  names = available(directory)
  if not names:
    raise InputError(name, f"no exported model in {root} yet; train a run and export it "
                     "with python -m experiments.export --workdir=... --name=..., or predict "
                     "with --workdir")
  raise InputError(name, f"no such model in {root}; available: {', '.join(names)}")


# ---------------------------------------------------------------- parameters on disk

def _to_storage(params: Any, dtype: str) -> Any:
  """Host numpy leaves; floating leaves cast to the storage dtype."""
  def cast(x):
    x = np.asarray(x)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x
  return jax.tree.map(cast, serialization.to_state_dict(params))


def save_params(path: str, params: Any, dtype: str = "float32") -> None:
  """Writes `params` (a pytree of arrays) as flax msgpack, floats stored as `dtype`."""
  check_choice(dtype, STORAGE_DTYPES, "--dtype", what="storage dtype")
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(_to_storage(params, dtype)))


def load_params(path: str) -> Any:
  """The parameters of `save_params`, floating leaves as float32 numpy arrays."""
  try:
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except (OSError, ValueError, TypeError) as e:
    raise InputError(path, f"unreadable model parameters ({e})") from None
  return jax.tree.map(lambda x: np.asarray(x, np.float32)
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x),
                      tree)


# ---------------------------------------------------------------- loading

@dataclasses.dataclass
class ExportedModel:
  """An exported model ready to predict.

  params: the evaluation parameters, float32 numpy leaves, with a leading member axis of
    size `num_members` when num_members > 1.
  training_elements: element symbols of the training crystals (None when not recorded).
  spread_threshold: relative ensemble spread above which a prediction is flagged
    "high_spread" (None: never flagged).
  std_scale: the factor each reported std is multiplied by (`predictor.fit_std_scales`
    on the validation split; empty: the raw spread).
  """
  path: str
  config: ml_collections.ConfigDict
  scaler: labels.LabelScaler
  grid: np.ndarray                 # float32[l_y]
  budget: batching.Budget          # the training run's padding budget
  params: Any
  num_members: int
  training_elements: list[str] | None
  spread_threshold: float | None
  setup: dict[str, Any]
  std_scale: dict[str, float] = dataclasses.field(default_factory=dict)
  _apply: Any = dataclasses.field(default=None, repr=False)

  def predict_members(self, part: batching.LabelledGraphs, budget: batching.Budget
                      ) -> np.ndarray:
    """Scaled predictions of every member, float32[K, n, l_y] in the order of part.graphs.

    One jitted eval-mode forward pass per padded batch of `budget` (one device; K > 1:
    vmapped over the members' parameters)."""
    if self._apply is None:
      model = models.create_model(self.config)

      def apply(params, batch):
        return model.apply({"params": params}, batch, train=False)
      self._apply = jax.jit(jax.vmap(apply, in_axes=(0, None)) if self.num_members > 1
                            else apply)
    batching.check_fits(part.graphs, budget)
    plan = batching.epoch_plan(part, budget, 1)
    out = np.zeros((self.num_members, len(part.graphs), self.config.data.l_y), np.float32)
    batches = batching.step_batches(part, budget, plan,
                                    edge_vectors=models.needs_edge_vectors(self.config))
    for step, batch in zip(plan, batches):
      pred = np.asarray(self._apply(self.params, jax.tree.map(lambda x: x[0], batch)))
      if self.num_members == 1:
        pred = pred[None]
      idx = step[0]
      out[:, idx] = pred[:, :len(idx)]
    return out


def load_exported(path: str) -> ExportedModel:
  """Reads an exported model directory (nothing else: no workdir, no dataset)."""
  if not is_model_dir(path):
    raise InputError(path, "is not an exported model (needs config.json, setup.json and "
                     f"{PARAMS_FILE}; see python -m experiments.export)")
  config = workdir_lib.load_config(path)
  scaler = workdir_lib.Workdir(path).load_scaler()
  if scaler is None:
    raise InputError(path, "has no label_scaler.json")
  try:
    with open(os.path.join(path, "setup.json")) as f:
      setup = json.load(f)
    grid = np.asarray(setup["grid"], np.float32)
    budget = batching.Budget(**{k: int(v) for k, v in setup["budget"].items()})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(os.path.join(path, "setup.json"), f"unreadable model set-up ({e})") from None
  params = load_params(os.path.join(path, PARAMS_FILE))
  k = model_setup.ensemble_size(config)
  if k > 1:
    leading = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(params)}
    if leading != {k}:
      raise InputError(path, f"config says {k} ensemble members but the parameters' leading "
                       f"axes are {sorted(map(str, leading))}")
  threshold = setup.get("spread_threshold")
  return ExportedModel(path, config, scaler, grid, budget, params, k,
                       setup.get("training_elements"),
                       None if threshold is None else float(threshold), setup,
                       {str(key): float(v) for key, v in (setup.get("std_scale") or {}).items()})


# ---------------------------------------------------------------- export

def _best_eval_params(workdir: str, config: ml_collections.ConfigDict,
                      budget: batching.Budget) -> tuple[Any, int]:
  """The best checkpoint's evaluation parameters (host arrays) and its epoch."""
  template = model_setup.abstract_train_state(config, budget)
  ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(workdir).checkpoint_dir)
  try:
    best = ckpt.restore_best(template)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, best.state.eval_params), int(ckpt.restored.epoch)


def training_elements(config: ml_collections.ConfigDict,
                      train_ids: Sequence[str]) -> list[str] | None:
  """Element symbols of the training split's crystals, read from the run's dataset;
  None (with a warning) when the dataset cannot be read any more."""
  from xtal2dos_jax import datasets
  try:
    raw = datasets.load_raw_dataset(config.data)
  except (InputError, OSError) as e:
    logging.warning("training elements not recorded: the dataset is unreadable (%s); "
                    "predictions of this model are never flagged unseen_elements", e)
    return None
  wanted = {str(i) for i in train_ids}
  symbols: set[str] = set()
  for rid, atoms in zip(raw.ids, raw.structures):
    if str(rid) in wanted:
      symbols.update(atoms.get_chemical_symbols())
  return sorted(symbols)


def relative_spread(members: np.ndarray) -> np.ndarray:
  """Ensemble spread of each crystal: Σ_l std_k / Σ_l |mean_k|, float64[n] from
  members float[K, n, l_y] (0 for K = 1). Scale-free, so the scaled and the physical
  DoS give the same value."""
  m = np.asarray(members, np.float64)
  den = np.abs(m.mean(0)).sum(-1)
  return np.where(den > 0, m.std(0).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def _physical_labels_and_members(model: ExportedModel, part: batching.LabelledGraphs,
                                 budget: batching.Budget
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
  """(true DoS float[n, l_y], members float[K, n, l_y], n_atoms int64[n], physical) of a
  labelled split as the exported (stored-precision) model predicts it, in physical units
  where the scaling has them (`inference.original_scale_for_prediction`; physical True),
  else scaled."""
  from xtal2dos_jax import inference
  members = model.predict_members(part, budget)
  n_atoms = part.graphs.n_node.astype(np.int64)
  to_physical = lambda y: inference.original_scale_for_prediction(  # noqa: E731
      model.config, model.scaler, y, n_atoms.astype(np.float64), model.grid)
  true = to_physical(part.y)
  if true is None:
    return part.y, members, n_atoms, False
  return true, np.stack([to_physical(m) for m in members]), n_atoms, True


def ensemble_spread(model: ExportedModel, validation: batching.LabelledGraphs,
                    test: batching.LabelledGraphs, budget: batching.Budget) -> dict[str, Any]:
  """What an ensemble's reported spread rests on. From the validation split:
  "spread_threshold" (the SPREAD_QUANTILE of the crystals' `relative_spread`) and
  "std_scale" (`predictor.fit_std_scales`); from the test split, "std_coverage"
  (`predictor.std_coverage` with those scales)."""
  from xtal2dos_jax import predictor  # predictor imports this module
  kind, grid = str(model.config.data.kind), np.asarray(model.grid)
  true, members, n_atoms, physical = _physical_labels_and_members(model, validation, budget)
  scales = predictor.fit_std_scales(kind, grid, true, members, n_atoms, physical)
  threshold = float(np.quantile(relative_spread(members), SPREAD_QUANTILE))
  true, members, n_atoms, physical = _physical_labels_and_members(model, test, budget)
  return {"spread_threshold": threshold, "std_scale": scales,
          "std_coverage": predictor.std_coverage(kind, grid, true, members, n_atoms, scales,
                                                 physical)}


def _fmt_metric(m: dict[str, Any], key: str) -> str:
  v = m.get(key)
  return "n/a" if v is None else f"{v:.4g}"


def model_card(name: str, config: ml_collections.ConfigDict, results: dict[str, Any] | None,
               split_sizes: dict[str, int], setup: dict[str, Any], size_mb: float) -> str:
  """model_card.md: what the model was trained on, how, and how well it does."""
  d, m, t = config.data, config.model, config.train
  lines = [f"# {name}", ""]
  if setup.get("description"):
    lines += [setup["description"], ""]
  lines += [f"Exported {setup['exported']} from a training run of xtal2dos_jax "
           f"({setup['num_members']} member{'s' if setup['num_members'] > 1 else ''}; "
           f"parameters stored as {setup['param_dtype']}, {size_mb:.2f} MB).", "",
           "## Data", "",
           f"- {d.kind} DoS, format `{d.format}`, source `{d.path or 'embedded'}`"
           + (f" (first {d.limit} crystals)" if d.limit else ""),
           f"- grid: {len(setup['grid'])} points, {setup['grid'][0]:g} .. {setup['grid'][-1]:g}"
           f" ({'cm^-1' if d.kind == 'phonon' else 'eV'}); label scaling `{d.scaling}`",
           "- splits: " + ", ".join(f"{k} {v}" for k, v in split_sizes.items()),
           "- training elements: " + (", ".join(setup["training_elements"])
                                      if setup.get("training_elements") else "not recorded"),
           "", "## Recipe", ""]
  recipe = {"encoder": m.encoder, "decoder": m.decoder, "d_model": m.d_model,
            "num_heads": m.num_heads, "encoder_layers": m.encoder_layers,
            "decoder_layers": m.decoder_layers, "loss": t.loss, "optimizer": t.optimizer,
            "learning_rate": t.learning_rate, "batch_size": t.batch_size,
            "num_epochs": t.num_epochs, "ema_decay": t.ema_decay, "seed": config.seed,
            "ensemble_size": setup["num_members"], "best_epoch": setup.get("best_epoch")}
  lines += [f"- {k}: {v}" for k, v in recipe.items() if v is not None]
  lines += ["", "## Test metrics", ""]
  test = (results or {}).get("metrics", {}).get("test")
  if test:
    lines += ["| scale | R^2 | MAE | MSE | WD | crystals |", "|---|---|---|---|---|---|"]
    for scale in ("normalized", "original"):
      s = test.get(scale, {})
      lines.append(f"| {scale} | " + " | ".join(_fmt_metric(s, k) for k in
                                                 ("r2", "mae", "mse", "wd"))
                   + f" | {s.get('count', 'n/a')} |")
  else:
    lines.append("No results.json in the workdir (the run did not finish): no test metrics.")
  cal = setup.get("calibration")
  if cal:
    lines += ["", "## Calibration (test split)", "",
              f"Ensemble spread (std over {cal['members']} members) against the true DoS: "
              f"{100 * cal['coverage_1sigma']:.1f} % of points within +-1 std, "
              f"{100 * cal['coverage_2sigma']:.1f} % within +-2 std (a calibrated Gaussian: "
              f"68.3 %, 95.4 %); rank correlation of each crystal's spread with its error "
              f"{cal['spread_error_correlation']:.2f}. Scale fitted on validation: "
              f"{cal['recalibration_factor']:.2f} (std x it gives "
              f"{100 * cal.get('coverage_1sigma_recalibrated', float('nan')):.1f} % / "
              f"{100 * cal.get('coverage_2sigma_recalibrated', float('nan')):.1f} %)."]
  if setup.get("std_scale"):
    coverage = setup.get("std_coverage", {})
    lines += ["", "## Reported spread", "",
              "Every std a prediction reports is the members' std times a factor fitted on "
              "the validation split (a curve's is that of its value at 300 K). The share of "
              "test values inside the reported +-1 / +-2 std (a calibrated Gaussian: 68.3 % / "
              "95.4 %), and the rank correlation of each crystal's spread with its error:",
              "", "| quantity | factor | within 1 std | within 2 std | spread-error rank "
              "correlation |", "|---|---:|---:|---:|---:|"]
    for key, v in sorted(setup["std_scale"].items()):
      c = coverage.get(key, {})
      cells = [f"{100 * c[f]:.1f} %" if f in c else "n/a"
               for f in ("coverage_1sigma", "coverage_2sigma")]
      rho = c.get("spread_error_correlation")
      cells.append("n/a" if rho is None else f"{rho:.2f}")
      lines.append(f"| {key} | {v:.2f} | " + " | ".join(cells) + " |")
  if setup.get("spread_threshold") is not None:
    lines += ["", f"Predictions whose relative ensemble spread exceeds "
              f"{setup['spread_threshold']:.4g} (the {100 * SPREAD_QUANTILE:.0f}th percentile "
              "on the validation split) are flagged high_spread."]
  return "\n".join(lines) + "\n"


def export_run(workdir: str, outdir: str, name: str | None = None,
               dtype: str = "float32", description: str = "") -> str:
  """Writes the exported model of `workdir` to `outdir` (which must not exist yet);
  `description` opens the model card.

  The files are written to a temporary sibling directory that is renamed into place at
  the end, so a failed export leaves no half model. Returns `outdir`.
  """
  from xtal2dos_jax import inference  # the workdir side: config, scaler, eval data
  check_choice(dtype, STORAGE_DTYPES, "--dtype", what="storage dtype")
  outdir = os.path.abspath(outdir)
  if os.path.exists(outdir):
    raise InputError(outdir, "already exists; exporting never overwrites a model (choose "
                     "another --name/--outdir or remove it)")
  name = name or os.path.basename(outdir)
  run = workdir_lib.Workdir(workdir)
  config = workdir_lib.load_config(workdir)
  data = inference.load_eval_data(workdir)
  splits = run.load_splits() or {}
  params, epoch = _best_eval_params(workdir, config, data.budget)
  k = model_setup.ensemble_size(config)
  results = None
  if os.path.exists(run.file("results.json")):
    with open(run.file("results.json")) as f:
      results = json.load(f)
  setup: dict[str, Any] = {
      "l_y": int(len(data.grid)), "grid": [float(g) for g in data.grid],
      "budget": data.budget._asdict(), "num_members": k, "param_dtype": dtype,
      "kind": str(config.data.kind), "scaling": str(config.data.scaling),
      "training_elements": training_elements(config, splits.get("train", [])),
      "spread_threshold": None, "best_epoch": epoch,
      "exported": datetime.date.today().isoformat(), "name": name,
      "description": str(description).strip(),
      "test_metrics": None if results is None else results["metrics"]["test"]}
  if os.path.exists(run.file("eval_test.json")):  # the ensemble's calibration, if evaluated
    with open(run.file("eval_test.json")) as f:
      setup["calibration"] = json.load(f)["test"].get("calibration")
  os.makedirs(os.path.dirname(outdir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(outdir)}-", dir=os.path.dirname(outdir))
  try:
    workdir_lib.write_json_atomic(os.path.join(tmp, "config.json"),
                                  workdir_lib.config_to_dict(config))
    workdir_lib.write_json_atomic(os.path.join(tmp, "label_scaler.json"), data.scaler.to_dict())
    workdir_lib.write_json_atomic(os.path.join(tmp, "test_ids.json"),
                                  [str(i) for i in splits.get("test", [])])
    save_params(os.path.join(tmp, PARAMS_FILE), params, dtype)
    if k > 1:
      workdir_lib.write_json_atomic(os.path.join(tmp, "setup.json"), setup)
      setup.update(ensemble_spread(load_exported(tmp), data.splits["validation"],
                                   data.splits["test"], data.budget))
    workdir_lib.write_json_atomic(os.path.join(tmp, "setup.json"), setup)
    size_mb = os.path.getsize(os.path.join(tmp, PARAMS_FILE)) / 2**20
    sizes = {s: len(splits[s]) for s in ("train", "validation", "test") if s in splits}
    workdir_lib.write_text_atomic(os.path.join(tmp, "model_card.md"),
                                  model_card(name, config, results, sizes, setup, size_mb))
    os.chmod(tmp, 0o777 & ~workdir_lib.current_umask())
    os.rename(tmp, outdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("exported %s (epoch %d, %d member(s), %s) -> %s", workdir, epoch, k, dtype,
               outdir)
  return outdir
