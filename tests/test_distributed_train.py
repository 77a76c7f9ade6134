"""`dpbench train` on 2 CPU ranks (gloo): launched by torchrun it ends with the model of one process on the
same logical batches (σ = 0); a rank that dies ends the other with one clear line; the run resumes, with 2
ranks or with 1, where the uninterrupted run ends (with noise: rank 0 draws what one process draws).

The runs compared here are in float64 (tests/float64_train.py: float64 model and data). Two ranks sum the
clipped gradients of their shares of a logical batch and then the shares, one process its physical batches:
the same terms in another order. In float32 (unit roundoff u = 6e-8) that order moved weights by up to
8.7e-5 after 8 steps at lr 2 on an AVX-512 CPU: the training amplifies a rounding ~1.5e3-fold, and the order
depends on the CPU's vector width. The same amplification of float64's u = 1.1e-16 is ~2e-13 (measured: at
most 1.2e-15), so TOLERANCE below (1e-9 relative + 1e-10 absolute, on weights of at most ~1.3) holds on any
CPU with a margin of ~500, while a real difference fails it by far (noise drawn on both ranks, a missing
all-reduce, a wrong division; one sample of 50 dropped from rank 1's share moved weights by 5e-2). The losses,
norms and clipping coefficients are computed in float32 (train.py casts the logits with .float()), from
inputs that differ between the runs only by float64 roundings: such a float32 rounding flips with a
probability of ~1e-16 / 6e-8 per value, ~1e-5 for the ~5000 values of a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpbench.distributed import free_port
from dpbench.train import TrainConfig, train
from float64_train import float64

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = dict(model="cnn", dataset="digits", algorithm="mixed_ghost", noise_multiplier=0.0, accountant="rdp",
               epochs=2, batch_size=50, physical_batch_size=16, train_size=200, lr=2.0, threads=1, progress=False)
TIMEOUT_S = 30
TOLERANCE = dict(rtol=1e-9, atol=1e-10)  # float64 runs: see the module docstring
FLOAT64_TRAIN = str(ROOT / "tests" / "float64_train.py")  # `dpbench train` in float64


def argv(out: Path, **changes) -> list[str]:
    options = {**OPTIONS, "out": str(out), **changes}
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag if value else f"--no-{key.replace('_', '-')}"] if isinstance(value, bool) else [flag, str(value)]
    return args


def environment(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", **extra}


def torchrun(out: Path, *extra: str, **changes) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), FLOAT64_TRAIN, *argv(out, **changes), *extra]
    return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)


def parameters(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, and 2 ranks under torchrun, of the same σ = 0 run (float64)."""
    root = tmp_path_factory.mktemp("train")
    with float64():
        one = train(TrainConfig(**OPTIONS, out=str(root / "one" / "result.json")))
    done = torchrun(root / "two" / "result.json")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, one, json.loads((root / "two" / "result.json").read_text()), done


def test_two_ranks_train_the_model_of_one_process(runs):
    root, one, two, done = runs
    assert two["world_size"] == 2 and two["distributed"]["backend"] == "gloo"
    assert two["distributed"]["launcher"] == "torchrun" and one["world_size"] == 1
    assert two["steps"] == one["steps"] == 8 and two["sampling_rate"] == one["sampling_rate"] == 0.25
    a, b = parameters(root / "one" / "result.ckpt.pt"), parameters(root / "two" / "result.ckpt.pt")
    assert a["features.0.weight"].dtype == torch.float64
    for name in a:
        torch.testing.assert_close(b[name], a[name], **TOLERANCE, msg=name)
    assert two["test_accuracy"] == one["test_accuracy"]
    # the running loss sums float32 losses per physical batch (16 or fewer: ~1e-6 relative), those sums in float64
    assert two["history"][-1]["train_loss"] == pytest.approx(one["history"][-1]["train_loss"], rel=1e-5)
    # every parameter is all-reduced once per step: 8 bytes each in float64 (4 in float32: test_distributed.py)
    assert two["distributed"]["allreduce_bytes_per_step"] == 8 * two["trainable_parameters"]
    # σ = 0: clipping without noise, ε infinite, with a warning and a note
    assert one["epsilon"] is None and one["noise_multiplier"] == 0 and one["private"] is True
    assert any("without noise" in note for note in two["notes"]) and "WITHOUT noise" in done.stderr
    # written once, by rank 0, through a rename: nothing else in the directory
    assert sorted(p.name for p in (root / "two").iterdir()) == ["result.ckpt.pt", "result.json"]


