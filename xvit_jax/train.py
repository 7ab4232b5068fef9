"""The training loop: the sharded state (state.py), the jit'd step, logging, evaluation and checkpoints."""

import dataclasses
import signal
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from xvit_jax import checkpoints, config_lib, distributed, evaluate, goodput, optim, prefetch, preprocess, profiling
from xvit_jax import sharding
from xvit_jax import state as state_lib
from xvit_jax import workdir as workdir_lib
from xvit_jax.convert import pretrained
from xvit_jax.data import label_heads, pipeline, sources
from xvit_jax.errors import UserError
from xvit_jax.metric_writer import MetricWriter, format_duration


def make_train_step(config, graphdef, tx, schedule, *, shardings=None):
  """jit'd (state, batch) -> (state, metrics). The batch holds the pipeline's pixels (uint8, data.pipeline);
  preprocess.train_inputs makes them the model's input inside the step (normalised, erased, mixed in
  groups of augment.mixup_group rows). With several label heads (EPIC verb and noun) the loss is the sum
  of the heads' cross-entropies and the accuracy counts clips with every head right. With mixup each row's
  smoothed targets are mixed with its partner's alike.

  With config.grad_accum_steps = n > 1 the batch is cut into n micro-batches (rows i, i+n, i+2n, ...: each
  spread over all devices) whose gradients are averaged in float32 by a scan, so the step equals one
  over the whole batch (dropout masks aside) with 1/n of the activation memory.

  `shardings` (the state's, state.create) place the new state; the step is traced over their mesh, so the
  model lays its activations out on it (sharding.split_frames: mesh.frames)."""
  (heads, bounds), smoothing = label_heads(config), config.optimizer.label_smoothing
  accum = config.grad_accum_steps

  def loss_fn(params, video, targets, rng):
    logits = nnx.merge(graphdef, params)(video, train=True, rngs=nnx.Rngs(dropout=rng))
    losses = [optax.softmax_cross_entropy(logits[:, lo:hi], targets[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    return sum(losses).mean(), logits

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated_grads(params, video, targets, rng):
    split = lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

    def micro_step(carry, micro):
      grads_sum, loss_sum = carry
      video_i, targets_i, i = micro
      (loss, logits), grads = grad_fn(params, video_i, targets_i, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss), logits

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss), logits = jax.lax.scan(micro_step, (zeros, jnp.zeros((), jnp.float32)),
                                         (split(video), split(targets), jnp.arange(accum)))
    logits = logits.swapaxes(0, 1).reshape(video.shape[0], -1)  # back to the batch's row order
    return (loss / accum, logits), jax.tree.map(lambda g: g / accum, grads)

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    dropout_rng, _ = jax.random.split(rng)  # the second key drew mixup when it was done on the device
    video = preprocess.train_inputs(batch, config.augment.mixup_group)  # float32 (B, T, S, S, 3) in [-1, 1]
    labels = batch["label"].reshape(batch["label"].shape[0], -1)  # (B, heads)
    smoothed = lambda y: jnp.concatenate([optax.smooth_labels(jax.nn.one_hot(y[:, g], size), smoothing)
                                          for g, (_, size) in enumerate(heads)], axis=-1)
    targets = smoothed(labels)
    if "mixup_lam" in batch:
      lam = batch["mixup_lam"][:, None]
      targets = lam * targets + (1 - lam) * smoothed(batch["mixup_label"].reshape(labels.shape))
    if accum == 1:
      (loss, logits), grads = grad_fn(state["params"], video, targets, dropout_rng)
    else:
      (loss, logits), grads = accumulated_grads(state["params"], video, targets, dropout_rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # else the update is not applied (see config.nonfinite)
    unless_nonfinite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"step": state["step"] + 1, "rng": state["rng"],
                 "params": unless_nonfinite(optax.apply_updates(state["params"], updates), state["params"]),
                 "opt_state": unless_nonfinite(opt_state, state["opt_state"]),
                 "nonfinite_steps": state["nonfinite_steps"] + (~finite).astype(jnp.int32)}
    right = jnp.stack([jnp.argmax(logits[:, lo:hi], -1) == labels[:, g]
                       for g, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]).all(axis=0)
    metrics = {"train/loss": loss, "train/accuracy": jnp.mean(right), "train/learning_rate": schedule(state["step"]),
               "train/grad_norm": grad_norm, "train/finite": finite.astype(jnp.float32),
               "train/nonfinite_steps": new_state["nonfinite_steps"]}
    if "bad" in batch:  # rows whose unreadable record the pipeline replaced
      metrics["train/bad_records"] = batch["bad"].sum()
    return new_state, metrics

  if shardings is None:
    return jax.jit(train_step, donate_argnums=0)
  mesh = jax.tree.leaves(shardings)[0].mesh
  return jax.jit(sharding.traced_over(mesh, train_step), out_shardings=(shardings, None), donate_argnums=0)


class Preempted(Exception):
  """Raised after a SIGTERM: the checkpoint of `step` is on disk and training stopped."""

  def __init__(self, step, directory):
    super().__init__(f"preempted at step {step}: checkpoint saved in {directory}; run the same command to resume")
    self.step = step


class PreemptionNotice:
  """Has a preemption notice (SIGTERM) arrived? One process: a signal handler sets a flag, read after
  each step. Several processes: JAX's preemption sync service (started by jax.distributed.initialize)
  catches the signal on any host and names the step at which every process stops together."""

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.received, self.previous = False, None
    if not self.multiprocess and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def reached(self, step):
    if self.multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def close(self):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def check_init(config, workdir):
  """UserError if a recipe that needs pretrained weights (config.requires_init: the paper's) would start a
  fresh run (no checkpoint in `workdir`) from random weights without saying so (init_from unset)."""
  if config.requires_init and not config.init_from and not checkpoints.saved_steps(workdir):
    raise UserError("config.init_from is not set and the workdir has no checkpoint to resume: this recipe starts "
                    "from pretrained weights; pass --config.init_from=ViT-B_16.npz (ImageNet-21k, as the paper) or "
                    "--config.init_from=scratch (random weights, on purpose)")


def restore_or_initialise(config, state, ckpt, writer, train_batches=None, rows=None):
  """The newest checkpoint in the workdir if there is one (with its optimizer state, RNG and data
  position when it has them), else `config.init_from` if set ("scratch": `state` as created, said so),
  else `state` as created."""
  step = ckpt.latest_step()
  if step is not None:
    if state_lib.restore(state, ckpt, step):
      restored, data = False, f"no data position saved: data order reseeded at step {step}"
      if train_batches is not None and checkpoints.has_item(ckpt, step, checkpoints.DATA):
        try:
          checkpoints.restore_data(ckpt, step, train_batches)
          restored, data = True, "data stream at the saved position"
        except (KeyError, TypeError, ValueError):  # another number of processes, or a pipeline before 2026-12
          data = (f"data position saved by another number of processes or an older pipeline (data.workers > 0 "
                  f"before the batches were cut after the workers): order reseeded at step {step}")
        if restored and _counted_rows_not_groups(config, train_batches, step, rows):
          restored, data = False, (f"data position saved before mixup mixed groups of augment.mixup_group clips "
                                   f"(it counted rows): order reseeded at step {step}")
      writer.print(f"resumed from {ckpt.directory}/{step} ({data})")
      return state, restored
    writer.print(f"starting from the weights in {ckpt.directory}/{step} with a fresh optimizer")
  elif config.init_from == "scratch":
    writer.print(f"starting from random weights (config.init_from=scratch, seed {config.seed})")
  elif config.init_from:
    current = state_lib.params_item(state)
    params, report = pretrained.load(config.init_from, config.model, jax.device_get(current))
    state_lib.set_params(state, jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), params, current))
    writer.print(f"initialised from {config.init_from}: {len(report['loaded'])} parameters loaded, "
                 f"fresh: {', '.join(report['fresh']) or 'none'}; ignored from the file: "
                 f"{', '.join(report['dropped']) or 'nothing'}")
  return state, False


