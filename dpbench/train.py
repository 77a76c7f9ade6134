"""DP-SGD training of a registered model to a target ε (`dpbench train`).

One optimizer step = one logical batch (Poisson-sampled by default) processed as physical batches
through `PrivacyEngine.backward`, which accumulates the clipped per-sample gradient sum; the engine
then adds N(0, σ²R²) once, the gradient is divided by the EXPECTED logical batch size, and the
optimizer steps. σ comes from the accountant for the target (ε, δ) before training; the ε actually
spent is reported at the end. A checkpoint after every epoch lets `--resume` continue a killed run
exactly (same parameters with the same seed), including the sampling and noise generators.

Under `torchrun --nproc-per-node N` (or `srun` with N tasks) the W ranks hold replicas of the model:
every rank draws the same global logical batches and processes its share of each, rank 0 alone adds
the noise and one all-reduce per step sums the gradients (dpbench.distributed), so the logical batches,
the noise and the privacy analysis are those of one process whatever W is. Rank 0 writes the result and
the checkpoints; the test-set evaluation is split over the ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from dpbench.accounting import ACCOUNTANTS, PrivacyLedger, epsilons, noise_multiplier_for
from dpbench.clipping import ALGORITHMS, PrivacyEngine
from dpbench.device import resolve as resolve_device, synchronize
from dpbench.distributed import DEFAULT_TIMEOUT_S, World, init_world, rank_device
from dpbench.errors import DpbenchError
from dpbench.finetune import freeze_parameters, load_weights_file
from dpbench.results import environment, write_json_atomic
from dpbench.sampling import SAMPLING_METHODS, epoch_plan, physical_batches, rank_share, steps_per_epoch

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")
CHECKPOINT_VERSION = 1
EPS_REFRESH_FACTOR = 20
"""The progress bar's ε (a PRV evaluation can take seconds) is refreshed after 20x its cost, and per epoch."""
PROGRESS_INTERVAL_S, LOG_INTERVAL_S = 0.1, 30.0  # progress bar updates: terminal / log file (SLURM, pipeline)
# Settings that may change between a run and its resumption; every other field must match.
RESUMABLE_CHANGES = {"out", "checkpoint", "resume", "threads", "num_workers", "progress", "dist_timeout", "verify"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags and the recipe YAML keys, with - as _)."""

    model: str = "cnn"
    dataset: str = "offline"
    algorithm: str = "mixed_ghost"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    accountant: str = "prv"
    max_grad_norm: float = 1.0
    epochs: int = 2
    batch_size: int = 256
    physical_batch_size: int = 64
    sampling: str = "poisson"
    optimizer: str = "sgd"
    lr: float = 0.25
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    precision: str = "fp32"
    image_size: int | None = None
    pretrained: bool = False
    allow_random_init: bool = False
    pretrained_file: str | None = None
    freeze: list[str] | None = None
    train_only: list[str] | None = None
    train_range: str | None = None
    validation_size: int | None = None
    split_seed: int = 0
    train_size: int | None = None
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    seed: int = 0
    eval_batch_size: int = 1024
    num_workers: int = 0
    threads: int | None = None
    out: str = "results/train/train.json"
    checkpoint: str | None = None
    resume: bool = False
    progress: bool = True
    dist_timeout: float = DEFAULT_TIMEOUT_S
    verify: bool = True

    def validate(self) -> None:
        """Raise DpbenchError naming the first bad value."""
        _choice("algorithm", self.algorithm, tuple(ALGORITHMS))
        for name, allowed in [("accountant", ACCOUNTANTS), ("sampling", SAMPLING_METHODS),
                              ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS)]:
            _choice(name, getattr(self, name), allowed)
        for name in ["epochs", "batch_size", "physical_batch_size", "eval_batch_size", "train_size", "threads",
                     "validation_size"]:
            if getattr(self, name) is not None and not getattr(self, name) >= 1:
                raise DpbenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ["lr", "max_grad_norm"]:
            if not getattr(self, name) > 0:
                raise DpbenchError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise DpbenchError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.num_workers < 0:
            raise DpbenchError("--weight-decay and --num-workers must be >= 0")
        if not 0 < self.delta < 1:
            raise DpbenchError(f"--delta must be in (0, 1), got {self.delta}")
        if self.algorithm == "nonprivate":
            if self.epsilon is not None or self.noise_multiplier is not None:
                raise DpbenchError("--algorithm nonprivate adds no noise: drop --epsilon / --noise-multiplier")
        elif (self.epsilon is None) == (self.noise_multiplier is None):
            raise DpbenchError(f"--algorithm {self.algorithm} needs exactly one of --epsilon (target) "
                               f"or --noise-multiplier")
        if self.pretrained and self.pretrained_file:
            raise DpbenchError("--pretrained (timm's weights) and --pretrained-file exclude each other")
        if self.train_range is not None:
            parse_range(self.train_range)
        if self.epsilon is not None and not self.epsilon > 0:
            raise DpbenchError(f"--epsilon must be > 0, got {self.epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise DpbenchError(f"--noise-multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.dist_timeout > 0:
            raise DpbenchError(f"--dist-timeout must be > 0, got {self.dist_timeout}")
        from dpbench.models import default_image_size  # imports timm: only when a run is configured

        default_image_size(self.model)  # an unknown model fails here, before any data is loaded
        if self.precision == "bf16" and resolve_device(self.device).type != "cuda":
            raise DpbenchError("--precision bf16 (autocast) is supported on CUDA only; use fp32 on CPU")

    @property
    def private(self) -> bool:
        return self.algorithm != "nonprivate"

    def checkpoint_path(self) -> Path:
        """The checkpoint file: --checkpoint, or the result path with the suffix .ckpt.pt."""
        return Path(self.checkpoint) if self.checkpoint else Path(self.out).with_suffix(".ckpt.pt")


def parse_range(text: str) -> tuple[int, int]:
    """'START:STOP' -> (START, STOP) with 0 <= START < STOP; a DpbenchError otherwise."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise DpbenchError(f"--train-range {text!r} must be START:STOP, e.g. 0:30000") from None
    if not 0 <= start < stop:
        raise DpbenchError(f"--train-range {text!r} needs 0 <= START < STOP")
    return start, stop


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DpbenchError(f"--{name} {value!r} is not one of: {', '.join(allowed)}")


