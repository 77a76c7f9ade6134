"""nn.Conv1d/2d/3d with any stride, padding (numbers, 'same', 'valid', every padding mode), dilation
and groups. Per group g the per-sample weight gradient is G_gᵀA_g with A_g the unfolded input
(T output positions × d = C_in/groups·∏k) and G_g the output gradient (T × p = C_out/groups)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dpbench.clipping.decision import INSTANTIATE
from dpbench.clipping.layers.base import Call, LayerRule, LayerShape


def padded_input(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input with any non-zero-mode or string padding applied, and the padding left to apply."""
    nd = len(conv.kernel_size)
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return x, tuple(conv.padding)
    pad = conv._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    return x, (0,) * nd


def _zero_padded(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """The input with all of the convolution's padding applied."""
    x, padding = padded_input(conv, x)
    if any(padding):
        x = F.pad(x, [p for pp in reversed(padding) for p in (pp, pp)])
    return x


def unfold(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input [B, groups, d, T] with d = C_in/groups·∏kernel in the weight's order."""
    B, C, nd, groups = x.shape[0], x.shape[1], len(conv.kernel_size), conv.groups
    if nd == 2:  # im2col with the zero padding inside (faster than padding first: paper/engine_timings.md)
        x, padding = padded_input(conv, x)
        cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
        return cols.view(B, groups, -1, cols.shape[-1])
    x = _zero_padded(conv, x)
    for i, (k, s, dil) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation)):
        x = x.unfold(2 + i, dil * (k - 1) + 1, s)
    if any(dil > 1 for dil in conv.dilation):
        x = x[(...,) + tuple(slice(None, None, dil) for dil in conv.dilation)]
    out_shape = x.shape[2:2 + nd]
    x = x.view(B, groups, C // groups, *x.shape[2:])
    # [B, groups, C_g, O..., k...] -> [B, groups, C_g, k..., O...]
    perm = [0, 1, 2, *range(3 + nd, 3 + 2 * nd), *range(3, 3 + nd)]
    return x.permute(perm).reshape(B, groups, -1, math.prod(out_shape))


def pixel_input(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input with any non-zero padding mode applied, and the zero padding left on each dimension's
    low side (the high side's only bounds which output positions exist)."""
    nd = len(conv.kernel_size)
    if conv.padding_mode != "zeros":
        return padded_input(conv, x)[0], (0,) * nd
    pad = conv._reversed_padding_repeated_twice  # last dimension first: low, high
    return x, tuple(pad[2 * i] for i in range(nd))[::-1]


def _offset_slices(n: int, m: int, k: int, s: int, dil: int, low: int):
    """(output slice, input slice) per kernel offset along one dimension: output o meets input pixel
    o·s + j·dil - low, for the outputs whose pixel lies inside the n unpadded ones."""
    pairs = []
    for j in range(k):
        shift = j * dil - low
        first, last = max(0, -(shift // s)), min(m - 1, (n - 1 - shift) // s)  # ceil(-shift / s) for the first
        if first > last:
            continue
        start = first * s + shift
        pairs.append((slice(first, last + 1), slice(start, start + (last - first) * s + 1, s)))
    return pairs


def patch_gram(conv: nn.modules.conv._ConvNd, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """A Aᵀ per sample and group, [B, groups, T, T], without unfolding: the Gram of the input's pixels
    over channels, M = XᵀX (n×n for n unpadded positions), summed over the kernel offsets of its
    entries at the output positions' receptive-field pixels; padding pixels are zero, so their entries
    are left out. The offsets are summed one dimension at a time (k adds per dimension instead of ∏k).
    Costs n²·C instead of T²·C·∏k plus the im2col copy (`patch_gram_is_faster` compares them)."""
    x, low = pixel_input(conv, x)
    B, C, groups, nd = x.shape[0], x.shape[1], conv.groups, len(conv.kernel_size)
    spatial = tuple(x.shape[2:])
    xg = x.reshape(B, groups, C // groups, -1)
    gram = torch.matmul(xg.transpose(2, 3), xg).view(B, groups, *spatial, *spatial)
    for i in range(nd):
        pairs = _offset_slices(spatial[i], out_shape[i], conv.kernel_size[i], conv.stride[i], conv.dilation[i],
                               low[i])
        shape = list(gram.shape)
        shape[2 + i] = shape[2 + nd + i] = out_shape[i]

        def index(sl, i=i):
            idx = [slice(None)] * gram.dim()
            idx[2 + i] = idx[2 + nd + i] = sl
            return tuple(idx)

        full = next((pair for pair in pairs if pair[0] == slice(0, out_shape[i])), None)  # covers every output
        if full is not None:
            summed = gram[index(full[1])].clone(memory_format=torch.contiguous_format)
        else:
            summed = gram.new_zeros(shape)
        for pair in pairs:
            if pair is not full:
                summed[index(pair[0])] += gram[index(pair[1])]
        gram = summed
    T = math.prod(out_shape)
    return gram.reshape(B, groups, T, T)


def pixel_positions(conv: nn.modules.conv._ConvNd, spatial: tuple[int, ...]) -> int:
    """n: pixels of an input of this spatial shape for the pixel Gram (non-zero padding modes are
    applied to the input; every padding form sets `_reversed_padding_repeated_twice`: last dimension
    first, low then high)."""
    if conv.padding_mode == "zeros":
        return math.prod(spatial)
    pad = conv._reversed_padding_repeated_twice
    widths = [pad[2 * i] + pad[2 * i + 1] for i in range(len(spatial))][::-1]
    return math.prod(n + w for n, w in zip(spatial, widths))


def patch_gram_is_faster(n: int, T: int, channels: int, d: int) -> bool:
    """The pixel Gram against im2col + Gram, per sample and group, in multiply-add equivalents fitted to
    `scripts/conv_routes.py` (CPU, batch 32; the timings: paper/engine_timings.md): the pixel Gram costs
    n²·C plus its n×n buffers' offset sums (~45 per entry while a sample's buffer stays within 256 KiB,
    ~400 beyond: out of cache); im2col costs T²·d plus ~127 per copied entry."""
    per_entry = 45 if n * n <= 2 ** 16 else 400
    return n * n * (channels + per_entry) <= T * T * d + 127 * T * d


def per_sample_weight_grad(conv: nn.modules.conv._ConvNd, x: torch.Tensor, g: torch.Tensor,
                           loop: bool) -> torch.Tensor:
    """[B, *weight.shape] per-sample weight gradients without unfolding, by convolution-weight
    backwards: one per sample (`loop`), or one with the batch folded into the groups (batch·groups
    groups). The only memory is the result and the convolution library's copies."""
    B = x.shape[0]
    x, padding = padded_input(conv, x)
    if loop:
        return torch.stack([weight_backward(conv, x[i:i + 1], g[i:i + 1], padding) for i in range(B)])
    grad = weight_backward(conv, x.reshape(1, -1, *x.shape[2:]), g.reshape(1, -1, *g.shape[2:]), padding,
                           groups=B * conv.groups)
    return grad.view(B, *conv.weight.shape)


def weight_backward(conv: nn.modules.conv._ConvNd, x: torch.Tensor, g: torch.Tensor, padding,
                    groups: int | None = None) -> torch.Tensor:
    """The library's weight gradient Σ over x's batch for input x (padded by `padded_input`) and output
    gradient g; `groups` other than the module's folds a batch into the groups."""
    groups = groups or conv.groups
    shape = (conv.out_channels * groups // conv.groups, *conv.weight.shape[1:])
    weight = conv.weight.new_empty(1).expand(shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(g, x, weight, None, conv.stride, padding, conv.dilation, False,
                                               [0] * len(conv.kernel_size), groups, [False, True, False])[1]


LOOP, UNFOLD, GROUPED = "loop", "unfold", "grouped"


def instantiation_route(device_type: str, s: LayerShape) -> str:
    """How to form per-sample conv weight gradients (`scripts/conv_routes.py` times all three):
    - UNFOLD + matmul where `unfold_is_faster` (few positions against d);
    - LOOP, one weight backward per sample, on CPU once a sample costs ≥ 2^25 multiply-adds (where it
      beat oneDNN's grouped convolution on CIFAR ResNet18's layers); its library copies are one
      sample's, not the batch's;
    - GROUPED otherwise, and on other devices (the loop was not measured there).
    The timings that set the threshold: paper/engine_timings.md."""
    if unfold_is_faster(s.T, s.d):
        return UNFOLD
    if device_type == "cpu" and s.T * s.p * s.d * s.groups >= 2 ** 25:
        return LOOP
    return GROUPED


def unfold_is_faster(T: int, d: int) -> bool:
    """Unfold + matmul beats both weight-backward routes for few positions against d (CPU, batch 32,
    `scripts/conv_routes.py`; the timings: paper/engine_timings.md)."""
    return 8 * T < d


def unfolded_weight_grad_is_faster(device_type: str, g: torch.Tensor) -> bool:
    """The batch's weight gradient as one matmul of the unfolded input, instead of oneDNN's weight
    backward, on CPU at ≤ 16 output positions (`scripts/conv_routes.py`, batch 32; the timings:
    paper/engine_timings.md). Other devices keep the library's (not measured)."""
    return device_type == "cpu" and math.prod(g.shape[2:]) <= 16


def grouped_grad_output(conv: nn.modules.conv._ConvNd, g: torch.Tensor) -> torch.Tensor:
    """Output gradient as [B, groups, p, T]."""
    return g.reshape(g.shape[0], conv.groups, conv.out_channels // conv.groups, -1)


class ConvRule(LayerRule):
    """Convolutions of any dimension; ghost norms and instantiation per group."""

    has_ghost = True

    def shape(self, calls):
        conv = self.module
        T = sum(math.prod(c.grads[0].shape[2:]) for c in calls)
        d = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
        return LayerShape(T, d, conv.out_channels // conv.groups, conv.groups)

    def _pixel_gram(self, calls: list[Call]) -> bool:
        """Whether the ghost norm takes A Aᵀ from the pixel Gram (one call; see `patch_gram`)."""
        if len(calls) != 1:
            return False
        x, g = calls[0].args[0], calls[0].grads[0]
        n = pixel_positions(self.module, tuple(x.shape[2:]))
        channels = self.module.in_channels // self.module.groups
        return patch_gram_is_faster(n, math.prod(g.shape[2:]), channels, channels * math.prod(self.module.kernel_size))

    def _stacked(self, calls: list[Call]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unfolded inputs [B, groups, d, T] and output gradients [B, groups, p, T], calls along T."""
        a = [unfold(self.module, c.args[0]) for c in calls]
        g = [grouped_grad_output(self.module, c.grads[0]) for c in calls]
        if len(calls) == 1:
            return a[0], g[0]
        return torch.cat(a, 3), torch.cat(g, 3)

    def _bias_grads(self, calls: list[Call]) -> torch.Tensor:
        return sum(c.grads[0].flatten(2).sum(2) for c in calls)

    def working_space(self, calls, choice):
        s = self.shape(calls)
        if choice == INSTANTIATE:
            route = instantiation_route(calls[0].args[0].device.type, s)
            if route == UNFOLD:
                return self.module.weight.numel() + s.T * s.d * s.groups
            if route == LOOP:  # the library's copies are of one sample at a time
                return self.module.weight.numel()
            # the grouped weight backward: oneDNN reorders its input and output gradient (an
            # input-sized copy each; measured in paper/engine_timings.md)
            per_sample = sum(c.args[0][0].numel() + c.grads[0][0].numel() for c in calls)
            return self.module.weight.numel() + per_sample
        if self._pixel_gram(calls):
            n = pixel_positions(self.module, tuple(calls[0].args[0].shape[2:]))
            return s.groups * (2 * n * n + 2 * s.T * s.T)  # the pixel Gram and its first offset sums
        return s.T * s.groups * (s.d + 2 * s.T)

    def instantiate(self, calls):
        out = {}
        if "weight" in self.params:
            s = self.shape(calls)
            route = instantiation_route(calls[0].args[0].device.type, s)
            if route == UNFOLD:
                a, g = self._stacked(calls)
                w = torch.matmul(g, a.transpose(2, 3))  # [B, groups, p, d], contiguous: kept by book-keeping
                out["weight"] = w.reshape(w.shape[0], *self.module.weight.shape)
            else:
                out["weight"] = sum(per_sample_weight_grad(self.module, c.args[0], c.grads[0], route == LOOP)
                                    for c in calls)
        if "bias" in self.params:
            out["bias"] = self._bias_grads(calls)
        return out

    def ghost_norm_sq(self, calls):
        total = 0
        if "weight" in self.params:
            total = self._weight_norm_sq(calls)
        if "bias" in self.params:
            total = total + self._bias_grads(calls).pow(2).sum(1)
        return total

    def _weight_norm_sq(self, calls: list[Call]) -> torch.Tensor:
        """⟨A Aᵀ, G Gᵀ⟩ summed over groups, A Aᵀ from the pixel Gram or from the unfolded input."""
        if self._pixel_gram(calls):
            aa = patch_gram(self.module, calls[0].args[0], tuple(calls[0].grads[0].shape[2:]))
            g = grouped_grad_output(self.module, calls[0].grads[0])
        else:
            a, g = self._stacked(calls)
            if a.shape[3] == 1:  # one position: ‖a‖²·‖g‖², no Gram matrices
                return (a.pow(2).sum((2, 3)) * g.pow(2).sum((2, 3))).sum(1)
            aa = torch.matmul(a.transpose(2, 3), a)
        return (aa * torch.matmul(g.transpose(2, 3), g)).sum((1, 2, 3))

    def clipped_sum(self, calls, coef):
        conv = self.module
        nd = len(conv.kernel_size)
        out = {}
        for c in calls:
            g = c.grads[0] * coef.to(c.grads[0].dtype).view(-1, *[1] * (nd + 1))
            part = {}
            if "weight" in self.params and unfolded_weight_grad_is_faster(g.device.type, g):
                w = torch.einsum("bgpt,bgdt->gpd", grouped_grad_output(conv, g), unfold(conv, c.args[0]))
                part["weight"] = w.reshape(conv.weight.shape)
            elif "weight" in self.params:
                x, padding = padded_input(conv, c.args[0])
                part["weight"] = weight_backward(conv, x, g, padding)
            if "bias" in self.params:
                part["bias"] = g.flatten(2).sum((0, 2))
            for n, v in part.items():
                out[n] = out[n] + v if n in out else v
        return out