def test_a_killed_rank_ends_the_other_and_the_run_resumes_exactly(tmp_path):
    noisy = {"noise_multiplier": 0.5}
    with float64():
        uninterrupted = train(TrainConfig(**{**OPTIONS, **noisy}, out=str(tmp_path / "one" / "result.json")))
    reference = parameters(tmp_path / "one" / "result.ckpt.pt")
    out = tmp_path / "result.json"
    port = str(free_port())
    ranks = []
    for rank, program in enumerate([[FLOAT64_TRAIN], [str(ROOT / "tests" / "train_rank_killed.py")]]):
        env = environment(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=port)
        ranks.append(subprocess.Popen([sys.executable, *program, *argv(out, dist_timeout=TIMEOUT_S, **noisy)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    survivor, killed = ranks
    assert killed.wait(timeout=300) == -9
    died = time.monotonic()
    _, err = survivor.communicate(timeout=TIMEOUT_S + 60)
    assert time.monotonic() - died < TIMEOUT_S + 10
    assert survivor.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dpbench train: error: rank 0 of 2:") and "another rank exited" in last, err
    assert not out.exists()
    checkpoint = out.with_suffix(".ckpt.pt")
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    shutil.copy(checkpoint, tmp_path / "epoch1.ckpt.pt")

    # 2 ranks again: the uninterrupted run's model (the one-process run: same batches, same noise), and its ε
    resumed = torchrun(out, "--resume", **noisy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["resumes"] == 1 and result["world_size"] == 2
    assert result["epsilon"] == uninterrupted["epsilon"] and result["steps"] == uninterrupted["steps"]
    assert result["test_accuracy"] == uninterrupted["test_accuracy"]
    for name, value in parameters(checkpoint).items():
        torch.testing.assert_close(value, reference[name], **TOLERANCE, msg=name)

    # one process from the 2-rank checkpoint: nothing in its state depends on W (the model draws no random
    # numbers), so it ends there too
    single = TrainConfig(**{**OPTIONS, **noisy}, out=str(tmp_path / "single.json"),
                         checkpoint=str(tmp_path / "epoch1.ckpt.pt"), resume=True)
    with float64():
        assert train(single)["test_accuracy"] == uninterrupted["test_accuracy"]
    for name, value in parameters(tmp_path / "epoch1.ckpt.pt").items():
        torch.testing.assert_close(value, reference[name], **TOLERANCE, msg=name)


def test_resuming_with_another_world_size_is_refused_when_the_model_draws_random_numbers(tmp_path, monkeypatch):
    import dpbench.train as train_module
    from dpbench.errors import DpbenchError

    config = TrainConfig(**{**OPTIONS, "epochs": 1, "train_size": 100}, out=str(tmp_path / "r.json"), resume=True)
    train(config)
    state = torch.load(config.checkpoint_path(), weights_only=False)
    state["world_size"] = 2  # as if 2 ranks had written it
    state["identity"]["epochs"] = config.epochs = 2
    torch.save(state, config.checkpoint_path())
    monkeypatch.setattr(train_module, "random_modules", lambda model: ["head_drop"])
    with pytest.raises(DpbenchError, match="written by 2 ranks, this run has 1.*head_drop.*resume with 2 ranks"):
        train(config)


def test_random_modules_finds_dropout_and_drop_path():
    import timm
    from torch import nn

    from dpbench.train import random_modules

    assert random_modules(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))) == []
    assert random_modules(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))) == ["1"]
    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, depth=2, drop_path_rate=0.1)
    assert random_modules(vit) == ["blocks.1.drop_path1", "blocks.1.drop_path2"]  # the rate grows to 0.1