@dataclass
class TrainingData:
    """The train, validation (held out from the training data; None without --validation-size) and test
    sets of a run, and what the model must accept."""

    name: str
    description: str
    info: dict
    train: Dataset
    validation: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int


def fetch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, labels) of `indices`: tensor indexing for in-memory data, else item by item."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        return x[indices], y[indices]
    return default_collate([dataset[int(i)] for i in indices])


def physical_stream(dataset: Dataset, chunks: list[torch.Tensor], num_workers: int, pin_memory: bool):
    """An iterator over the (inputs, labels) of `chunks` in order; worker processes if num_workers > 0."""
    if num_workers == 0:
        return (fetch(dataset, chunk) for chunk in chunks)
    return iter(DataLoader(dataset, batch_sampler=[chunk.tolist() for chunk in chunks], num_workers=num_workers,
                           pin_memory=pin_memory))


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             autocast: Callable[[], Any], world: World | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `dataset`; over W ranks each evaluates every W-th
    batch and the sums are added up."""
    world = world or World()
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for indices in torch.arange(len(dataset)).split(batch_size)[world.rank::world.size]:
            x, y = fetch(dataset, indices)
            x, y = x.to(device), y.to(device)
            with autocast():
                logits = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    total_loss, correct = world.sum_numbers(total_loss, correct)
    return total_loss / len(dataset), correct / len(dataset)


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file and a rename, so a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _identity(config: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}


def _load_checkpoint(config: TrainConfig) -> dict | None:
    """The checkpoint to resume from (None to start afresh), after checking it belongs to this run."""
    path = config.checkpoint_path()
    if not config.resume or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise DpbenchError(f"cannot read checkpoint {path}: {err}") from err
    if state.get("version") != CHECKPOINT_VERSION:
        raise DpbenchError(f"checkpoint {path} has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    differences = {k: (v, _identity(config).get(k)) for k, v in state["identity"].items()
                   if _identity(config).get(k) != v}
    if differences:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differences.items())
        raise DpbenchError(f"checkpoint {path} belongs to a different run ({listed}); use another --out "
                           f"or --checkpoint, or drop --resume")
    return state


class _EpochStats:
    """Running loss and accuracy over the physical batches of an epoch (before each update)."""

    def __init__(self):
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += losses.detach().sum().item()
        self.correct += (logits.detach().argmax(1) == labels).sum().item()
        self.count += labels.numel()

    def summed(self, world: World) -> "_EpochStats":
        """The statistics of all ranks together."""
        total = _EpochStats()
        total.loss_sum, total.correct, total.count = world.sum_numbers(self.loss_sum, self.correct, self.count)
        return total

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else math.nan


def _accumulate(model: nn.Module, engine: PrivacyEngine, x: torch.Tensor, y: torch.Tensor,
                autocast: Callable[[], Any], stats: _EpochStats) -> None:
    """One physical batch: forward, per-sample losses, the engine's clipped-sum backward into p.grad."""
    with autocast():
        logits = model(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    engine.backward(losses)
    stats.add(losses, logits, y)


def _noisy_update(engine: PrivacyEngine, optimizer: torch.optim.Optimizer, scheduler, expected_batch_size: int,
                  empty: bool = False) -> None:
    """End of a logical batch: noise once (summed over the ranks), divide by the expected batch size, step,
    clear gradients. A non-private step of an `empty` logical batch (on every rank) has no gradient."""
    if not (empty and engine.algorithm.backend == "plain"):
        engine.add_noise()
    for p in engine.parameters:
        if p.grad is not None:  # None only without noise (nonprivate) after an empty logical batch
            p.grad.div_(expected_batch_size)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _rng_states(sampling: torch.Generator, noise: torch.Generator, world: World) -> dict:
    """The generators' states; torch's own (dropout, ...) of every rank (a collective: all ranks call it)."""
    own = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state_all()
    by_rank = world.gather_objects(own)
    return {"sampling": sampling.get_state(), "noise": noise.get_state(), **by_rank[0], "by_rank": by_rank}


def _restore_rng_states(states: dict, sampling: torch.Generator, noise: torch.Generator, world: World) -> None:
    sampling.set_state(states["sampling"])
    noise.set_state(states["noise"])
    own = states["by_rank"][world.rank] if len(states.get("by_rank", ())) == world.size else states
    torch.set_rng_state(own["torch"])
    if "cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda"])


