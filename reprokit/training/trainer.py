"""The Lightning Trainer every training recipe runs: the run section, the run directory's logger and checkpoints,
extra callbacks by name, and a run that stops when told to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

__all__ = [
    "PlainProgress",
    "RunConfig",
    "StopWithin",
    "build_trainer",
    "fsdp_strategy",
    "last_checkpoint",
    "refuse_to_overwrite",
    "resolve_precision",
]


@dataclass
class RunConfig:
    """Where a run lives and how long it lasts."""

    run_dir: str = "runs/one_shot"
    """Run directory: config.yaml, TensorBoard logs (tb/), checkpoints/."""
    max_steps: int = 2000
    """Optimizer updates to run (one per rollout batch when num_iterations is 1). With --resume a larger value
    extends the run: a cosine or linear LR schedule keeps the LR of the last update done and decays from it to 0
    at the new max_steps (no jump)."""
    seed: int = 0
    """Seed of sampling, data order and adapter initialisation."""
    checkpoint_every: int = 20
    """Save a checkpoint (adapter, optimizer, scheduler, step, RNG) every N steps; last.ckpt is always kept."""
    val_every: int = 0
    """Validate on the eval benchmarks every N steps (0 = only before and after training)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu."""
    devices: str = "auto"
    """Lightning devices: auto, a count (2), or a list (0,1)."""
    strategy: str = "auto"
    """Lightning strategy: ddp for several GPUs (or CPU processes), each holding the whole model; fsdp shards
    weights, gradients and optimizer state over the GPUs (one FSDP unit per decoder layer), for full fine-tuning
    that does not fit one GPU under ddp. Lightning runs fsdp only on CUDA devices."""
    num_nodes: int = 1
    """Machines the run spans (Lightning's num_nodes; each starts the same command, as Lightning's multi-node
    DDP and FSDP expect)."""
    precision: str = "auto"
    """Lightning precision: auto = bf16-mixed on a bf16-capable GPU, else 32-true."""
    progress_bar: bool = True
    """Show progress: Lightning's bar on a terminal, a plain line every log_every steps where the output is not a
    terminal (a cluster job's log file)."""
    log_every: int = 10
    """Steps between the plain progress lines printed where the output is not a terminal."""
    callbacks: list[str] = field(default_factory=list)
    """Extra Lightning callbacks as importable 'module:Class' names, each built without arguments (e.g. to record
    rollouts); the module must be importable where every process starts."""
    description: str = ""
    """A line printed when the run starts: what it is (a preset says which world or setting it runs)."""
    stop_timeout_s: float = 30.0
    """After SIGTERM, the run stops at the next step; if it has not stopped within this many seconds (a process
    stuck in a collective), every process of the run is killed."""

    def __post_init__(self):
        if self.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            raise ValueError(
                f"RunConfig.strategy={self.strategy!r}: the recipes run several processes with --run.strategy ddp "
                "(Lightning starts this same command once per device); with a spawned or forked strategy the "
                "training happens in child processes whose step count, metrics and checkpoints do not come back "
                "to the process that validates and reports the run"
            )
        if self.log_every < 1:
            raise ValueError(f"RunConfig.log_every={self.log_every!r} must be >= 1")
        if self.num_nodes < 1:
            raise ValueError(f"RunConfig.num_nodes={self.num_nodes!r} must be >= 1")
        if self.stop_timeout_s <= 0:
            raise ValueError(f"RunConfig.stop_timeout_s={self.stop_timeout_s!r} must be > 0 seconds")


def resolve_precision(run: RunConfig) -> str:
    if run.precision != "auto":
        return run.precision
    if torch.cuda.is_available() and run.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def quiet_known_notices() -> None:
    """Silence the third-party notices the kit's runs understand, each by its exact text, nothing else.

    - Lightning's tip to install its cloud logger, and its GPU / TPU census, printed by every Trainer.
    - ModelCheckpoint's note that with manual optimization a checkpoint holds the state after the optimizer step:
      that is what the kit's checkpoints are meant to hold (step N = N updates done; resuming from it is exact).
    - The empty validation loader of a run that validates only before and after fit (no ``val_every``).
    - torch's deprecation of ``LeafSpec``, which Lightning's pytree helper still uses.
    """
    import logging
    import warnings

    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTip) for f in logger.filters):
            logger.addFilter(_DropTip())
    for message in (
        "Using ModelCheckpoint with manual optimization and every_n_train_steps",
        r"Total length of `list` across ranks is zero",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=message)


