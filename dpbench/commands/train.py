"""`dpbench train`: DP-SGD training of a registered model to a target ε, with checkpoints and resume.

Options come from `dpbench.train.TrainConfig`; `--config FILE.yaml` sets any of them (keys with - or _),
and options given on the command line override the file.

Data-parallel over N processes: `torchrun --nproc-per-node N -m dpbench train ...` (multi-node with
--nnodes/--rdzv-endpoint), or `srun -n N python -m dpbench train ...` in a SLURM job; the logical batches,
the noise and ε are those of one process, and rank 0 writes the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from pathlib import Path

from dpbench.errors import DpbenchError

METAVARS = {int: "N", float: "X", str: "TEXT"}
HELP = {
    "model": "model name (dpbench.models: cnn, cnn_mnist, vgg11, resnet18, ... or a timm name)",
    "dataset": "dataset name, or 'offline' for the offline default (Fashion-MNIST if installed, else digits)",
    "algorithm": "clipping algorithm (dpbench.clipping.ALGORITHMS); nonprivate = plain training",
    "epsilon": "target ε: σ is calibrated before training (give this or --noise-multiplier)",
    "delta": "δ of the (ε, δ) guarantee",
    "noise_multiplier": "noise multiplier σ instead of a target ε",
    "accountant": "accountant that calibrates σ and reports ε: prv (upper bound), rdp, or gdp (Opacus' Gaussian-DP "
                  "approximation, the paper's reference code); the result gives ε by all three",
    "max_grad_norm": "per-sample clipping norm R",
    "epochs": "epochs (expected passes over the training set)",
    "batch_size": "expected logical batch size L (Poisson rate q = L/N); one noisy step per logical batch",
    "physical_batch_size": "largest batch that goes through the model at once (gradient accumulation)",
    "sampling": "poisson (what the accountant assumes) or shuffle (fixed size; NOT covered by the accountant)",
    "optimizer": "sgd (with --momentum) or adam",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule over all steps: constant or cosine",
    "precision": "fp32, or bf16 autocast (CUDA only)",
    "image_size": "input size of the model; the data is resized to it (default: the dataset's)",
    "pretrained": "load pretrained timm weights",
    "allow_random_init": "with --pretrained: continue with random weights when none can be loaded",
    "pretrained_file": "load every weight from this local file (safetensors, torch state dict or a dpbench train "
                       "checkpoint); keys and shapes must match; never touches the network",
    "freeze": "freeze the parameters whose names match any of these fnmatch patterns (e.g. '*cls_token' "
              "'*.attn.qkv.weight'): no gradient, no noise, no per-sample work",
    "train_only": "train only the parameters matching these fnmatch patterns (e.g. '*.bias' = BiTFiT, 'head.*')",
    "train_range": "train on examples START:STOP of the training set in its stored order (e.g. 0:30000)",
    "validation_size": "hold out this many training examples (after --train-range) for validation, evaluated "
                       "every epoch; choose hyper-parameters on it, not on the test set",
    "split_seed": "seed of the validation split (independent of --seed, so every seed sees the same split)",
    "train_size": "train on a seeded random subset of this many examples (q = L / this); quick runs",
    "data_dir": "directory of the datasets",
    "download": "download the dataset if it is missing (CIFAR; needs a network)",
    "device": "cpu, cuda, cuda:N or auto",
    "seed": "seed of the model initialisation, the sampling and the noise",
    "eval_batch_size": "batch size for the test-set evaluation",
    "num_workers": "data-loading worker processes (0 = in the training process)",
    "threads": "torch CPU threads (default: torch's)",
    "out": "result JSON file",
    "checkpoint": "checkpoint file (default: the result path with suffix .ckpt.pt)",
    "resume": "continue from the checkpoint if it exists (else start afresh)",
    "progress": "show a progress bar",
    "dist_timeout": "seconds a collective waits for the other ranks (torchrun/srun runs) before the run ends",
    "verify": "check the algorithm's per-sample norms and clipped sum on the first physical batch against brute "
              "force (dpbench.verify) and record `verified` in the result; --no-verify records it as skipped",
}


def register(subparsers) -> None:
    from dpbench.train import TrainConfig

    p = subparsers.add_parser("train", help="DP-SGD training to a target ε (Poisson sampling, checkpoints)",
                              description=__doc__)
    p.add_argument("--config", metavar="FILE", help="YAML file of options (command-line options override it)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{HELP[field.name]} (default: {field.default})")
        elif typing.get_origin(base) is list:
            p.add_argument(flag, nargs="+", default=None, metavar="PATTERN", help=HELP[field.name])
        else:
            p.add_argument(flag, type=base, default=None, metavar=METAVARS[base],
                           help=f"{HELP[field.name]} (default: {field.default})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """TrainConfig from the defaults, then the --config file, then the command-line options."""
    import yaml

    from dpbench.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    names = set(hints)
    values: dict = {}
    if args.config:
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise DpbenchError(f"cannot read --config {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise DpbenchError(f"--config {path} must be a mapping of option: value")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise DpbenchError(f"--config {path}: unknown option {key!r}")
            values[name] = _coerce(path, key, value, hints[name])
    values.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    return TrainConfig(**values)


def _coerce(path: Path, key: str, value, kind):
    """A YAML value converted to the option's type (int -> float is fine, 'abc' -> float is not)."""
    allowed = [t for t in typing.get_args(kind) or (kind,) if t is not type(None)]
    if value is None and len(allowed) < len(typing.get_args(kind)):
        return None
    base = allowed[0]
    if typing.get_origin(base) is list:
        values = [value] if isinstance(value, str) else value
        if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            return values
        raise DpbenchError(f"--config {path}: {key} must be a string or a list of strings, got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, base) and not isinstance(value, bool):
        return value
    elif base is str and isinstance(value, (int, float)):
        return str(value)
    raise DpbenchError(f"--config {path}: {key} must be {base.__name__}, got {value!r}")


def run(args) -> int:
    from dpbench.train import train

    result = train(config_from_args(args))
    print(summary(result))
    return 0


def summary(result: dict) -> str:
    """One line for the terminal."""
    head = (f"{result['model']} on {result['dataset']} with {result['algorithm']}: test accuracy "
            f"{result['test_accuracy']:.4f} after {result['steps']} steps ({result['wall_time_s']:.0f} s)")
    if not result["private"]:
        return f"{head}; non-private (ε = ∞) -> {result['config']['out']}"
    target = f", target {result['target_epsilon']:g}" if result["target_epsilon"] is not None else ""
    eps = result["epsilon"] if result["epsilon"] is not None else math.inf
    return (f"{head}; ε = {eps:.3f}{target}, δ = {result['delta']:g}, σ = {result['noise_multiplier']:.4f} "
            f"({result['accountant']}) -> {result['config']['out']}")