def train(config: TrainConfig, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Train `config.model` with DP-SGD as configured, write the result JSON, and return it.

    `on_epoch_end(record)` is called after each epoch's checkpoint is written.
    Under torchrun/srun every rank calls this; rank 0 writes the result (every rank returns it).
    """
    config.validate()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    world = init_world(resolve_device(config.device).type, config.dist_timeout)
    try:
        return _train(config, on_epoch_end, world)
    finally:
        world.close()
        torch.set_num_threads(threads_before)


def _train(config: TrainConfig, on_epoch_end: Callable[[dict], None] | None, world: World) -> dict:
    run = _prepare(config, world)
    _resume(run)
    meter = _EpsilonMeter(run.ledger if world.is_main else None)
    run.model.train()
    for epoch in range(run.epoch, config.epochs):
        record = _train_epoch(run, epoch, meter)
        state = _checkpoint_state(run)  # a collective (every rank's generator state)
        if world.is_main:
            _save_checkpoint(config.checkpoint_path(), state)
        world.barrier()  # the checkpoint exists before any rank goes on
        if on_epoch_end is not None:
            on_epoch_end(record)
    run.engine.detach()
    result = _result(run, meter.spent())
    if world.is_main:
        write_json_atomic(config.out, result)
    return result


@dataclass
class _Run:
    """What a run builds before its first step, and how far it has got (saved in every checkpoint)."""

    config: TrainConfig
    world: World
    device: torch.device
    data: TrainingData
    sigma: float | None
    sampling_rate: float
    total_steps: int
    ledger: PrivacyLedger | None
    model: nn.Module
    frozen: list[str]
    engine: PrivacyEngine
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampling_generator: torch.Generator
    noise_generator: torch.Generator
    started: float
    epoch: int = 0
    steps: int = 0
    history: list = dataclasses.field(default_factory=list)
    earlier_wall_time: float = 0.0
    resumes: int = 0
    session_steps: int = 0  # steps of this process (since the last resumption): traffic per step
    verified: dict | None = None  # dpbench.verify's record of the first step's first physical batch

    def wall_time_s(self) -> float:
        """Wall time of the run so far, over all its resumptions."""
        return self.earlier_wall_time + time.perf_counter() - self.started

    def autocast(self):
        """The forward pass's autocast context (bf16 on CUDA) or a no-op."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _prepare(config: TrainConfig, world: World) -> _Run:
    """Data, the noise multiplier for the target ε, the model (its weights, what is frozen; rank 0's on
    every rank), the engine and the optimizer of a fresh run."""
    from dpbench.models import create_model

    device = rank_device(resolve_device(config.device), world)
    started = time.perf_counter()
    data = load_training_data(config)
    n_train = len(data.train)
    if config.batch_size > n_train:
        raise DpbenchError(f"--batch-size {config.batch_size} exceeds the {n_train} training examples of {data.name}")
    total_steps = config.epochs * steps_per_epoch(n_train, config.batch_size)
    sampling_rate = config.batch_size / n_train
    sigma = config.noise_multiplier
    if config.private and config.epsilon is not None:
        sigma = noise_multiplier_for(config.epsilon, config.delta, sampling_rate, total_steps, config.accountant)
    ledger = None
    if config.private and sigma > 0:
        ledger = PrivacyLedger(sigma, sampling_rate, config.delta, config.accountant)
    elif config.private and world.is_main:
        warnings.warn("--noise-multiplier 0: per-sample clipping WITHOUT noise; no privacy guarantee "
                      "(epsilon = infinity)", stacklevel=2)

    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=data.num_classes, image_size=data.image_size,
                         in_channels=data.in_channels, pretrained=config.pretrained,
                         allow_random_init=config.allow_random_init).to(device)
    if config.pretrained_file:
        load_weights_file(model, config.pretrained_file)
    frozen = freeze_parameters(model, config.freeze, config.train_only)
    world.broadcast_module(model)
    if world.rank > 0:  # its own stream for dropout and the like; rank 0 keeps the single-process one
        torch.manual_seed(config.seed + 7919 * world.rank)
    sampling_generator = torch.Generator().manual_seed(config.seed)
    noise_generator = torch.Generator(device).manual_seed(config.seed + 1)
    verified = verify_first_batch(config, model, data.train, sampling_generator, device, world)
    engine = PrivacyEngine(model, algorithm=config.algorithm, max_grad_norm=config.max_grad_norm,
                           noise_multiplier=sigma or 0.0, generator=noise_generator, world=world)
    optimizer = _optimizer(config, model)
    return _Run(config=config, world=world, device=device, data=data, sigma=sigma, sampling_rate=sampling_rate,
                total_steps=total_steps, ledger=ledger, model=model, frozen=frozen, engine=engine, optimizer=optimizer,
                scheduler=_scheduler(config, optimizer, total_steps), sampling_generator=sampling_generator,
                noise_generator=noise_generator, started=started, verified=verified)


