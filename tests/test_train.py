"""DP training: learning within the ε budget, Poisson batches, resume after a kill, clear errors."""

import json
from pathlib import Path

import pytest
import torch

import dpbench.train as train_module
from dpbench.cli import main
from dpbench.errors import DpbenchError
from dpbench.sampling import epoch_plan, physical_batches, steps_per_epoch
from dpbench.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def digits_config(tmp_path: Path, **changes) -> TrainConfig:
    """A small real-data run: the tanh CNN on scikit-learn's 8x8 digits (1437 train, 360 test images)."""
    options = dict(model="cnn", dataset="digits", algorithm="mixed_ghost", noise_multiplier=1.0, accountant="rdp",
                   epochs=1, batch_size=256, physical_batch_size=64, lr=0.2, max_grad_norm=1.0, threads=1,
                   progress=False, out=str(tmp_path / "result.json"))
    options.update(changes)
    return TrainConfig(**options)


def test_dp_run_learns_within_the_target_epsilon(tmp_path):
    config = digits_config(tmp_path, noise_multiplier=None, epsilon=3.0, accountant="prv", epochs=2, batch_size=128)
    result = train(config)
    assert result["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert 3.0 - 0.01 < result["epsilon"] <= 3.0
    assert result["steps"] == result["planned_steps"] == 2 * steps_per_epoch(1437, 128)
    written = json.loads(Path(config.out).read_text())
    for key in ["test_accuracy", "epsilon", "delta", "noise_multiplier", "steps", "wall_time_s", "dataset",
                "sampling", "sampling_rate", "accountant", "history", "config", "environment"]:
        assert key in written, key
    assert written["dataset"] == "digits" and written["private"] is True
    assert written["sampling_rate"] == pytest.approx(128 / 1437)
    assert written["config"]["algorithm"] == "mixed_ghost"
    assert written["environment"]["seed"] == 0 and written["environment"]["torch"] == torch.__version__
    # the first physical batch checked against brute force, before the engine was attached
    assert written["verified"]["status"] == "exact" and written["verified"]["samples"] == 4
    assert written["verified"]["seconds"] > 0


def test_nonprivate_run_reports_no_epsilon(tmp_path):
    result = train(digits_config(tmp_path, algorithm="nonprivate", noise_multiplier=None))
    assert result["private"] is False and result["epsilon"] is None and result["noise_multiplier"] is None
    assert "no privacy guarantee" in result["notes"][0]
    assert result["verified"]["status"] == "skipped"


def test_verification_leaves_the_run_unchanged(tmp_path):
    """The check runs on copies with the random state restored: a run with it and one without (--no-verify)
    train the same model."""
    checked = train(digits_config(tmp_path / "a", train_size=256, batch_size=64))
    unchecked = train(digits_config(tmp_path / "b", train_size=256, batch_size=64, verify=False))
    assert checked["verified"]["status"] == "exact"
    assert unchecked["verified"] == {**unchecked["verified"], "status": "skipped", "why": "disabled by --no-verify"}
    assert checked["history"][-1]["train_loss"] == unchecked["history"][-1]["train_loss"]
    a = torch.load(tmp_path / "a" / "result.ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "result.ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shuffled_batches_are_labelled_as_not_matching_the_accountant(tmp_path):
    result = train(digits_config(tmp_path, sampling="shuffle"))
    assert result["steps"] == steps_per_epoch(1437, 256)
    assert any("does NOT match" in note for note in result["notes"])


def test_loader_workers_give_the_same_run(tmp_path):
    in_process = train(digits_config(tmp_path / "a"))
    with_workers = train(digits_config(tmp_path / "b", num_workers=1))
    # same batches, same noise: equal up to float rounding (BLAS kernels may round differently with the
    # buffers' alignment, which depends on the allocation history of the process)
    for key in ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]:
        assert with_workers["history"][-1][key] == pytest.approx(in_process["history"][-1][key], rel=1e-6), key


def test_training_subset_sets_the_sampling_rate(tmp_path):
    result = train(digits_config(tmp_path, train_size=512, batch_size=128))
    assert result["train_size"] == 512 and result["sampling_rate"] == 128 / 512
    assert result["steps"] == 4 and "subset of 512" in result["dataset_description"]


def test_empty_poisson_batch_is_a_noise_only_or_skipped_step(tmp_path, monkeypatch):
    real_plan = train_module.epoch_plan

    def plan_with_an_empty_batch(*args):
        plan = real_plan(*args)
        return plan[:1] + [torch.empty(0, dtype=torch.int64)] + plan[2:]

    monkeypatch.setattr(train_module, "epoch_plan", plan_with_an_empty_batch)
    for algorithm, sigma in [("mixed_ghost", 1.0), ("nonprivate", None)]:
        result = train(digits_config(tmp_path / algorithm, algorithm=algorithm, noise_multiplier=sigma))
        assert result["steps"] == steps_per_epoch(1437, 256)


def test_poisson_batches_vary_in_size_and_can_be_empty():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in epoch_plan(1000, 20, "poisson", generator)]
    assert len(sizes) == 50 and len(set(sizes)) > 5
    assert 15 < sum(sizes) / len(sizes) < 25
    tiny = [len(b) for b in epoch_plan(1000, 1, "poisson", generator)]
    assert 0 in tiny and max(tiny) >= 2
    assert physical_batches(torch.empty(0, dtype=torch.int64), 8) == []
    assert [len(c) for c in physical_batches(torch.arange(20), 8)] == [8, 8, 4]
    shuffled = torch.cat(epoch_plan(103, 10, "shuffle", generator))
    assert sorted(shuffled.tolist()) == list(range(103))


