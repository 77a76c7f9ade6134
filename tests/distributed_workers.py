"""What the ranks of tests/test_distributed.py run: W processes spawned on CPU (gloo), each joining the
group through the same environment variables torchrun sets."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dpbench.clipping import PrivacyEngine
from dpbench.distributed import World, free_port, init_world
from dpbench.sampling import epoch_plan, physical_batches, rank_share

TIMEOUT_S = 60.0


def spawn(task, world_size: int, out: Path, *args) -> None:
    """Run task(world, out, *args) on `world_size` ranks; raise if any rank failed."""
    port = free_port()
    mp.start_processes(_rank_main, args=(world_size, port, task, out, args), nprocs=world_size,
                       start_method="spawn", join=True)


def _rank_main(rank: int, world_size: int, port: int, task, out: Path, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = init_world("cpu", TIMEOUT_S)
    try:
        task(world, out, *args)
    except BaseException:
        (out / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        world.close()


# ---- models and data -------------------------------------------------------------------------------
def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Tanh(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def small_vit() -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=32, num_heads=2,
                             depth=2, num_classes=5, pretrained=False)


MODELS = {"cnn": small_cnn, "vit": small_vit}
N, BATCH, PHYSICAL, STEPS = 96, 24, 5, 3  # Poisson batches of ~24 examples, 5 per physical batch, 3 steps


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, 5, (N,), generator=g)


def train_steps(world: World, model_name: str, algorithm: str, sigma: float = 0.0) -> tuple[dict, dict]:
    """STEPS DP-SGD steps on Poisson batches of the global dataset, each rank taking its share of each;
    returns the final parameters and the communication this rank did per step."""
    torch.manual_seed(0)
    model = MODELS[model_name]().double()
    world.broadcast_module(model)
    engine = PrivacyEngine(model, algorithm, max_grad_norm=0.5, noise_multiplier=sigma,
                           generator=torch.Generator().manual_seed(1), world=world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = dataset()
    x = x.double()
    before = (world.collectives, world.bytes_reduced)
    for logical in epoch_plan(N, BATCH, "poisson", torch.Generator().manual_seed(2))[:STEPS]:
        for chunk in physical_batches(rank_share(logical, world.rank, world.size), PHYSICAL):
            engine.backward(F.cross_entropy(model(x[chunk]), y[chunk], reduction="none"))
        engine.add_noise()
        for p in engine.parameters:
            p.grad.div_(BATCH)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    engine.detach()
    comm = {"collectives_per_step": (world.collectives - before[0]) / STEPS,
            "bytes_per_step": (world.bytes_reduced - before[1]) / STEPS,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in engine.parameters)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, comm


def equality_task(world: World, out: Path, cases: list[tuple[str, str]]) -> None:
    """Every (model, algorithm) case with σ = 0; rank 0 saves the parameters and the traffic."""
    results = {case: train_steps(world, *case) for case in cases}
    if world.is_main:
        torch.save(results, out / f"equality-w{world.size}.pt")


# ---- noise -----------------------------------------------------------------------------------------
NOISE_STEPS, SIGMA, R = 200, 1.5, 2.0


def noise_draws(world: World, every_rank: bool = False) -> torch.Tensor:
    """The noise each logical batch adds ([NOISE_STEPS, P]): the summed gradient of steps whose clipped
    sums are zero. `every_rank` simulates the mistake of drawing noise on every rank."""
    model = nn.Linear(100, 10)
    engine = PrivacyEngine(model, "bk_mixed", max_grad_norm=R, noise_multiplier=SIGMA,
                           generator=torch.Generator().manual_seed(7 + (world.rank if every_rank else 0)),
                           world=world)
    if every_rank:
        engine._draws_noise = lambda: True
    draws = []
    for _ in range(NOISE_STEPS):
        engine.add_noise()
        draws.append(torch.cat([p.grad.flatten() for p in engine.parameters]))
        for p in engine.parameters:
            p.grad = None
    engine.detach()
    return torch.stack(draws)


def noise_task(world: World, out: Path) -> None:
    draws = {"once": noise_draws(world), "every_rank": noise_draws(world, every_rank=True)}
    if world.is_main:
        torch.save(draws, out / f"noise-w{world.size}.pt")


def suite_task(world: World, out: Path, cases: list[tuple[str, str]]) -> None:
    """The equality cases and the noise draws in one launch of the ranks (each launch costs seconds)."""
    equality_task(world, out, cases)
    noise_task(world, out)