def verify_first_batch(config: TrainConfig, model: nn.Module, train_set: Dataset, sampling: torch.Generator,
                       device: torch.device, world: World) -> dict:
    """dpbench.verify's record of the run's first physical batch (of this rank's share of the first
    non-empty logical batch of epoch 1, drawn from a copy of the sampling generator's state), on the model
    as built, before the engine is attached. The model, the generators and torch's random state are left
    as they were. A resumed run checks the same batch on the same initial weights (before the checkpoint
    is loaded). In float64 and without autocast (the check is of the algorithm's mathematics)."""
    from dpbench.verify import SAMPLES, disabled, skipped, verify_algorithm

    if not config.verify:
        return disabled()
    if not config.private:
        return skipped(f"{config.algorithm}: no per-sample clipping to verify")
    plan_generator = torch.Generator()
    plan_generator.set_state(sampling.get_state())
    model.train()  # as in the steps (_train sets it too)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # a dataset's random transforms draw from torch's generator
        for logical in epoch_plan(len(train_set), config.batch_size, config.sampling, plan_generator):
            chunks = physical_batches(rank_share(logical, world.rank, world.size), config.physical_batch_size)
            if chunks:
                x, y = fetch(train_set, chunks[0][:SAMPLES])
                return verify_algorithm(model, config.algorithm, x.to(device), y.to(device), samples=SAMPLES)
    return skipped("no logical batch of epoch 1 has a sample for this rank")


