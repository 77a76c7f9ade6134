"""Fine-tuning: which parameters train (`--freeze`, `--train-only`) and weights from a local file
(`--pretrained-file`).

Patterns are shell-style (fnmatch, case-sensitive) on the full parameter names of
`model.named_parameters()`, e.g. `*cls_token`, `blocks.*.attn.qkv.weight`, `*.bias`. A frozen
parameter has `requires_grad=False` before the privacy engine is built, so the engine gives it no
gradient, no noise and no per-sample work (it is neither hooked nor in any layer's norm).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from dpbench.errors import DpbenchError

MAX_LISTED = 4
"""How many mismatched keys or unmatched patterns an error names."""


def _listed(names: list[str]) -> str:
    more = f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def freeze_parameters(model: nn.Module, freeze: list[str] | None = None,
                      train_only: list[str] | None = None) -> list[str]:
    """Set requires_grad=False on the parameters matching `freeze`, or (with `train_only`) on all that
    do not match it; both may be given (train_only first). Returns the frozen names, in model order.

    A pattern that matches no parameter, or a selection that leaves nothing to train, is a DpbenchError.
    """
    names = [name for name, _ in model.named_parameters()]
    for flag, patterns in (("--freeze", freeze), ("--train-only", train_only)):
        unused = [p for p in patterns or [] if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unused:
            raise DpbenchError(f"{flag} pattern {_listed(unused)} matches no parameter of "
                               f"{type(model).__name__} (names look like: {_listed(names)})")
    frozen = []
    for name, p in model.named_parameters():
        keep = (train_only is None or _matches(name, train_only)) and not _matches(name, freeze or [])
        if not keep:
            p.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(names):
        raise DpbenchError("--freeze/--train-only leave no parameter to train")
    return frozen


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a torch state dict, or a dpbench training checkpoint
    (its "model" entry); never executes code from the file (torch.load with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise DpbenchError(f"--pretrained-file {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn file, a foreign format or pickled code: say which file
        raise DpbenchError(f"--pretrained-file {path}: cannot read it ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "version" in state:
        state = state["model"]  # `dpbench train`'s checkpoint
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DpbenchError(f"--pretrained-file {path}: not a state dict of tensors")
    return state


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load every parameter and buffer of `model` from `path` (see read_weights_file); the keys and the
    shapes must match exactly, else a DpbenchError naming the first few differences."""
    state = read_weights_file(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{what}: {_listed(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise DpbenchError(f"--pretrained-file {path} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state)
