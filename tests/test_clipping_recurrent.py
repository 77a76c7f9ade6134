"""Recurrent layers (DPRNN / DPGRU / DPLSTM and their cells, on nn.Linear maps) and nn.EmbeddingBag: equal
to torch's modules, and exact per-sample clipping for every own algorithm (float64)."""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from dpbench.clipping import (DPGRU, DPLSTM, DPRNN, DPGRUCell, DPLSTMCell, DPRNNCell, PrivacyEngine, refuse_recurrent,
                              replace_recurrent)
from dpbench.errors import DpbenchError
from oracle import OWN_ALGORITHMS, check_algorithm, oracle, per_sample_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# kind -> (torch class, its extra constructor arguments)
KINDS = {"rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}), "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
         "gru": (nn.GRU, {}), "lstm": (nn.LSTM, {})}
CONFIGS = [(k, n, bi, bf) for k in KINDS for n in (1, 2) for bi in (False, True) for bf in (False, True)]


def config_id(c):
    k, n, bi, bf = c
    return f"{k}-l{n}-{'bi' if bi else 'uni'}-{'bf' if bf else 'sf'}"


@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def seeded(*key) -> torch.Generator:
    """A generator seeded from the test's key (stable across runs, unlike hash())."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def torch_module(kind, layers, bidirectional, batch_first, gen, **extra):
    cls, kwargs = KINDS[kind]
    d, h = 2 + int(torch.randint(3, (), generator=gen)), 3 + int(torch.randint(3, (), generator=gen))
    module = cls(d, h, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **kwargs, **extra)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return module


def as_tuple(h):
    return h if isinstance(h, tuple) else (h,)


def sequence(module, B, T, gen):
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    return torch.randn(shape, generator=gen)


def initial_state(module, B, gen):
    states = module.num_layers * (2 if module.bidirectional else 1)
    h = torch.randn(states, B, module.proj_size or module.hidden_size, generator=gen)
    if module.mode == "LSTM":
        return h, torch.randn(states, B, module.hidden_size, generator=gen)
    return h


def outputs_and_grads(module, x, hx, names):
    """Output, final states and the gradients of a nonlinear loss of them w.r.t. the parameters (torch's
    names) and the input."""
    if isinstance(x, PackedSequence):
        data = x.data.detach().requires_grad_()
        x = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = data = x.detach().requires_grad_()
    out, h = module(x, hx)
    out_t = out.data if not isinstance(out, torch.Tensor) else out
    states = as_tuple(h)
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view(t.shape)).sum() + t.pow(2).sum()
               for t in (out_t, *states))
    params = [getattr(module, n) for n in names]
    grads = torch.autograd.grad(loss, params + [data])
    return [out_t, *states], grads


def assert_close(a, b, what):
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, f"{what}[{i}]: shape {tuple(u.shape)} vs {tuple(v.shape)}"
        torch.testing.assert_close(u, v, rtol=1e-11, atol=1e-12, msg=f"{what}[{i}]")


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_matches_torch(config):
    kind, layers, bi, bf = config
    gen = seeded("torch", config)
    ref = torch_module(kind, layers, bi, bf, gen)
    dp = replace_recurrent(copy.deepcopy(ref))
    assert type(dp) is {nn.RNN: DPRNN, nn.GRU: DPGRU, nn.LSTM: DPLSTM}[type(ref)]
    names = ref._flat_weights_names
    B, T = 2 + int(torch.randint(3, (), generator=gen)), 1 + int(torch.randint(5, (), generator=gen))
    x = sequence(ref, B, T, gen)
    for hx in (None, initial_state(ref, B, gen)):
        got, got_grads = outputs_and_grads(dp, x, hx, names)
        want, want_grads = outputs_and_grads(ref, x, hx, names)
        assert_close(got, want, "outputs")
        assert_close(got_grads, want_grads, "gradients")
    # unbatched input (torch's 2-D form)
    single = x[0] if bf else x[:, 0]
    assert_close([t for o in dp(single) for t in as_tuple(o)], [t for o in ref(single) for t in as_tuple(o)],
                 "unbatched")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
def test_packed_sequences_match_torch(kind, bi):
    gen = seeded("packed", kind, bi)
    bf = bi  # both layouts
    ref = torch_module(kind, 2, bi, bf, gen)
    dp = replace_recurrent(copy.deepcopy(ref))
    lengths = torch.tensor([3, 5, 1, 5, 2])
    x = sequence(ref, 5, 5, gen)
    packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
    got_packed, _ = dp(packed)
    want_packed, _ = ref(packed)
    assert torch.equal(got_packed.batch_sizes, want_packed.batch_sizes)
    assert torch.equal(got_packed.sorted_indices, want_packed.sorted_indices)
    assert torch.equal(got_packed.unsorted_indices, want_packed.unsorted_indices)
    for hx in (None, initial_state(ref, 5, gen)):
        got, got_grads = outputs_and_grads(dp, packed, hx, ref._flat_weights_names)
        want, want_grads = outputs_and_grads(ref, packed, hx, ref._flat_weights_names)
        assert_close(got, want, "outputs")
        assert_close(got_grads, want_grads, "gradients")
    # sorted packing (enforce_sorted=True: no indices)
    order = torch.argsort(lengths, descending=True, stable=True)
    batch = 0 if bf else 1
    packed = pack_padded_sequence(x.index_select(batch, order), lengths[order], batch_first=bf)
    assert_close(as_tuple(dp(packed)[1]), as_tuple(ref(packed)[1]), "sorted packing")


def test_lstm_projection_matches_torch_and_is_exact():
    gen = seeded("proj")
    ref = torch_module("lstm", 2, True, True, gen, proj_size=2)
    dp = DPLSTM.from_torch(ref)
    x = sequence(ref, 3, 4, gen)
    for hx in (None, initial_state(ref, 3, gen)):
        got, got_grads = outputs_and_grads(dp, x, hx, ref._flat_weights_names)
        want, want_grads = outputs_and_grads(ref, x, hx, ref._flat_weights_names)
        assert_close(got, want, "outputs")
        assert_close(got_grads, want_grads, "gradients")
    model, target = FinalStateHead(dp), torch.randint(0, 3, (3,), generator=gen)
    run_all(model, x, target)


class FinalStateHead(nn.Module):
    """A classifier over the final hidden states of every layer and direction. Its input is batch-first
    (the brute force vmaps it over samples); a sequence-first recurrent module gets it transposed."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        states = rnn.num_layers * (2 if rnn.bidirectional else 1)
        self.head = nn.Linear(states * (rnn.proj_size or rnn.hidden_size), 3)

    def forward(self, x):
        _, h = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        h = as_tuple(h)[0]
        return self.head(h.transpose(0, 1).flatten(1))