def _resume(run: _Run) -> None:
    """Restore parameters, optimizer, schedule, generators, ledger and progress from the checkpoint, if any."""
    checkpoint = _load_checkpoint(run.config)
    if checkpoint is None:
        return
    written_by = checkpoint.get("world_size", 1)
    if written_by != run.world.size:
        stochastic = random_modules(run.model)
        if stochastic:
            raise DpbenchError(
                f"checkpoint {run.config.checkpoint_path()} was written by {written_by} ranks, this run has "
                f"{run.world.size}: the logical batches and the noise do not depend on the number of ranks, but "
                f"the random draws of {', '.join(stochastic[:3])} do; resume with {written_by} ranks")
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    _restore_rng_states(checkpoint["rng"], run.sampling_generator, run.noise_generator, run.world)
    if run.ledger is not None:
        run.ledger.load_state_dict(checkpoint["ledger"])
    run.epoch, run.steps, run.history = checkpoint["epoch"], checkpoint["steps"], checkpoint["history"]
    run.earlier_wall_time, run.resumes = checkpoint["wall_time_s"], checkpoint["resumes"] + 1


def random_modules(model: nn.Module) -> list[str]:
    """Names of the modules that draw random numbers in training mode (dropout, stochastic depth)."""
    return [name or type(model).__name__ for name, m in model.named_modules()
            if (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or getattr(m, "drop_prob", 0) > 0]


def _checkpoint_state(run: _Run) -> dict:
    """Everything `_resume` needs to continue the run exactly."""
    return {"version": CHECKPOINT_VERSION, "identity": _identity(run.config), "epoch": run.epoch,
            "steps": run.steps, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": _rng_states(run.sampling_generator, run.noise_generator, run.world), "world_size": run.world.size,
            "ledger": run.ledger.state_dict() if run.ledger is not None else None, "history": run.history,
            "wall_time_s": run.wall_time_s(), "resumes": run.resumes, "noise_multiplier": run.sigma}


class _EpsilonMeter:
    """ε spent so far, re-evaluated for the progress bar only every EPS_REFRESH_FACTOR x its own cost."""

    def __init__(self, ledger: PrivacyLedger | None):
        self.ledger = ledger
        self.refreshed = time.perf_counter()
        self.shown = self.spent()
        self.cost = time.perf_counter() - self.refreshed

    def spent(self) -> float:
        """ε spent now (∞ for a non-private run, one without noise, and on every rank but rank 0)."""
        return self.ledger.epsilon() if self.ledger is not None else math.inf

    def refresh(self, force: bool = False) -> float:
        """The ε to show: recomputed if forced or if enough time has passed since the last evaluation."""
        if force or time.perf_counter() - self.refreshed > EPS_REFRESH_FACTOR * self.cost:
            self.refreshed = time.perf_counter()
            self.shown = self.spent()
            self.cost = time.perf_counter() - self.refreshed
        return self.shown


def _train_epoch(run: _Run, epoch: int, meter: _EpsilonMeter) -> dict:
    """One epoch of noisy steps, then the test-set evaluation; returns the epoch's record (also in history)."""
    from tqdm import tqdm

    config = run.config
    epoch_started = time.perf_counter()
    stats = _EpochStats()
    world = run.world
    logical_batches = epoch_plan(len(run.data.train), config.batch_size, config.sampling, run.sampling_generator)
    plan = [physical_batches(rank_share(logical, world.rank, world.size), config.physical_batch_size)
            for logical in logical_batches]
    stream = physical_stream(run.data.train, [chunk for chunks in plan for chunk in chunks], config.num_workers,
                             pin_memory=run.device.type == "cuda")
    bar = tqdm(plan, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               disable=not config.progress or not world.is_main,
               dynamic_ncols=True, mininterval=PROGRESS_INTERVAL_S if sys.stderr.isatty() else LOG_INTERVAL_S)
    for position, chunks in enumerate(bar):
        for _ in chunks:
            x, y = next(stream)
            _accumulate(run.model, run.engine, x.to(run.device, non_blocking=True),
                        y.to(run.device, non_blocking=True), run.autocast, stats)
        _noisy_update(run.engine, run.optimizer, run.scheduler, config.batch_size,
                      empty=logical_batches[position].numel() == 0)
        run.steps += 1
        run.session_steps += 1
        if run.ledger is not None:
            run.ledger.step()
        eps_shown = meter.refresh(force=position == len(plan) - 1)
        bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}", eps=f"{eps_shown:.3f}",
                        refresh=False)  # shown at the bar's own interval
    bar.close()
    return _end_epoch(run, epoch, stats.summed(world), epoch_started, meter)


