"""What each binary of `experiments/` does once its flags are parsed: one function each.

The binaries define their flags, call `allocator.keep_freed_memory` where they train, and
hand the flag values to the function here, which sets up the runtime (`cli.setup_runtime`),
runs the library, prints its summary and turns a user error into one line with exit
status 2 (`cli.user_errors`), a preemption into exit status 143 after the checkpoint.

Nothing here imports numpy or JAX at import time (the binaries import this module before
`keep_freed_memory`); each function imports what it runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterator, Sequence

from absl import logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.workflows import cli

# Exit status after SIGTERM: the run saved a checkpoint and rerunning resumes it.
PREEMPTED_EXIT = 143


@contextlib.contextmanager
def _preemption_exits() -> Iterator[None]:
  """A `Preempted` run (checkpoint saved) ends with one warning and PREEMPTED_EXIT."""
  from xtal2dos_jax.training import preemption
  try:
    yield
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(PREEMPTED_EXIT)


def train(config, workdir: str, overwrite: bool = False) -> None:
  """Trains `config` in `workdir` (resuming; a finished run prints its results), in one
  process or as one of a multi-host run's processes."""
  cli.setup_runtime()
  from xtal2dos_jax.objectives import metrics
  from xtal2dos_jax.training import distributed
  from xtal2dos_jax.training import train as train_lib
  with cli.user_errors(), distributed.lost_processes(workdir), _preemption_exits():
    results = train_lib.train_and_evaluate(config, workdir, overwrite=overwrite)
  print(metrics.format_table(results["metrics"]))
  print(f"workdir: {workdir}")


def evaluate(workdir: str, split: str) -> None:
  """Evaluates the best checkpoint of `workdir` on `split` and prints the tables."""
  cli.setup_runtime(inference=True)
  from xtal2dos_jax.evaluation import evaluate as evaluate_lib
  from xtal2dos_jax.objectives import metrics
  from xtal2dos_jax.physics import dos_properties
  with cli.user_errors():
    out = evaluate_lib.evaluate_run(workdir, split)
  print(metrics.format_table({split: out[split]}))
  physics_lines = dos_properties.physics_table(out[split].get("physics"))
  if physics_lines:
    print(physics_lines)
  print(f"checkpoint: {cli.checkpoint_used(out)}")
  print(f"wrote {workdir}/eval_{split}.json, predictions_{split}.npz, eval_{split}.png")


def predict(structures: str, workdir: str | None, model: str | None, models_dir: str | None,
            outdir: str | None, temperatures: str, max_plots: int) -> None:
  """Predicts the structure files matching `structures` with a training workdir or an
  exported model (default: the package's default model) and writes the outputs."""
  with cli.user_errors():
    if workdir and model:
      raise InputError("--model", "give --model or --workdir, not both")
  cli.setup_runtime(inference=True)
  from xtal2dos_jax.inference import predictor as predictor_lib
  with cli.user_errors():
    t = predictor_lib.parse_temperatures(temperatures)
    p = (predictor_lib.Predictor(workdir) if workdir
         else predictor_lib.Predictor.pretrained(model, models_dir))
    out = predictor_lib.predict_to_dir(p, structures, outdir, t, max_plots)
  print(f"predicted {len(out['ids'])} structures with {p.source} -> {out['outdir']}"
        + (f" ({len(out['skipped'])} skipped, see skipped.json)" if out["skipped"] else ""))


def export(workdir: str, name: str | None, outdir: str | None, dtype: str,
           description: str) -> None:
  """Exports the best checkpoint of `workdir` as model `name` (into the package's
  pretrained/ unless `outdir` is given)."""
  with cli.user_errors():
    if not name and not outdir:
      raise InputError("--name", "is required (or give --outdir)")
  cli.setup_runtime(inference=True)
  from xtal2dos_jax.inference import export as export_lib
  from xtal2dos_jax.inference import pretrained
  with cli.user_errors():
    outdir = outdir or os.path.join(pretrained.PACKAGE_DIR, name)
    export_lib.export_run(workdir, outdir, name, dtype, description=description)
  print(f"exported {workdir} -> {outdir}")


def _check_before_training(configs: Sequence[Any]) -> None:
  """Every config's values, before the first run trains."""
  from xtal2dos_jax.training import config_check
  from xtal2dos_jax.training import train as train_lib
  for config in configs:
    config_check.validate(config)
    train_lib.check_init_from(config)