def _counted_rows_not_groups(config, iterator, step, rows):
  """Was a mixup run's data position saved by the pipeline before 2026-12? Its stream was of rows, today's
  of groups of augment.mixup_group rows: a position counted in rows lies beyond `step` batches of groups
  (today's, even after a reseed, never does)."""
  if not config.augment.mixup or rows is None:
    return False
  groups_per_batch = (rows[1] - rows[0]) // config.augment.mixup_group
  return iterator.get_state().get("next_index", 0) > step * groups_per_batch


def data_workers(config, writer):
  """config.data.workers; for -1 this process's share of the CPUs (pipeline.auto_workers), printed."""
  if config.data.workers != -1:
    return config.data.workers
  cpus, processes = pipeline.usable_cpus(), distributed.processes_on_this_host()
  workers = pipeline.auto_workers(cpus, processes)
  writer.print(f"data workers: {workers} (automatic, config.data.workers=-1: {cpus} usable CPU(s) shared by "
               f"{processes} JAX process(es) on this host, less one for the main process)")
  return workers


class Progress:
  """Per-step metrics kept on the device until a log step; throughput timed from the first log step on
  (the first interval holds compilation), and where each interval's wall time went (goodput.py: train
  steps, input, evaluation, checkpoints, logging) with MFU; non-finite steps found and, with
  config.nonfinite="stop", fatal."""

  def __init__(self, config, writer, flops_per_step=None, peak_per_device=None):
    self.config, self.writer = config, writer
    self.flops_per_step, self.peak_per_device = flops_per_step, peak_per_device
    self.pending, self.timer_start, self.timed_steps = [], None, 0
    self.interval = goodput.Interval(goodput.StepClock())

  def add(self, step, metrics, wait_start, dispatched):
    """Step `step` was dispatched at `dispatched` (time.perf_counter), after waiting for its batch since
    `wait_start`; `metrics` are its outputs."""
    self.pending.append((step, metrics))
    self.interval.add(wait_start, dispatched, metrics)

  def timed(self, kind):
    """Context timing the loop's own work of `kind` (goodput.WORK: eval, checkpoint, log)."""
    return self.interval.timed(kind)

  def check_finite(self, ckpt):
    """UserError naming the first step whose loss or gradients were NaN/Inf, if nonfinite="stop"."""
    if self.config.nonfinite != "stop" or not self.pending:
      return
    finite = jax.device_get([m["train/finite"] for _, m in self.pending])
    bad = [step for (step, _), ok in zip(self.pending, finite) if not ok]
    if bad:
      latest = ckpt.latest_step()
      raise UserError(f"the loss or gradients became NaN/Inf at step {bad[0]}: training stopped, that update was not "
                      f"applied and nothing after it was saved; newest checkpoint: "
                      f"{'none' if latest is None else f'step {latest}'} (--config.nonfinite=skip skips such steps instead)")

  def log(self, step):
    """The mean of each metric since the last log step (the running count of non-finite steps as it is),
    and, after the first log step, the interval's shares of wall time, mean step time and MFU."""
    metrics = jax.device_get([m for _, m in self.pending])
    record = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    record["train/nonfinite_steps"] = float(metrics[-1]["train/nonfinite_steps"])
    if "train/bad_records" in record:  # a count over the steps since the last log
      record["train/bad_records"] = float(np.sum([m["train/bad_records"] for m in metrics]))
    self.interval.wait_for_steps()
    self.pending, now = [], time.perf_counter()
    record.update(self.interval.close(now, self.flops_per_step, jax.device_count(), self.peak_per_device))
    if self.timer_start is None:
      self.timer_start, self.timed_steps = now, step
      clips_per_sec = float("nan")
    else:
      clips_per_sec = (step - self.timed_steps) * self.config.batch_size / (now - self.timer_start)
      record["train/clips_per_sec"] = clips_per_sec
    total = self.config.total_steps
    eta = (total - step) * self.config.batch_size / clips_per_sec if clips_per_sec > 0 else float("nan")
    skipped = f" | {record['train/nonfinite_steps']:.0f} non-finite steps skipped" if record["train/nonfinite_steps"] else ""
    shares = ""
    if "train/step_time_fraction" in record:
      shares = (f" | input wait {100 * record['train/input_wait_fraction']:.0f}% | step time "
                f"{100 * record['train/step_time_fraction']:.0f}%")
    mfu = f" | MFU {100 * record['train/mfu']:.1f}%" if "train/mfu" in record else ""
    self.writer.print(f"step {step}/{total} | loss {record['train/loss']:.4f} | acc {record['train/accuracy']:.3f} | "
                      f"{clips_per_sec:.1f} clips/s | ETA {format_duration(eta) if eta == eta else '?'}{shares}{mfu}"
                      f"{skipped}")
    self.interval.work["log"] = time.perf_counter() - now  # the next interval's: the devices wait for it
    return record

  def close(self):
    self.interval.clock.close()