class _DropTip:
    """Lightning's cloud-logger tip and its accelerator census ("GPU available: False, used: False", the same for
    TPUs): the run's own first line says where it runs."""

    PREFIXES = ("💡 Tip: For seamless cloud logging", "GPU available: ", "TPU available: ", "HPU available: ")

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def build_trainer(run: RunConfig, run_dir: Path, *, val_every: int | None = None, callbacks=(), model=None) -> L.Trainer:
    """The Trainer of a run; ``model`` (the network the module trains) names the layers FSDP shards one by one."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step-{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=max(1, run.checkpoint_every),
        save_top_k=-1,
        save_last=True,
    )
    devices = run.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    val_every = run.val_every if val_every is None else val_every
    # Validation inside fit counts training batches across epochs (a one-shot "epoch" is a single batch);
    # without val_every, fit gets no val dataloaders and the recipe validates before and after instead.
    val_schedule = dict(val_check_interval=val_every, check_val_every_n_epoch=None) if val_every else {}
    quiet_known_notices()
    extra = [_load_callback(name) for name in run.callbacks]
    trainer = L.Trainer(
        max_steps=run.max_steps,
        max_epochs=-1,
        accelerator=run.accelerator,
        devices=devices,
        num_nodes=run.num_nodes,
        strategy=fsdp_strategy(model) if run.strategy == "fsdp" else run.strategy,
        precision=resolve_precision(run),
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""),
        callbacks=[checkpoints, *callbacks, *extra, StopWithin(run.stop_timeout_s), *_progress_bar(run), *_plain_progress(run)],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **val_schedule,
        enable_progress_bar=run.progress_bar and sys.stdout.isatty(),
        enable_model_summary=False,
        use_distributed_sampler=True,
    )
    return trainer


def fsdp_strategy(model):
    """Lightning's FSDP with one unit per decoder layer (the classes transformers lists as ``_no_split_modules``),
    so each layer's weights are gathered only while it runs, and full state dicts in checkpoints."""
    from lightning.pytorch.strategies import FSDPStrategy

    if model is None:
        raise ValueError("run.strategy fsdp: build_trainer needs the model to find its decoder layers")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = {type(m) for m in inner.modules() if type(m).__name__ in names}
    if not layers:
        raise ValueError(
            f"run.strategy fsdp: {type(inner).__name__} lists no decoder layer class (_no_split_modules) to shard by; "
            "use run.strategy ddp"
        )
    return FSDPStrategy(auto_wrap_policy=layers, sharding_strategy="FULL_SHARD", state_dict_type="full", use_orig_params=True)