def _end_epoch(run: _Run, epoch: int, stats: _EpochStats, epoch_started: float, meter: _EpsilonMeter) -> dict:
    """Evaluate on the validation and test sets, append the epoch's record to the history, print one line.

    epoch_time_s is the training time of the epoch alone; eval_time_s that of the evaluations."""
    from tqdm import tqdm

    config = run.config
    synchronize(run.device)
    epoch_time = time.perf_counter() - epoch_started
    record = {"epoch": epoch + 1, "steps": run.steps, "train_loss": stats.loss, "train_accuracy": stats.accuracy}
    if run.data.validation is not None:
        record["validation_loss"], record["validation_accuracy"] = evaluate(
            run.model, run.data.validation, config.eval_batch_size, run.device, run.autocast, run.world)
    record["test_loss"], record["test_accuracy"] = evaluate(run.model, run.data.test, config.eval_batch_size,
                                                            run.device, run.autocast, run.world)
    record.update(epsilon=_json_epsilon(meter.spent()), epoch_time_s=epoch_time,
                  eval_time_s=time.perf_counter() - epoch_started - epoch_time)
    run.history.append(record)
    run.epoch = epoch + 1
    if not run.world.is_main:  # rank 0 reports (the other ranks skip the accountant: their ε is not computed)
        return record
    privacy = "non-private" if not config.private else "no noise (ε = ∞)" if not run.sigma else \
        f"ε spent {record['epsilon']:.3f}"
    validation = (f"validation accuracy {record['validation_accuracy']:.4f}, "
                  if run.data.validation is not None else "")
    tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {stats.loss:.4f}, {validation}test accuracy "
               f"{record['test_accuracy']:.4f}, {privacy}, {epoch_time:.1f} s")
    return record


def _json_epsilon(value: float) -> float | None:
    """ε for JSON: None for a non-private run (ε = ∞ has no JSON number)."""
    return None if math.isinf(value) else value


