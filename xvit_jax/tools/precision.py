"""Does bfloat16 train as well as float32? The same experiment in both precisions, side by side.

    python -m xvit_jax.tools.precision --config=configs/demo.py --workdir=/tmp/precision [--config.FIELD=VALUE ...]

trains the config twice from the same seed, on the same batches, for the same steps: with
`config.dtype=float32` in WORKDIR/float32 and with `config.dtype=bfloat16` in WORKDIR/bfloat16 (ordinary
workdirs: the same command resumes an interrupted comparison). It then prints one table and writes
WORKDIR/precision.json and WORKDIR/precision.png (training loss and evaluation top-1 against steps).

"Final training loss" is the mean of the last `--last` logged training losses (one step's loss is one
batch's, noisy); "final top-1" is the evaluation at the last step. bfloat16 passes when its final loss is
within `--loss_tolerance` (relative) of float32's and its top-1 within `--top1_tolerance` (absolute);
the exit status is 0 either way: the table says which.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from xvit_jax.errors import UserError
from xvit_jax.metric_writer import read_records
from xvit_jax.tools import cli

DTYPES = ("float32", "bfloat16")


def compare(config, workdir, *, last=5, loss_tolerance=0.1, top1_tolerance=0.02):
  """Trains `config` in each of DTYPES under workdir/DTYPE (resuming what is there); the comparison."""
  from xvit_jax import train  # pylint: disable=import-outside-toplevel  # JAX starts here, after the flags
  if not config.eval_every or config.total_steps % config.eval_every:
    raise UserError(f"config.eval_every={config.eval_every} is not allowed here: a divisor of config.total_steps="
                    f"{config.total_steps}, so that both runs are evaluated at their last step")
  runs = {}
  for dtype in DTYPES:
    run = config.copy_and_resolve_references()
    run.dtype = dtype
    train.train_and_evaluate(run, os.path.join(workdir, dtype))
    runs[dtype] = curves(os.path.join(workdir, dtype), last)
  f32, bf16 = runs["float32"], runs["bfloat16"]
  loss_gap = bf16["final_loss"] / f32["final_loss"] - 1
  top1_gap = bf16["final_top1"] - f32["final_top1"]
  return {"steps": config.total_steps, "batch_size": config.batch_size, "last": last, "runs": runs,
          "loss_relative_difference": loss_gap, "top1_difference": top1_gap,
          "loss_tolerance": loss_tolerance, "top1_tolerance": top1_tolerance,
          "bfloat16_matches": abs(loss_gap) <= loss_tolerance and abs(top1_gap) <= top1_tolerance}


def curves(workdir, last):
  """{"loss": [[step, loss]...], "top1": [[step, top1]...], "final_loss", "final_top1"} of one run."""
  records = {}
  for record in read_records(workdir):  # a resumed run rewrites the steps after its checkpoint: the last wins
    records.setdefault(record["step"], {}).update(record)
  steps = sorted(records)
  loss = [[s, records[s]["train/loss"]] for s in steps if "train/loss" in records[s]]
  top1 = [[s, records[s]["eval/top1"]] for s in steps if "eval/top1" in records[s]]
  final_loss = sum(value for _, value in loss[-last:]) / len(loss[-last:])
  return {"loss": loss, "top1": top1, "final_loss": final_loss, "final_top1": top1[-1][1]}


def markdown(result):
  runs = result["runs"]
  rows = ["| precision | final training loss | final eval top-1 |", "|---|---|---|"]
  rows += [f"| {dtype} | {runs[dtype]['final_loss']:.4f} | {100 * runs[dtype]['final_top1']:.1f}% |" for dtype in DTYPES]
  verdict = "within" if result["bfloat16_matches"] else "NOT within"
  rows.append(f"\nbfloat16 - float32 after {result['steps']} steps at batch {result['batch_size']}: loss "
              f"{100 * result['loss_relative_difference']:+.1f}% (mean of the last {result['last']} logged), top-1 "
              f"{100 * result['top1_difference']:+.1f} points: {verdict} the tolerances "
              f"({100 * result['loss_tolerance']:.0f}%, {100 * result['top1_tolerance']:.0f} points)")
  return "\n".join(rows)


def plot(result, path):
  """Training loss and evaluation top-1 of both precisions against steps."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for dtype, style in zip(DTYPES, ("-", "--")):
    run = result["runs"][dtype]
    left.plot(*zip(*run["loss"]), style, label=dtype)
    right.plot(*zip(*run["top1"]), "o" + style, label=dtype)
  left.set(title=f"training loss, batch {result['batch_size']}", xlabel="step", ylabel="loss")
  right.set(title="evaluation top-1", xlabel="step", ylabel="top-1", ylim=(0, 1.02))
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  f = flags.FLAGS
  result = compare(f.config, f.workdir, last=f.last, loss_tolerance=f.loss_tolerance, top1_tolerance=f.top1_tolerance)
  workdir = f.workdir
  with open(os.path.join(workdir, "precision.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(workdir, "precision.png"))
  print(markdown(result))


if __name__ == "__main__":  # flags defined here: importing compare() (the tests do) defines none
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally 'file.py:arg'.")
  flags.DEFINE_string("workdir", None, "Holds the two runs (float32/, bfloat16/) and the comparison.")
  flags.DEFINE_integer("last", 5, "Logged training losses averaged into the final loss.", lower_bound=1)
  flags.DEFINE_float("loss_tolerance", 0.1, "Allowed relative difference of the final losses.")
  flags.DEFINE_float("top1_tolerance", 0.02, "Allowed absolute difference of the final top-1.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
