"""Recurrent layers that dpbench can clip exactly: DPRNN, DPGRU and DPLSTM, drop-ins for nn.RNN, nn.GRU
and nn.LSTM (same constructor arguments, forward and outputs; stacked, bidirectional, either layout,
projections, PackedSequence input), the cells DPRNNCell, DPGRUCell and DPLSTMCell, and the conversion of
a model's torch recurrent layers into them (replace_recurrent) or its refusal (refuse_recurrent).

torch's recurrent modules run a fused kernel whose per-sample gradients no rule can read. Here every
layer and direction owns its maps as nn.Linear submodules, `ih_l{k}[_reverse]` (input to gates, applied
once to the whole sequence [B, T, ·]), `hh_l{k}[_reverse]` (hidden state to gates, applied at every time
step to [B, H]) and, for an LSTM with proj_size, `hr_l{k}[_reverse]` (the projection, every step). The
weights are shared over the time steps, so each map's per-sample gradient is Σ_t (output gradient at
t)ᵀ(input at t): exactly what the engine's Linear rule computes for a module called several times (each
call is one Call; ghost or instantiated norms, mixed per layer). Every call sees the whole batch as its
leading dimension: sequences of unequal lengths (a PackedSequence) run every time step on every sample,
and a sample whose sequence has ended keeps its state (torch.where on a 0/1 mask), so its outputs there
get no gradient and contribute nothing.

Parameter names: named_parameters() lists the submodules' parameters (`ih_l0.weight`, ...), while the
module also answers torch's names as attributes (`weight_ih_l0`, `bias_hh_l1_reverse`, `weight_hr_l0`);
state_dict() uses torch's names in torch's order and load_state_dict() takes either, so torch checkpoints
and pretrained weight files load unchanged. Each parameter is registered once, in its Linear.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from dpbench.errors import DpbenchError

# torch's parameter names <-> (submodule, attribute): weight_ih_l0 <-> ih_l0.weight, bias_hh <-> hh.bias
_TORCH_NAME = re.compile(r"^(weight|bias)_(ih|hh|hr)((?:_l\d+)?(?:_reverse)?)$")
_INTERNAL_NAME = re.compile(r"^(ih|hh|hr)((?:_l\d+)?(?:_reverse)?)\.(weight|bias)$")
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


def _internal(name: str) -> tuple[str, str] | None:
    """(submodule, attribute) of a torch parameter name, e.g. weight_ih_l0 -> (ih_l0, weight)."""
    m = _TORCH_NAME.match(name)
    if m is None:
        return None
    kind, part, suffix = m.groups()
    return f"{part}{suffix}", kind


def _torch_name(name: str) -> str | None:
    """torch's name of a submodule parameter, e.g. ih_l0.weight -> weight_ih_l0."""
    m = _INTERNAL_NAME.match(name)
    if m is None:
        return None
    part, suffix, kind = m.groups()
    return f"{kind}_{part}{suffix}"


def _step(mode: str, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c):
    """One time step from the input's and the hidden state's gate pre-activations: (h', c' or None)."""
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None


def _check_arguments(mode: str, input_size, hidden_size, bias) -> None:
    if mode not in _GATES:
        raise ValueError(f"Unrecognized RNN mode: {mode}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    for what, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{what} must be greater than zero")