class PackedHead(FinalStateHead):
    """The same over sequences of unequal lengths (a buffer), packed inside forward."""

    def __init__(self, rnn, lengths):
        super().__init__(rnn)
        self.register_buffer("lengths", lengths)

    def forward(self, x):
        return self.run(x, self.lengths)

    def run(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        return self.head(as_tuple(h)[0].transpose(0, 1).flatten(1))

    def sample(self, x, i):
        return self.run(x[i:i + 1], self.lengths[i:i + 1])


def loop_reference(model, x, target):
    """Brute-force per-sample gradients, one autograd call per sample through `model.sample(x, i)` (for
    inputs that vmap cannot cut into samples: packed lengths, EmbeddingBag offsets)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = {n: [] for n in params}
    for i in range(target.shape[0]):
        loss = per_sample_loss(model.sample(x, i), target[i:i + 1])[0]
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, p), g in zip(params.items(), grads):
            rows[n].append(torch.zeros_like(p) if g is None else g)
    return {n: torch.stack(v) for n, v in rows.items()}


def run_all(model, x, target, reference=None):
    reference = reference if reference is not None else oracle(model, x, target)
    return [check_algorithm(model, x, target, a, rtol=1e-9, reference=reference) for a in OWN_ALGORITHMS]


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_algorithm_is_exact(config):
    kind, layers, bi, bf = config
    gen = seeded("engine", config)
    dp = replace_recurrent(torch_module(kind, layers, bi, bf, gen))
    B, T = 3, 1 + int(torch.randint(4, (), generator=gen))
    x = torch.randn(B, T, dp.input_size, generator=gen)
    engines = run_all(FinalStateHead(dp), x, torch.randint(0, 3, (B,), generator=gen))
    report = {r["name"]: r for r in engines[0].layer_report}
    # every map is a Linear layer; the hidden-state maps are called once per time step
    assert report["rnn.hh_l0"]["rule"] == "LinearRule" and report["rnn.hh_l0"]["calls"] == T
    assert not any(r["path"] == "replay" for r in report.values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
def test_packed_sequences_every_algorithm_is_exact(kind, bi):
    gen = seeded("packed-engine", kind, bi)
    dp = replace_recurrent(torch_module(kind, 2, bi, True, gen))
    lengths = torch.tensor([2, 4, 1, 3])
    model = PackedHead(dp, lengths)
    x = torch.randn(4, 4, dp.input_size, generator=gen)
    target = torch.randint(0, 3, (4,), generator=gen)
    run_all(model, x, target, reference=loop_reference(model, x, target))


def test_mixed_choice_per_layer():
    """A long sequence makes the hidden maps instantiate and the short-input head ghost, in one run."""
    gen = seeded("mixed")
    dp = DPGRU(2, 3, batch_first=True)
    x = torch.randn(3, 9, 2, generator=gen)
    engines = run_all(FinalStateHead(dp), x, torch.randint(0, 3, (3,), generator=gen))
    choices = {r["name"]: r["choice"] for r in engines[OWN_ALGORITHMS.index("mixed_ghost")].layer_report}
    assert choices["rnn.hh_l0"] == "instantiate" and choices["head"] == "ghost"


def test_dropout_between_layers_in_training():
    """Inter-layer dropout lies outside the Linear maps: with the same random draws every algorithm gets
    the same norms, and without clipping the plain gradient."""
    dp = DPLSTM(3, 4, num_layers=2, dropout=0.5, batch_first=True).train()
    model = FinalStateHead(dp)
    gen = seeded("dropout")
    x, target = torch.randn(4, 3, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    torch.manual_seed(1)
    plain = torch.autograd.grad(per_sample_loss(model(x), target).sum(), list(model.parameters()))
    norms = []
    for algorithm in OWN_ALGORITHMS:
        work = copy.deepcopy(model)
        engine = PrivacyEngine(work, algorithm=algorithm, max_grad_norm=1e10)
        torch.manual_seed(1)
        engine.backward(per_sample_loss(work(x), target))
        norms.append(engine.per_sample_norms)
        for p, g in zip(work.parameters(), plain):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        engine.detach()
    for n in norms[1:]:
        torch.testing.assert_close(n, norms[0], rtol=1e-10, atol=0)
    dp.eval()
    ref = dp.to_torch().eval()
    assert_close(as_tuple(dp(x)[1]), as_tuple(ref(x)[1]), "eval mode")


def test_torch_names_and_state_dicts():
    gen = seeded("names")
    ref = torch_module("lstm", 2, True, False, gen)
    dp = DPLSTM(ref.input_size, ref.hidden_size, num_layers=2, bidirectional=True)
    dp.load_state_dict(ref.state_dict())  # strict: torch's names load
    assert list(dp.state_dict()) == list(ref.state_dict())
    for name in ref._flat_weights_names:
        assert torch.equal(getattr(dp, name), getattr(ref, name))
    assert dp.weight_hh_l1_reverse is dp.hh_l1_reverse.weight
    # every parameter is registered once, in its Linear
    params = list(dp.named_parameters(remove_duplicate=False))
    assert len(params) == len({id(p) for _, p in params}) == len(ref._flat_weights_names)
    assert all(n.split(".")[0] in dict(dp.named_children()) for n, _ in params)
    dp.load_state_dict(dp.state_dict())
    back = nn.LSTM(ref.input_size, ref.hidden_size, num_layers=2, bidirectional=True)
    back.load_state_dict(dp.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), ref.parameters()))
    # internal names load too, and a nested model's keys are torch's under the module's prefix
    dp.load_state_dict({k: v for k, v in dict(dp.named_parameters()).items()})
    outer = nn.Sequential(nn.Identity(), dp)
    assert "1.weight_ih_l0_reverse" in outer.state_dict()
    outer.load_state_dict(outer.state_dict())
    assert torch.equal(dp.to_torch().weight_ih_l1, ref.weight_ih_l1)
    # torch's attribute assignment lands in the Linear
    new = nn.Parameter(torch.zeros_like(dp.weight_ih_l0))
    dp.weight_ih_l0 = new
    assert dp.ih_l0.weight is new and "weight_ih_l0" not in dp._parameters
    # requires_grad flags carry over
    ref.weight_hh_l0.requires_grad_(False)
    assert not DPLSTM.from_torch(ref).hh_l0.weight.requires_grad
    assert len(dp.all_weights) == 4 and len(dp.all_weights[0]) == 4


def test_constructor_arguments_like_torch():
    rnn = DPRNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert (rnn.mode, rnn.bias, rnn.batch_first, rnn.bidirectional) == ("RNN_RELU", False, True, True)
    assert not any(n.endswith("bias") for n, _ in rnn.named_parameters())
    with pytest.raises(ValueError, match="nonlinearity"):
        DPRNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size"):
        DPLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="dropout"):
        DPGRU(3, 4, dropout=1.5)
    with pytest.raises(RuntimeError, match="input_size"):
        DPGRU(3, 4)(torch.randn(2, 2, 5))
    with pytest.raises(RuntimeError, match="Expected hidden"):
        DPGRU(3, 4)(torch.randn(2, 2, 3), torch.zeros(1, 3, 4))
    x = torch.randn(5, 2, 3)
    for stdv_module in (DPLSTM(3, 16), DPGRU(3, 16)):  # torch's initialisation: ±1/√hidden
        assert max(p.abs().max() for p in stdv_module.parameters()) <= 0.25
        stdv_module(x)


CELLS = {"rnn_tanh": (nn.RNNCell, {"nonlinearity": "tanh"}), "rnn_relu": (nn.RNNCell, {"nonlinearity": "relu"}),
         "gru": (nn.GRUCell, {}), "lstm": (nn.LSTMCell, {})}


class CellLoop(nn.Module):
    """A recurrence written with a cell, one call per time step, then a Linear head."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.head(as_tuple(state)[0])


@pytest.mark.parametrize("kind", CELLS)
def test_cells_match_torch_and_are_exact(kind):
    gen = seeded("cell", kind)
    cls, kwargs = CELLS[kind]
    ref = cls(3, 4, **kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    dp = replace_recurrent(copy.deepcopy(ref))
    assert type(dp) is {nn.RNNCell: DPRNNCell, nn.GRUCell: DPGRUCell, nn.LSTMCell: DPLSTMCell}[cls]
    assert list(dp.state_dict()) == list(ref.state_dict())
    names = list(ref.state_dict())
    x = torch.randn(3, 3, generator=gen)
    h = torch.randn(3, 4, generator=gen)
    for inputs in ((x,), (x, (h, 2 * h) if kind == "lstm" else h), (x[0],)):
        leaf = inputs[0].detach().requires_grad_()
        got, want = as_tuple(dp(leaf, *inputs[1:])), as_tuple(ref(leaf, *inputs[1:]))
        assert_close(got, want, "outputs")
        weights = torch.linspace(-1, 1, got[0].numel()).view(got[0].shape)
        grads = [torch.autograd.grad(sum((t * weights).sum() + t.pow(2).sum() for t in out),
                                     [getattr(m, n) for n in names] + [leaf])
                 for m, out in ((dp, got), (ref, want))]
        assert_close(grads[0], grads[1], "gradients")
    engines = run_all(CellLoop(dp), torch.randn(3, 4, 3, generator=gen), torch.randint(0, 3, (3,), generator=gen))
    assert {r["name"]: r["calls"] for r in engines[0].layer_report}["cell.hh"] == 4


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.rnn = nn.LSTM(3, 4, batch_first=True)

    def forward(self, idx):
        return self.rnn(self.embed(idx))[1][0][-1]


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = Encoder()
        self.gru = nn.GRU(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, idx):
        return self.head(self.enc(idx))


def test_replace_and_refuse_recurrent():
    model = Classifier()
    with pytest.raises(DpbenchError) as err:
        refuse_recurrent(model)
    message = str(err.value)
    assert "\n" not in message and message.startswith("module 'enc.rnn' is nn.LSTM,")
    assert "dpbench.clipping.replace_recurrent(model)" in message
    with pytest.raises(DpbenchError, match="module 'LSTM' is nn.LSTM"):
        refuse_recurrent(nn.LSTM(2, 3))
    frozen = Classifier().requires_grad_(False)
    refuse_recurrent(frozen)  # frozen recurrent layers need no per-sample gradients
    idx = torch.randint(0, 10, (3, 5))
    before = model(idx)
    assert replace_recurrent(model) is model
    assert isinstance(model.enc.rnn, DPLSTM) and isinstance(model.gru, DPGRU)
    refuse_recurrent(model)
    torch.testing.assert_close(model(idx), before, rtol=1e-12, atol=1e-12)
    run_all(model, idx, torch.randint(0, 3, (3,)))
    assert isinstance(replace_recurrent(nn.RNN(2, 3)), DPRNN)

    cells = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.GRUCell(2, 3)))
    with pytest.raises(DpbenchError, match="module '1.0' is nn.GRUCell"):
        refuse_recurrent(cells)
    replace_recurrent(cells)
    assert isinstance(cells[1][0], DPGRUCell)

    class OwnForward(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x.flip(1), hx)

    holder = nn.Sequential(OwnForward(2, 3))
    with pytest.raises(DpbenchError, match="module '0' is OwnForward"):
        replace_recurrent(holder)