def _progress_bar(run: RunConfig) -> list[L.Callback]:
    """Lightning's rich bar titles a run "Epoch N/M-1"; the kit's runs are bounded by steps (max_epochs -1, so it
    read "Epoch 39/-2"). The same bar, titled with the epoch and the step budget."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not run.progress_bar or not sys.stdout.isatty() or not _RICH_AVAILABLE:
        return []  # no bar, or Lightning's tqdm bar, which titles it "Epoch N"
    from lightning.pytorch.callbacks import RichProgressBar

    class StepBudgetBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            text = f"Epoch {current_epoch} of a {self.trainer.max_steps}-step run"
            return f"{text:{len(self.validation_description)}}"

    return [StepBudgetBar()]


def _plain_progress(run: RunConfig) -> list[L.Callback]:
    """Where the output is no terminal (a cluster job's log file) a bar draws nothing useful: plain lines instead."""
    if not run.progress_bar or sys.stdout.isatty():
        return []
    return [PlainProgress(run.log_every)]


class PlainProgress(L.Callback):
    """One line every ``every`` training steps: the step, the train reward, the last validation pass@1, the step
    time and the time left."""

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self._started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._first = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (step % self.every and step != trainer.max_steps):
            return
        metrics = getattr(pl_module, "last_metrics", {}) or {k: float(v) for k, v in trainer.callback_metrics.items()}
        done = max(1, step - self._first)
        per_step = (time.perf_counter() - self._started) / done
        left = per_step * max(0, trainer.max_steps - step)
        parts = [f"step {step}/{trainer.max_steps}"]
        for key, label in (("reward/mean", "reward"), ("loss", "loss")):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.3f}")
        val = [(k, float(v)) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k.endswith("pass@1")]
        if val:
            parts.append(", ".join(f"{k.removeprefix('val/')} {v:.3f}" for k, v in val))
        parts.append(f"{per_step:.1f} s/step, {left / 60:.1f} min left")
        print("[reprokit] " + "; ".join(parts), flush=True)


def _load_callback(name: str):
    from reprokit.registry import import_object

    try:
        return import_object(name, what="run.callbacks entry")()
    except TypeError as err:
        raise SystemExit(f"run.callbacks: {name!r} could not be built without arguments ({err})") from err


class StopWithin(L.Callback):
    """A run told to stop (SIGTERM) stops, also when a process is stuck where Python cannot act on the signal.

    Lightning stops at the next step on SIGTERM, but a Python signal handler only runs between bytecodes: a
    process blocked in a collective (waiting for a process that will never join) never gets there. The signal
    still wakes a watcher thread (through ``signal.set_wakeup_fd``); if the process is alive ``seconds`` later,
    the watcher kills the processes this one launched (the other DDP ranks) and exits. Every rank but the
    launching one also exits when its launcher is gone, so no process is left behind.
    """

    def __init__(self, seconds: float = 30.0):
        self.seconds = float(seconds)
        self._started = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        import threading

        if self._started or threading.current_thread() is not threading.main_thread():
            return
        self._started = True
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            return
        threading.Thread(target=self._watch, args=(read_fd, trainer), name="reprokit-stop", daemon=True).start()
        if trainer.global_rank > 0 and "LOCAL_RANK" in os.environ:
            threading.Thread(target=self._follow_launcher, args=(os.getppid(),), name="reprokit-orphan", daemon=True).start()

    def _watch(self, read_fd: int, trainer) -> None:
        while True:
            received = os.read(read_fd, 64)
            if signal.SIGTERM in received or signal.SIGINT in received:
                break
        time.sleep(self.seconds)
        print(f"[reprokit] still running {self.seconds:.0f} s after SIGTERM: killing the run's processes", flush=True)
        launcher = getattr(trainer.strategy, "launcher", None)
        for proc in getattr(launcher, "procs", []):
            with contextlib.suppress(OSError):
                proc.kill()
        os._exit(128 + signal.SIGTERM)

    @staticmethod
    def _follow_launcher(parent: int) -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(128 + signal.SIGTERM)


def refuse_to_overwrite(run_dir: Path, resume: bool) -> None:
    """A run directory that already holds a run's checkpoints or TensorBoard events is continued (``--resume``) or
    left alone: a second run into it would overwrite the first's checkpoints and mix both runs' events."""
    if resume:
        return
    held = sorted(str(p.relative_to(run_dir)) for p in [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("tb/**/events.out.tfevents.*")])
    if held:
        raise SystemExit(
            f"{run_dir} already holds a run ({', '.join(held[:3])}{' …' if len(held) > 3 else ''}): continue it with "
            f"--resume --run_dir {run_dir}, or start a new one with another --run_dir; nothing was changed"
        )


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None