def _result(run: _Run, eps: float) -> dict:
    """The result JSON: final test accuracy (of the last epoch's model), privacy by every accountant, what
    trained, timing, config, environment."""
    config, data, history = run.config, run.data, run.history
    notes = []
    if not config.private:
        notes.append("non-private training: no clipping, no noise, no privacy guarantee (epsilon = infinity)")
    if config.private and not run.sigma:
        notes.append("noise multiplier 0: per-sample clipping without noise, no privacy guarantee (epsilon = infinity)")
    if config.private and config.sampling == "shuffle":
        notes.append("fixed-size shuffled batches: every accountant here assumes Poisson sampling, so the reported "
                     "epsilon does NOT match how batches were drawn (the paper's reference code did the same)")
    if config.private and config.accountant == "gdp":
        notes.append("sigma calibrated with the gdp accountant (central-limit approximation, can underestimate "
                     "epsilon); epsilon_by_accountant['prv'] is the upper bound")
    by_accountant = None
    if config.private and run.sigma and run.steps > 0:
        by_accountant = {k: _json_epsilon(v) for k, v in
                         epsilons(run.sigma, run.sampling_rate, run.steps, config.delta).items()}
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    return {
        "kind": "train",
        "model": config.model,
        "dataset": data.name,
        "dataset_description": data.description,
        "dataset_info": data.info,
        "algorithm": config.algorithm,
        "private": config.private,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "validation_accuracy": history[-1].get("validation_accuracy"),
        "validation_loss": history[-1].get("validation_loss"),
        "epsilon": _json_epsilon(eps),
        "epsilon_by_accountant": by_accountant,
        "target_epsilon": config.epsilon,
        "delta": config.delta if config.private else None,
        "noise_multiplier": run.sigma,
        "accountant": config.accountant if config.private else None,
        "sampling": config.sampling,
        "sampling_rate": run.sampling_rate,
        "expected_batch_size": config.batch_size,
        "physical_batch_size": config.physical_batch_size,
        "max_grad_norm": config.max_grad_norm if config.private else None,
        "steps": run.steps,
        "planned_steps": run.total_steps,
        "epochs": config.epochs,
        "train_size": len(data.train),
        "validation_size": len(data.validation) if data.validation is not None else None,
        "test_size": len(data.test),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "frozen_parameters": sum(p.numel() for p in run.model.parameters() if not p.requires_grad),
        "frozen": run.frozen,
        "pretrained_file": config.pretrained_file,
        "wall_time_s": run.wall_time_s(),
        "mean_epoch_time_s": sum(r["epoch_time_s"] for r in history) / len(history),
        "resumes": run.resumes,
        "verified": run.verified,
        "world_size": run.world.size,
        "distributed": {**run.world.describe(),
                        "allreduce_bytes_per_step": run.world.bytes_reduced / max(1, run.session_steps)},
        "notes": notes,
        "history": history,
        "config": dataclasses.asdict(config),
        "environment": environment(run.device, "bfloat16" if config.precision == "bf16" else "float32", config.seed),
    }


def training_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """`size` examples of `dataset` chosen by a permutation seeded with `seed` (in-memory data stays a tensor)."""
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return _select(dataset, keep)


def _select(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The examples `indices` of `dataset` (in-memory data stays a tensor)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(tensor[indices] for tensor in dataset.tensors))
    return Subset(dataset, indices.tolist())


def split_validation(dataset: Dataset, size: int, split_seed: int) -> tuple[Dataset, Dataset]:
    """(training, validation): `size` examples held out by a permutation seeded with `split_seed` alone,
    so every --seed of a run sees the same split."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(split_seed))
    return _select(dataset, order[size:].sort().values), _select(dataset, order[:size].sort().values)


def load_training_data(config: TrainConfig) -> TrainingData:
    """The run's train, validation and test sets from `dpbench.data` ("offline" = its offline default).

    The training data is narrowed in this order: --train-range (a slice in the stored order), then
    --validation-size (held out), then --train-size (a seeded subset of what is left).
    """
    from dpbench.data import default_offline_dataset, load_datasets

    name = default_offline_dataset() if config.dataset == "offline" else config.dataset
    train_set, test_set = load_datasets(name, config.data_dir, download=config.download, image_size=config.image_size)
    info = train_set.info
    description = info.description
    if config.train_range is not None:
        start, stop = parse_range(config.train_range)
        if stop > len(train_set):
            raise DpbenchError(f"--train-range {config.train_range} exceeds the {len(train_set)} training examples "
                               f"of {name}")
        train_set = _select(train_set, torch.arange(start, stop))
        description += f"; training examples {start}:{stop} of {info.train_size} (stored order)"
    validation = None
    if config.validation_size is not None:
        if config.validation_size >= len(train_set):
            raise DpbenchError(f"--validation-size {config.validation_size} leaves no training example of the "
                               f"{len(train_set)}")
        train_set, validation = split_validation(train_set, config.validation_size, config.split_seed)
        description += (f"; {config.validation_size} of them held out for validation (split seed "
                        f"{config.split_seed})")
    if config.train_size is not None:
        if config.train_size > len(train_set):
            raise DpbenchError(f"--train-size {config.train_size} exceeds the {len(train_set)} training examples "
                               f"of {name}")
        train_set = training_subset(train_set, config.train_size, config.seed)
        description += f"; training on a random subset of {config.train_size} of {info.train_size} examples"
    return TrainingData(name=info.name, description=description, info=info.as_dict(), train=train_set,
                        validation=validation, test=test_set, num_classes=info.num_classes,
                        in_channels=info.image_shape[0], image_size=info.image_shape[1])