# ---- EmbeddingBag ------------------------------------------------------------------------------

class BagHead(nn.Module):
    """EmbeddingBag then a Linear head. `offsets` / `weights` (buffers, None: 2-D input) go with forward's
    input; `sample(x, i)` runs bag i alone for the brute force."""

    def __init__(self, offsets=None, weights=None, twice=False, **bag):
        super().__init__()
        self.bag = nn.EmbeddingBag(9, 4, **bag)
        self.head = nn.Linear(4, 3)
        self.twice = twice
        self.register_buffer("offsets", offsets)
        self.register_buffer("weights", weights)

    def forward(self, x):
        if self.offsets is None and self.weights is None:
            out = self.bag(x)
            if self.twice:  # a second call: per-sample gradients add up
                out = out * self.bag(x.flip(1))
        elif self.offsets is None:
            out = self.bag(x, per_sample_weights=self.weights)
        else:
            out = self.bag(x, self.offsets, self.weights)
        return self.head(out)

    def sample(self, x, i):
        if self.offsets is None:
            w = None if self.weights is None else self.weights[i:i + 1]
            return self.head(self.bag(x[i:i + 1], per_sample_weights=w))
        bags = self.offsets.shape[0] - (1 if self.bag.include_last_offset else 0)
        ends = torch.cat([self.offsets[1:], torch.tensor([x.shape[0]])])
        start, end = int(self.offsets[i]), int(ends[i])
        off = torch.tensor([0, end - start]) if self.bag.include_last_offset else torch.tensor([0])
        w = None if self.weights is None else self.weights[start:end]
        assert i < bags
        return self.head(self.bag(x[start:end], off, w))