class _TorchNamed(nn.Module):
    """Parameters registered once, in nn.Linear submodules, answered and saved under torch's names."""

    _flat_weights_names: list[str]

    def reset_parameters(self) -> None:
        """torch's initialisation: every weight and bias uniform in ±1/√hidden_size."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def __getattr__(self, name: str):
        found = _internal(name)
        if found is not None and found[0] in self.__dict__.get("_modules", {}):
            return getattr(self._modules[found[0]], found[1])
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        found = _internal(name)
        if found is not None and found[0] in self.__dict__.get("_modules", {}):
            setattr(self._modules[found[0]], found[1], value)  # stays in its Linear: registered once
            return
        super().__setattr__(name, value)

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The parameters under torch's names (weight_ih_l0, ...), in torch's order."""
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        mine = {}
        for key in list(out):
            if key.startswith(prefix) and (name := _torch_name(key[len(prefix):])) is not None:
                mine[name] = out.pop(key)
        for name in self._flat_weights_names:
            out[prefix + name] = mine.pop(name)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            found = _internal(key[len(prefix):])
            if found is not None:
                state_dict[f"{prefix}{found[0]}.{found[1]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _copy_from(self, module: nn.Module) -> None:
        with torch.no_grad():
            for name in self._flat_weights_names:
                ours, theirs = getattr(self, name), getattr(module, name)
                ours.copy_(theirs)
                ours.requires_grad_(theirs.requires_grad)
        self.train(module.training)


class DPRecurrent(_TorchNamed):
    """The recurrent network of `mode` ('RNN_TANH', 'RNN_RELU', 'GRU', 'LSTM') on nn.Linear maps."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__()
        _check_arguments(mode, input_size, hidden_size, bias)
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        for what, value in (("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{what} should be of type bool, got: {type(value).__name__}")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool):
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        gates = _GATES[mode] * hidden_size
        real = proj_size or hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                width = input_size if layer == 0 else real * self.num_directions
                self.add_module("ih" + suffix, nn.Linear(width, gates, bias=bias, **factory))
                self.add_module("hh" + suffix, nn.Linear(real, gates, bias=bias, **factory))
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                if bias:
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                if proj_size:
                    self.add_module("hr" + suffix, nn.Linear(hidden_size, proj_size, bias=False, **factory))
                    names.append(f"weight_hr{suffix}")
                self._flat_weights_names.extend(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def flatten_parameters(self) -> None:
        """Nothing to do (torch's cuDNN weight packing); kept so that code calling it runs unchanged."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        per = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        w = self._flat_weights
        return [w[i:i + per] for i in range(0, len(w), per)]

    # ---- conversion -----------------------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> DPRecurrent:
        """The equivalent of a torch nn.RNN / nn.GRU / nn.LSTM: same configuration, weights (copied),
        requires_grad flags, device, dtype and training mode."""
        kind = _torch_kind(module)
        if kind not in (nn.RNN, nn.GRU, nn.LSTM):
            raise DpbenchError(f"{type(module).__name__} is not an nn.RNN, nn.GRU or nn.LSTM")
        target = _DP_OF[kind]
        if cls is not DPRecurrent and cls is not target:
            raise DpbenchError(f"{cls.__name__}.from_torch got a {type(module).__name__}; use "
                               f"{target.__name__}.from_torch")
        kwargs = dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
                      bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional)
        if module.mode == "LSTM":
            kwargs["proj_size"] = module.proj_size
        if module.mode.startswith("RNN"):
            kwargs["nonlinearity"] = "tanh" if module.mode == "RNN_TANH" else "relu"
        first = next(iter(module.parameters()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warned about dropout with one layer already
            new = target(**kwargs, device=first.device, dtype=first.dtype)
        new._copy_from(module)
        return new

    def to_torch(self) -> nn.RNNBase:
        """The torch module with these weights (copied), e.g. for fast inference after training."""
        kwargs = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                      dropout=self.dropout, bidirectional=self.bidirectional)
        first = next(iter(self.parameters()))
        if self.mode == "LSTM":
            cls, kwargs["proj_size"] = nn.LSTM, self.proj_size
        elif self.mode == "GRU":
            cls = nn.GRU
        else:
            cls, kwargs["nonlinearity"] = nn.RNN, "tanh" if self.mode == "RNN_TANH" else "relu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = cls(self.input_size, self.hidden_size, **kwargs, device=first.device, dtype=first.dtype)
        module.load_state_dict(self.state_dict())
        for name in self._flat_weights_names:
            getattr(module, name).requires_grad_(getattr(self, name).requires_grad)
        return module.train(self.training)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=True)  # the samples in their own order
            batched = True
            steps = torch.arange(x.shape[1], device=lengths.device)
            mask = (steps.unsqueeze(0) < lengths.unsqueeze(1)).to(x.device)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{self._kind()}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            if not self.batch_first:
                x = x.transpose(0, 1)  # every Linear call gets the batch first
            mask = None
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        h0, c0 = self._initial_state(x, hx, batched)
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                out, h, c = self._direction(layer, direction, layer_input, h0[k], c0[k] if lstm else None, mask)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output, h_n = layer_input, torch.stack(h_n)
        c_n = torch.stack(c_n) if lstm else None
        if packed:
            output = _packed_like(output, lengths, input)
        else:
            if not self.batch_first:
                output = output.transpose(0, 1).contiguous()  # torch's layout, not a view
            if not batched:
                output = output.squeeze(0 if self.batch_first else 1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)

    def _kind(self) -> str:
        return {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(self.mode, self.mode)

    def _initial_state(self, x: torch.Tensor, hx, batched: bool):
        """h0 (and c0) [layers·directions, B, ·] from hx, zeros where None, checked like torch."""
        lstm = self.mode == "LSTM"
        states = self.num_layers * self.num_directions
        B = x.shape[0]
        sizes = [self.proj_size or self.hidden_size] + ([self.hidden_size] if lstm else [])
        if hx is None:
            given = [x.new_zeros(states, B, s) for s in sizes]
        else:
            given = list(hx) if lstm else [hx]
            if len(given) != len(sizes):
                raise RuntimeError(f"{self._kind()}: hx must be a tuple (h_0, c_0)" if lstm
                                   else f"{self._kind()}: hx must be a tensor")
            want = 3 if batched else 2
            if any(h.dim() != want for h in given):
                dims = ", ".join(f"{h.dim()}-D" for h in given)
                raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx should also be "
                                   f"{want}-D but got ({dims}) tensors")
            if not batched:
                given = [h.unsqueeze(1) for h in given]
            for i, (h, s) in enumerate(zip(given, sizes)):
                if tuple(h.shape) != (states, B, s):
                    label = f"hidden[{i}]" if lstm else "hidden"
                    raise RuntimeError(f"Expected {label} size {(states, B, s)}, got {list(h.shape)}")
        return given[0], (given[1] if lstm else None)

    def _direction(self, layer: int, direction: int, x: torch.Tensor, h: torch.Tensor, c, mask):
        """One layer in one direction over x [B, T, ·]: outputs [B, T, ·], last h and c."""
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        hh = self._modules["hh" + suffix]
        hr = self._modules.get("hr" + suffix)
        gi = self._modules["ih" + suffix](x)  # one call on the whole sequence
        T = x.shape[1]
        outs: list = [None] * T
        for t in (range(T - 1, -1, -1) if direction else range(T)):
            h_new, c_new = _step(self.mode, gi[:, t], hh(h), h, c)
            if hr is not None:
                h_new = hr(h_new)
            if mask is None:
                h, c, outs[t] = h_new, c_new, h_new
            else:  # a finished sequence keeps its state; its output there is 0, as torch pads it
                m = mask[:, t].unsqueeze(1)
                outs[t] = torch.where(m, h_new, h_new.new_zeros(()))
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c) if c is not None else None
        return torch.stack(outs, 1), h, c

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        for what, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, what) != default:
                s += f", {what}={getattr(self, what)}"
        return s