@dataclasses.dataclass(frozen=True)
class Run:
  """The parts of a training run that the loop drives."""
  config: ml_collections.ConfigDict
  train_step: Callable  # jit'd (state, global batch) -> (state, metrics)
  batches: prefetch.DevicePrefetch  # the global train batches on the mesh, one placed ahead; the data position
  run_eval: Callable  # params -> {"eval/top1": ..., ...}
  ckpt: ocp.CheckpointManager
  writer: MetricWriter
  preemption: PreemptionNotice
  profile: profiling.Profile  # config.profile_steps
  flops_per_step: float | None  # model FLOPs of one train step, for train/mfu (None: not logged)
  peak_per_device: float | None  # peak FLOP/s of one device


def _train_loop(run, state, first_step):
  """Steps first_step+1 .. total_steps: log, evaluate, checkpoint, profile; on a preemption notice save and
  raise. (state, final): the evaluation at the last step is the final model's, also recorded as final/*
  (None when no step was left to train)."""
  config, ckpt, writer = run.config, run.ckpt, run.writer
  progress = Progress(config, writer, run.flops_per_step, run.peak_per_device)
  started, final = time.time(), None
  try:
    for step in range(first_step + 1, config.total_steps + 1):
      run.profile.before(step, progress.interval.wait_for_steps)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        waiting = time.perf_counter()
        batch = next(run.batches)  # placed while the previous step ran: no wait unless the input falls behind
        dispatched = time.perf_counter()
        state, metrics = run.train_step(state, batch)
      progress.add(step, metrics, waiting, dispatched)
      run.profile.after(step, metrics)
      last = step == config.total_steps
      preempted = run.preemption.reached(step)
      saving = preempted or last or (config.checkpoint_every and step % config.checkpoint_every == 0)
      logging_step = last or step % (config.log_every or config.total_steps) == 0
      record = {}
      if logging_step or saving:
        progress.check_finite(ckpt)
      if logging_step:
        record = progress.log(step)
      if last or (config.eval_every and step % config.eval_every == 0):
        with progress.timed("eval"):
          results = run.run_eval(state["params"])
          record.update(results)
          writer.print(f"eval at step {step}: top1 {results['eval/top1']:.4f} | top5 {results['eval/top5']:.4f} | "
                       f"loss {results['eval/loss']:.4f} | {format_duration(time.time() - started)} elapsed")
        if last:  # the final parameters on the whole eval split: the run's result (one evaluation serves both)
          final = evaluate.final(results)
          record.update(final)
      if record:
        with progress.timed("log"):
          writer.write(step, record)
      if saving:
        with progress.timed("checkpoint"):
          state_lib.save(ckpt, step, state, run.batches, record, force=preempted)
      if preempted:
        checkpoints.wait(ckpt)
        raise Preempted(step, ckpt.directory)
  finally:
    run.profile.close()
    progress.close()
  return state, final