BAG_CASES = [(mode, pad) for mode in ("sum", "mean", "max") for pad in (None, 2)]


@pytest.mark.parametrize("mode,pad", BAG_CASES)
def test_embedding_bag_2d(mode, pad):
    gen = seeded("bag2d", mode, pad)
    x = torch.randint(0, 9, (5, 4), generator=gen)
    x[1] = 2  # a bag of padding only
    target = torch.randint(0, 3, (5,), generator=gen)
    run_all(BagHead(mode=mode, padding_idx=pad), x, target)
    run_all(BagHead(mode=mode, padding_idx=pad, twice=True), x, target)
    if mode == "sum":
        model = BagHead(weights=torch.randn(5, 4, generator=gen), mode=mode, padding_idx=pad)
        run_all(model, x, target, reference=loop_reference(model, x, target))


@pytest.mark.parametrize("last", [False, True], ids=["offsets", "include_last_offset"])
@pytest.mark.parametrize("mode,pad", BAG_CASES)
def test_embedding_bag_offsets(mode, pad, last):
    gen = seeded("bag1d", mode, pad, last)
    x = torch.randint(0, 9, (11,), generator=gen)
    x[3] = x[4] = 5  # a repeated index in one bag
    starts = [0, 3, 6, 6, 7]  # bag 2 is empty; B = 5 != 11 indices
    offsets = torch.tensor(starts + [11] if last else starts)
    target = torch.randint(0, 3, (5,), generator=gen)
    weights = torch.randn(11, generator=gen) if mode == "sum" else None
    for w in (None, weights) if weights is not None else (None,):
        model = BagHead(offsets, w, mode=mode, padding_idx=pad, include_last_offset=last)
        engines = run_all(model, x, target, reference=loop_reference(model, x, target))
        assert engines[0].layer_report[0]["rule"] == "EmbeddingBagRule"