def _packed_like(output: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """The padded output [B, T, ·] (samples in their own order) packed like the input sequence."""
    order = like.sorted_indices
    if order is not None:
        output = output.index_select(0, order)
        lengths = lengths[order.to(lengths.device)]
    data = pack_padded_sequence(output, lengths, batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class DPRNN(DPRecurrent):
    """nn.RNN (tanh or relu) on nn.Linear maps; see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)
        self.nonlinearity = nonlinearity


class DPGRU(DPRecurrent):
    """nn.GRU on nn.Linear maps; see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)


class DPLSTM(DPRecurrent):
    """nn.LSTM (with proj_size) on nn.Linear maps; see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class DPRecurrentCell(_TorchNamed):
    """One time step of `mode` on two nn.Linear maps `ih` and `hh` (torch's weight_ih, bias_hh, ...); a
    model looping over time calls them once per step, and the Linear rule sums the steps per sample."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_arguments(mode, input_size, hidden_size, bias)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        factory = {"device": device, "dtype": dtype}
        self.ih = nn.Linear(input_size, _GATES[mode] * hidden_size, bias=bias, **factory)
        self.hh = nn.Linear(hidden_size, _GATES[mode] * hidden_size, bias=bias, **factory)
        self._flat_weights_names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
        self.reset_parameters()

    def forward(self, input: torch.Tensor, hx=None):
        kind = {"RNN_TANH": "RNNCell", "RNN_RELU": "RNNCell", "GRU": "GRUCell", "LSTM": "LSTMCell"}[self.mode]
        if input.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        lstm = self.mode == "LSTM"
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            states = [x.new_zeros(x.shape[0], self.hidden_size) for _ in range(2 if lstm else 1)]
        else:
            states = list(hx) if lstm else [hx]
            if any(h.dim() not in (1, 2) for h in states):
                raise ValueError(f"{kind}: Expected hidden to be 1D or 2D, got "
                                 f"{', '.join(f'{h.dim()}D' for h in states)} instead")
            if not batched:
                states = [h.unsqueeze(0) for h in states]
        h, c = states[0], (states[1] if lstm else None)
        h_new, c_new = _step(self.mode, self.ih(x), self.hh(h), h, c)
        if not batched:
            h_new, c_new = h_new.squeeze(0), (c_new.squeeze(0) if lstm else None)
        return (h_new, c_new) if lstm else h_new

    @classmethod
    def from_torch(cls, module: nn.RNNCellBase) -> DPRecurrentCell:
        """The equivalent of a torch nn.RNNCell / nn.GRUCell / nn.LSTMCell (weights copied)."""
        kind = _torch_kind(module)
        if kind not in (nn.RNNCell, nn.GRUCell, nn.LSTMCell):
            raise DpbenchError(f"{type(module).__name__} is not an nn.RNNCell, nn.GRUCell or nn.LSTMCell")
        target = _DP_OF[kind]
        if cls is not DPRecurrentCell and cls is not target:
            raise DpbenchError(f"{cls.__name__}.from_torch got a {type(module).__name__}; use "
                               f"{target.__name__}.from_torch")
        kwargs = {"nonlinearity": module.nonlinearity} if kind is nn.RNNCell else {}
        first = next(iter(module.parameters()))
        new = target(module.input_size, module.hidden_size, bias=module.bias, **kwargs, device=first.device,
                     dtype=first.dtype)
        new._copy_from(module)
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s


class DPRNNCell(DPRecurrentCell):
    """nn.RNNCell (tanh or relu) on nn.Linear maps."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias,
                         device, dtype)
        self.nonlinearity = nonlinearity


class DPGRUCell(DPRecurrentCell):
    """nn.GRUCell on nn.Linear maps."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)


class DPLSTMCell(DPRecurrentCell):
    """nn.LSTMCell on nn.Linear maps."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)


# torch's recurrent modules and their equivalents; a subclass is converted only if it keeps the forward
_DP_OF = {nn.RNN: DPRNN, nn.GRU: DPGRU, nn.LSTM: DPLSTM,
          nn.RNNCell: DPRNNCell, nn.GRUCell: DPGRUCell, nn.LSTMCell: DPLSTMCell}
_TORCH_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def _torch_kind(module: nn.Module) -> type | None:
    """The torch class of _DP_OF that the module is an instance of, else None."""
    return next((cls for cls in _DP_OF if isinstance(module, cls)), None)


def _described(module: nn.Module) -> str:
    kind = _torch_kind(module)
    if kind is None:
        base = "nn.RNNBase" if isinstance(module, nn.RNNBase) else "nn.RNNCellBase"
        return base if type(module).__name__ == base[3:] else f"{type(module).__name__} (an {base})"
    return f"nn.{kind.__name__}" if type(module) is kind else f"{type(module).__name__} (an nn.{kind.__name__})"


def _convert(module: nn.Module, name: str) -> nn.Module:
    kind = _torch_kind(module)
    if kind is None or type(module).forward is not kind.forward:
        raise DpbenchError(f"module '{name}' is {_described(module)} with a forward of its own, which dpbench "
                           "cannot convert; build it from dpbench.clipping's DPRNN, DPGRU, DPLSTM (or their "
                           "cells) instead")
    return _DP_OF[kind].from_torch(module)


def replace_recurrent(model: nn.Module) -> nn.Module:
    """Replace every nn.RNN / nn.GRU / nn.LSTM (and nn.RNNCell / nn.GRUCell / nn.LSTMCell) of the model by
    its DPRNN / DPGRU / DPLSTM (DPRNNCell, ...) equivalent, in place, with the same weights; returns the
    model (the converted module when the model itself is one)."""
    if isinstance(model, _TORCH_RECURRENT):
        return _convert(model, type(model).__name__)

    def walk(parent: nn.Module, path: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{path}.{name}" if path else name
            if isinstance(child, _TORCH_RECURRENT):
                setattr(parent, name, _convert(child, full))
            else:
                walk(child, full)

    walk(model, "")
    return model


def refuse_recurrent(model: nn.Module) -> None:
    """Raise a one-line DpbenchError naming the first torch recurrent module (or cell) with trainable
    parameters, with the fix (frozen ones are fine: they need no per-sample gradients)."""
    for name, module in model.named_modules():
        if isinstance(module, _TORCH_RECURRENT) and any(p.requires_grad for p in module.parameters()):
            raise DpbenchError(
                f"module '{name or type(model).__name__}' is {_described(module)}, whose per-sample gradients "
                "dpbench cannot take from the fused recurrent kernel; convert the model with "
                "dpbench.clipping.replace_recurrent(model)")
