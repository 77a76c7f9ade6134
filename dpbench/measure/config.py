"""What one measurement runs: the configuration shared by `dpbench bench` and each maxbatch probe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dpbench.errors import DpbenchError

DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class BenchConfig:
    """One (algorithm, model, batch size, input, device) configuration and how long to time it."""

    algorithm: str
    model: str
    batch_size: int
    image_size: int | None = None
    num_classes: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    steps: int = 10
    warmup: int = 3
    seed: int = 0
    threads: int | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def validate(self) -> "BenchConfig":
        """Raise DpbenchError naming the first bad value; return self when everything is valid."""
        from dpbench.clipping import ALGORITHMS

        if self.algorithm not in ALGORITHMS:
            raise DpbenchError(f"unknown algorithm {self.algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
        for name, low in (("batch_size", 1), ("num_classes", 1), ("steps", 1), ("warmup", 0)):
            value = getattr(self, name)
            if value < low:
                raise DpbenchError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.image_size is not None and self.image_size < 1:
            raise DpbenchError(f"--image-size must be >= 1, got {self.image_size}")
        if self.threads is not None and self.threads < 1:
            raise DpbenchError(f"--threads must be >= 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise DpbenchError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if self.max_grad_norm <= 0:
            raise DpbenchError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.noise_multiplier < 0:
            raise DpbenchError(f"--noise-multiplier must be >= 0, got {self.noise_multiplier}")
        from dpbench.device import check

        check(self.device)
        return self
