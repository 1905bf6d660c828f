"""The Lightning Trainer every training recipe runs: the run section, the run directory's logger and checkpoints,
extra callbacks by name, and a run that stops when told to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

__all__ = ["RunConfig", "StopWithin", "build_trainer", "last_checkpoint", "resolve_precision"]


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
    """Lightning strategy; several GPUs (or CPU processes) use ddp."""
    precision: str = "auto"
    """Lightning precision: auto = bf16-mixed on a bf16-capable GPU, else 32-true."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""
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

    - Lightning's tip to install its cloud logger, printed by every Trainer.
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
    def filter(self, record) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


def build_trainer(run: RunConfig, run_dir: Path, *, val_every: int | None = None, callbacks=()) -> L.Trainer:
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
        strategy=run.strategy,
        precision=resolve_precision(run),
        logger=TensorBoardLogger(str(run_dir), name="tb", version=""),
        callbacks=[checkpoints, *callbacks, *extra, StopWithin(run.stop_timeout_s), *_progress_bar(run)],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **val_schedule,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=True,
    )
    return trainer


def _progress_bar(run: RunConfig) -> list[L.Callback]:
    """Lightning's rich bar titles a run "Epoch N/M-1"; the kit's runs are bounded by steps (max_epochs -1, so it
    read "Epoch 39/-2"). The same bar, titled with the epoch and the step budget."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not run.progress_bar or not _RICH_AVAILABLE:
        return []  # no bar, or Lightning's tqdm bar, which titles it "Epoch N"
    from lightning.pytorch.callbacks import RichProgressBar

    class StepBudgetBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            text = f"Epoch {current_epoch} of a {self.trainer.max_steps}-step run"
            return f"{text:{len(self.validation_description)}}"

    return [StepBudgetBar()]


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


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None