def test_resume_after_a_kill_continues_exactly(tmp_path):
    uninterrupted = train(digits_config(tmp_path / "a", epochs=3))

    class Killed(Exception):
        pass

    def kill_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Killed

    config = digits_config(tmp_path / "b", epochs=3, resume=True)
    with pytest.raises(Killed):
        train(config, on_epoch_end=kill_after_first_epoch)
    assert torch.load(config.checkpoint_path(), weights_only=False)["epoch"] == 1
    resumed = train(config)
    assert resumed["resumes"] == 1
    assert resumed["steps"] == uninterrupted["steps"]
    assert resumed["epsilon"] == uninterrupted["epsilon"]
    assert resumed["test_accuracy"] == uninterrupted["test_accuracy"]
    params_a = torch.load(Path(tmp_path / "a" / "result.ckpt.pt"), weights_only=False)["model"]
    params_b = torch.load(config.checkpoint_path(), weights_only=False)["model"]
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    with pytest.raises(DpbenchError, match="different run.*lr"):
        train(digits_config(tmp_path / "b", epochs=3, resume=True, lr=0.1))


@pytest.mark.parametrize("argv, message", [
    (["--algorithm", "fancy"], "--algorithm 'fancy' is not one of"),
    (["--epsilon", "3", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    ([], "needs exactly one of --epsilon"),
    (["--algorithm", "nonprivate", "--epsilon", "3"], "adds no noise"),
    (["--epsilon", "3", "--model", "resnet19"], "did you mean"),
    (["--epsilon", "3", "--precision", "bf16", "--device", "cpu"], "CUDA only"),
    (["--epsilon", "3", "--dataset", "mnistt"], "unknown dataset 'mnistt'"),
    (["--epsilon", "3", "--batch-size", "5000"], "exceeds the 1437 training examples"),
    (["--epsilon", "3", "--train-size", "2000"], "--train-size 2000 exceeds the 1437"),
    (["--epsilon", "3", "--train-size", "0"], "--train-size must be at least 1"),
    (["--lr", "abc"], "invalid float value: 'abc'"),
])
def test_bad_input_is_one_clear_line_and_exit_2(argv, message, capsys, tmp_path):
    code = run_cli(["train", "--dataset", "digits", "--out", str(tmp_path / "r.json"), "--no-progress"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err


def run_cli(argv: list[str]) -> int:
    """The exit code of `dpbench ARGV` run in this process (argparse errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_config_file_unknown_key_and_bad_type(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epsilon: 3\nlearning_rate: 0.1\n")
    assert run_cli(["train", "--config", str(bad)]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err
    bad.write_text("epsilon: three\n")
    assert run_cli(["train", "--config", str(bad)]) == 2
    assert "epsilon must be float" in capsys.readouterr().err


def test_fashion_mnist_recipe_is_a_valid_config():
    from dpbench.cli import build_parser
    from dpbench.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--config", str(ROOT / "config" / "fmnist_recipe.yaml")])
    config = config_from_args(args)
    config.validate()
    assert (config.model, config.epsilon, config.delta) == ("cnn_mnist", 3.0, 1e-5)


def test_private_fine_tuning_of_a_saved_checkpoint_leaves_frozen_weights_bit_identical(tmp_path):
    """Train non-privately, save the weights (safetensors), fine-tune privately with the convolutional
    backbone frozen: the frozen weights come out bit-identical, the rest moved."""
    from safetensors.torch import save_file

    pretrain = train(digits_config(tmp_path / "pre", algorithm="nonprivate", noise_multiplier=None, epochs=3,
                                   batch_size=64, optimizer="adam", lr=0.003))
    weights = torch.load(tmp_path / "pre" / "result.ckpt.pt", weights_only=False)["model"]
    save_file(weights, tmp_path / "pretrained.safetensors")
    config = digits_config(tmp_path / "fine", noise_multiplier=None, epsilon=3.0, accountant="gdp",
                           pretrained_file=str(tmp_path / "pretrained.safetensors"), freeze=["features.*"])
    result = train(config)
    tuned = torch.load(config.checkpoint_path(), weights_only=False)["model"]
    frozen = [k for k in weights if k.startswith("features.")]
    assert frozen and result["frozen"] == frozen
    assert all(torch.equal(weights[k], tuned[k]) for k in frozen)
    assert not all(torch.equal(weights[k], tuned[k]) for k in weights if k not in frozen)
    assert result["trainable_parameters"] + result["frozen_parameters"] == sum(v.numel() for v in weights.values())
    assert pretrain["test_accuracy"] > 0.8 and result["test_accuracy"] > 0.6  # it started from the checkpoint
    # σ was calibrated by GDP; the result gives ε by every accountant for the same run
    assert result["epsilon"] == result["epsilon_by_accountant"]["gdp"] <= 3.0
    assert result["epsilon_by_accountant"]["prv"] > result["epsilon"]
    assert any("gdp accountant" in note for note in result["notes"])


def test_validation_split_is_held_out_and_the_same_for_every_seed(tmp_path):
    config = digits_config(tmp_path, validation_size=300, train_range="100:1437")
    data = train_module.load_training_data(config)
    again = train_module.load_training_data(digits_config(tmp_path, validation_size=300, train_range="100:1437",
                                                          seed=5))
    assert len(data.train) == 1037 and len(data.validation) == 300
    assert torch.equal(data.validation.tensors[0], again.validation.tensors[0])
    train_rows = {tuple(x.flatten().tolist()) for x in data.train.tensors[0]}
    assert not any(tuple(x.flatten().tolist()) in train_rows for x in data.validation.tensors[0][:50])
    result = train(config)
    assert result["validation_size"] == 300 and 0 < result["validation_accuracy"] <= 1
    assert "validation_accuracy" in result["history"][-1] and "examples 100:1437" in result["dataset_description"]


@pytest.mark.parametrize("argv, message", [
    (["--train-range", "5:2"], "--train-range '5:2' needs 0 <= START < STOP"),
    (["--train-range", "0:5000"], "--train-range 0:5000 exceeds the 1437"),
    (["--validation-size", "1437"], "--validation-size 1437 leaves no training example"),
    (["--freeze", "conv*"], "--freeze pattern conv* matches no parameter of TanhCNN"),
    (["--pretrained", "--pretrained-file", "w.pt"], "exclude each other"),
    (["--pretrained-file", "absent.safetensors"], "absent.safetensors: no such file"),
    (["--accountant", "moments"], "--accountant 'moments' is not one of: prv, rdp, gdp"),
    (["--model", "beit_base_patch16_224", "--image-size", "32", "--algorithm", "opacus"],
     "Opacus cannot compute per-sample gradients of module 'Beit'"),  # never a parameter trained on noise alone
])
def test_fine_tuning_options_bad_input_is_one_line(argv, message, capsys, tmp_path):
    code = run_cli(["train", "--dataset", "digits", "--epsilon", "3", "--out", str(tmp_path / "r.json"),
                    "--no-progress"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_pattern_options_from_the_command_line_and_the_config_file(tmp_path):
    from dpbench.cli import build_parser
    from dpbench.commands.train import config_from_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("freeze: ['*cls_token', 'blocks.*.attn.qkv.weight']\ntrain-only: '*.bias'\n")
    args = build_parser().parse_args(["train", "--config", str(recipe), "--epsilon", "1"])
    config = config_from_args(args)
    assert config.freeze == ["*cls_token", "blocks.*.attn.qkv.weight"] and config.train_only == ["*.bias"]
    args = build_parser().parse_args(["train", "--config", str(recipe), "--train-only", "head.*", "*.bias"])
    assert config_from_args(args).train_only == ["head.*", "*.bias"]
    recipe.write_text("freeze: [1, 2]\n")
    with pytest.raises(DpbenchError, match="freeze must be a string or a list of strings"):
        config_from_args(build_parser().parse_args(["train", "--config", str(recipe)]))