def test_embedding_bag_in_batch_chunks(monkeypatch):
    """The engine's batch chunks slice the bags, not the 1-D indices."""
    import dpbench.clipping.own as own

    monkeypatch.setattr(own, "CHUNK_ELEMENTS", 1)
    gen = seeded("bag-chunks")
    x = torch.randint(0, 9, (11,), generator=gen)
    offsets = torch.tensor([0, 2, 5, 5, 9])
    target = torch.randint(0, 3, (5,), generator=gen)
    for mode, w in (("sum", torch.randn(11, generator=gen)), ("mean", None), ("max", None)):
        model = BagHead(offsets, w, mode=mode, padding_idx=1)
        run_all(model, x, target, reference=loop_reference(model, x, target))


def test_embedding_bag_refusals():
    for kwargs, words in (({"scale_grad_by_freq": True}, "scale_grad_by_freq"), ({"sparse": True}, "sparse")):
        with pytest.raises(DpbenchError, match=words):
            PrivacyEngine(BagHead(**kwargs), algorithm="ghost")
    # include_last_offset: torch assumes the last offset is the number of indices (its CPU kernel ignores it)
    model = BagHead(torch.tensor([0, 2, 4]), include_last_offset=True)
    engine = PrivacyEngine(model, algorithm="ghost")
    with pytest.raises(DpbenchError, match="last offset of 4 for 6 indices"):
        engine.backward(per_sample_loss(model(torch.arange(6)), torch.tensor([0, 1])))