def compare(paths: Sequence[str], workdir: str, overrides: Sequence[str],
            seeds: Sequence[int], folds: int, ensemble: bool, inference_repeats: int,
            overwrite: bool) -> None:
  """Trains every config file of `paths` (with `overrides`) per seed and fold, times its
  inference, and prints and writes the comparison table."""
  with cli.user_errors():
    configs = [cli.load_config_file(p, overrides) for p in paths]
  cli.setup_runtime()
  from xtal2dos_jax.core.atomic_io import write_json_atomic
  from xtal2dos_jax.workflows import compare_tables, comparison
  runs = {}
  with cli.user_errors():
    _check_before_training(configs)
    for name, path, config in zip(comparison.run_names(paths), paths, configs):
      with _preemption_exits():
        dirs = comparison.train_variant(name, path, config, workdir, seeds, folds,
                                        overwrite=overwrite)
      speed = comparison.time_inference(dirs[0], inference_repeats)  # the same for any seed
      write_json_atomic(os.path.join(dirs[0], compare_tables.INFERENCE_JSON), speed)
      runs[name] = dirs
    table = compare_tables.build_table(
        runs, published=compare_tables.published_rows(configs[0]),
        ensemble_members=len(seeds) if ensemble else 0)
  json_path, md_path = compare_tables.write_table(table, workdir)
  print(compare_tables.to_markdown(table))
  print(f"wrote {json_path} and {md_path}")


def sweep(path: str, grid_text: str, workdir: str, overrides: Sequence[str],
          seeds: Sequence[int], overwrite: bool) -> None:
  """Trains every cell of the grid `grid_text` over the config file `path` (with
  `overrides`) per seed, and prints and writes the sweep table (test metrics only for
  the cell chosen on validation)."""
  from xtal2dos_jax.workflows import compare_tables, comparison, sweeps
  with cli.user_errors():
    grid = sweeps.parse_grid(grid_text)
    cells = sweeps.grid_cells(grid)
    configs = [sweeps.load_cell_config(path, overrides, cell) for cell in cells]
    names = sweeps.cell_names(cells)
  cli.setup_runtime()
  finished = []
  with cli.user_errors():
    _check_before_training(configs)
    for cell, name, config in zip(cells, names, configs):
      label = ", ".join(f"{key}={value}" for key, value in cell.items())
      with _preemption_exits():
        dirs = comparison.train_variant(name, label, config, workdir, seeds,
                                        overwrite=overwrite)
      finished.append((cell, dirs))
    table = sweeps.build_sweep_table(grid, finished)
  markdown = sweeps.sweep_to_markdown(table)
  json_path, md_path = compare_tables.write_table(table, workdir, sweeps.SWEEP_JSON,
                                                  sweeps.SWEEP_MARKDOWN, markdown)
  print(markdown)
  print(f"wrote {json_path} and {md_path}")


def benchmark(config, quick: bool, output: str | None, inference_only: bool,
              xla_cache_dir: str | None, argv: Sequence[str]) -> None:
  """Measures and prints the speed table (`benchmarks.harness`); `argv` (the binary's
  arguments) starts the evaluation/prediction rows' child process. Compile rows use a
  fresh XLA cache (`xla_cache_dir`, default a temporary directory removed afterwards)."""
  cli.setup_runtime(inference=inference_only)
  from xtal2dos_jax.training import runtime
  from xtal2dos_jax.workflows.benchmarks import harness, tools
  xla_cache = xla_cache_dir or tempfile.mkdtemp(prefix="xtal2dos_bench_xla_")
  runtime.enable_compilation_cache(xla_cache)
  config = harness.quick_config(config) if quick else config
  info = harness.context()
  log = lambda msg: logging.info("benchmark: %s", msg)  # noqa: E731
  try:
    with cli.user_errors():
      if inference_only:
        rows = harness.inference_rows(config, log)
      else:
        rows = harness.run_benchmark(
            config, log, lambda c: harness.inference_in_child(c, xla_cache, argv))
  finally:
    if not xla_cache_dir:
      shutil.rmtree(xla_cache, ignore_errors=True)
  info["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  print(f"# xtal2dos_jax benchmark {info['date']}; jax {info['jax']} ({info['backend']}, "
        f"{info['devices']} device(s), {info['cpus']} CPUs, load avg {info['load_average']:.1f}"
        f" -> {info['load_average_end']:.1f}); {info['command']}")
  print(tools.format_rows(rows))
  if output:
    with open(output, "w") as f:
      json.dump({"context": info, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
