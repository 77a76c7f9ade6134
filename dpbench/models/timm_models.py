"""timm models by name, made DP-ready: BatchNorm -> GroupNorm, no in-place activations.

Pretrained weights are looked up in the local caches first (Hugging Face hub cache, torch hub cache)
and loaded from there without touching the network. Otherwise they are downloaded only when the hub
answers a quick connection probe; timm's own offline failure retries for tens of seconds, which this avoids.
Without weights the call fails with a DpbenchError, or, when the caller allows random initialisation,
warns and continues with random weights.

In-place operations: module flags (`ReLU(inplace=True)`) are switched off here, but code inside a
timm forward cannot be changed. The families the paper uses (ViT, DeiT, BEiT, CrossViT, ConViT,
ConvNeXt) add residuals out of place; timm's CNNs such as its ResNets do `x += shortcut`, which Opacus'
backward hooks refuse (use the CIFAR zoo's resnet* or a clipping algorithm that does not need them).
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from dpbench.clipping import replace_batchnorm
from dpbench.errors import DpbenchError
from dpbench.models.norm import disable_inplace

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0


def is_timm_model(name: str) -> bool:
    """True if timm knows `name` (optionally with a pretrained tag, `arch.tag`)."""
    return timm.is_model(name)


def timm_default_image_size(name: str) -> int:
    """The input size of timm's default pretrained configuration for `name`."""
    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def cached_weights(name: str) -> Path | None:
    """The path of `name`'s pretrained weights in a local cache, or None if they are not there."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if candidate.is_file():
            return candidate
    return None


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached now (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def create_timm_model(name: str, num_classes: int, image_size: int | None, in_channels: int,
                      pretrained: bool, allow_random_init: bool) -> nn.Module:
    """Build timm model `name` with the given classes, input size and channels, ready for DP-SGD."""
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_channels}
    load_weights = False
    if pretrained:
        local = cached_weights(name)
        if local is not None:
            load_weights = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
        elif hub_reachable():
            load_weights = True
        elif allow_random_init:
            warnings.warn(f"pretrained weights for {name} are not in the local cache and the hub "
                          f"({HUB_HOST}) cannot be reached: continuing with RANDOM initialisation",
                          stacklevel=3)
        else:
            raise DpbenchError(f"pretrained weights for {name} are not in the local cache and the hub "
                               f"({HUB_HOST}) cannot be reached; run once on a machine with a network to "
                               f"fill the cache, or allow random initialisation")
    model = _build(name, load_weights, image_size, kwargs)
    return disable_inplace(replace_batchnorm(model))


def _build(name: str, pretrained: bool, image_size: int | None, kwargs: dict) -> nn.Module:
    """timm.create_model with img_size when the model takes it (fully convolutional ones do not)."""
    try:
        if image_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except DpbenchError:
        raise
    except Exception as err:  # timm raises assorted types for unsupported settings or failed loads
        raise DpbenchError(f"timm could not build {name} (image size {image_size}, "
                           f"pretrained={pretrained}): {type(err).__name__}: {err}") from err