def train_and_evaluate(config, workdir, *, mode="train"):
  """Trains `config` for config.total_steps (mode "train"), resuming from workdir's newest checkpoint if
  there is one, or only evaluates that checkpoint (mode "evaluate"). Raises Preempted after a SIGTERM
  (having saved)."""
  config, derived = optim.resolve_schedule(config)  # the schedule in epochs at this batch; lines saying how
  config_lib.check(config, jax.device_count())
  if mode == "train":
    check_init(config, workdir)  # before anything is written in the workdir
  with workdir_lib.exclusive(workdir, active=mode == "train" and jax.process_index() == 0):
    return _train_or_evaluate(config, workdir, mode, derived)


def _train_or_evaluate(config, workdir, mode, derived):
  mesh = sharding.make_mesh(config.mesh)
  rows = sharding.process_rows(mesh, config.batch_size)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  graphdef, state, state_shardings = state_lib.create(config, tx, mesh)
  # the manager first: evaluating a workdir without checkpoints raises here, before a writer is opened
  ckpt = checkpoints.manager(workdir, keep=config.checkpoint_keep, create=mode == "train")
  writer = MetricWriter(workdir)
  preemption = PreemptionNotice() if mode == "train" else None
  train_batches = None
  try:
    workers = data_workers(config, writer)
    make_batches = lambda seed: iter(pipeline.train_dataset(
        sources.source(config, "train"), global_batch=config.batch_size, rows=rows, seed=seed,
        clip_fn=sources.TrainClip(config), workers=workers, mixup=config.augment.mixup,
        mixup_group=config.augment.mixup_group))
    train_batches = make_batches(config.seed) if mode == "train" else None
    state, data_restored = restore_or_initialise(config, state, ckpt, writer, train_batches, rows)
    first_step = int(state["step"])
    if mode == "train" and first_step and not data_restored:
      train_batches = make_batches(config.seed + first_step)
    run_eval = evaluate.make_evaluator(config, graphdef, mesh, rows, workers)

    if mode == "evaluate":
      results = run_eval(state["params"])
      writer.print("evaluation: " + evaluate.summary(results))
      writer.write(first_step, results)
      return results

    train_step = make_train_step(config, graphdef, tx, schedule, shardings=state_shardings)
    mesh_text = " x ".join(f"{a}={n}" for a, n in mesh.shape.items())
    writer.print(f"training {config.model.attention} X-ViT, {sum(x.size for x in jax.tree.leaves(state['params'])):,} "
                 f"parameters, {jax.device_count()} device(s) in {jax.process_count()} process(es), mesh "
                 f"{mesh_text}, steps {first_step}..{config.total_steps}")
    for line in derived:
      writer.print(line)
    flops_per_step, peak, line = goodput.model_flops(config, jax.devices())
    writer.print(line)
    profile = profiling.Profile(config, workdir, first_step, writer)
    place = lambda batch: sharding.global_batch(mesh, batch, config.batch_size)
    train_batches = prefetch.DevicePrefetch(train_batches, place, count=config.total_steps - first_step)
    run = Run(config, train_step, train_batches, run_eval, ckpt, writer, preemption, profile, flops_per_step, peak)
    state, final = _train_loop(run, state, first_step)
    checkpoints.wait(ckpt)
    best = checkpoints.best_step(ckpt)
    if best is not None:
      writer.print(f"best eval/top1 {ckpt.metrics(best)[checkpoints.BEST_METRIC]:.4f} at step {best} "
                   f"(best checkpoint, kept in {ckpt.directory}/{best})")
    if final is None:
      writer.print(f"nothing left to train: the model in {ckpt.directory} is at step {first_step} "
                   f"(total_steps={config.total_steps}); --mode=evaluate evaluates it")
    else:
      writer.print(f"final model at step {config.total_steps}: {evaluate.summary(final, prefix=False)}")
    return state
  finally:
    if isinstance(train_batches, prefetch.DevicePrefetch):
      train_batches.close()
    if preemption is not None:
      preemption.close()
    checkpoints.close(ckpt)
    writer.close()
