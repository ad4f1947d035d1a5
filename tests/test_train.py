"""`oncoseg train`: config checks, a real (tiny) LoRA run on real data with chaining and named checkpoints,
resume after a real kill, and DDP over 2 CPU processes ending with identical weights."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oncoseg.cli import main
from oncoseg.errors import OncoSegError
from oncoseg.train.phases import calibrated_epochs, load_config

TINY = """\
name: tiny
output: {output}
seed: 3
data_root: {data}
batch_size: 1
max_steps_per_epoch: {steps}
loggers: [csv]
phases:
  - name: first
    datasets: [msd-hippocampus]
    epochs: {epochs}
    val_limit: 2
"""


def write_config(folder: Path, data: Path, epochs=1, steps=2, extra_phase=False, **keys) -> Path:
    text = TINY.format(output=folder / "run", data=data, epochs=epochs, steps=steps)
    text += "".join(f"{key}: {value}\n" for key, value in keys.items())
    if extra_phase:
        text += "  - name: second\n    datasets: [msd-hippocampus]\n    epochs: 1\n    val_limit: 2\n"
    path = folder / "train.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_calibrated_epochs_follow_the_paper():
    assert [calibrated_epochs(n) for n in (10, 49, 50, 200, 201, 1000, 5000)] == [50, 50, 30, 30, 20, 15, 15]


def test_config_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\noutput: out\nlearning_rate: 3\nphases: [{name: a, datasets: [busi]}]\n", encoding="utf-8"
    )
    with pytest.raises(OncoSegError, match="unknown key.*learning_rate"):
        load_config(bad)
    bad.write_text("name: x\noutput: out\nphases: []\n", encoding="utf-8")
    with pytest.raises(OncoSegError, match="no phases"):
        load_config(bad)
    bad.write_text(
        "name: x\noutput: out\ncheckpoint_every_steps: 0\nphases: [{name: a, datasets: [busi]}]\n",
        encoding="utf-8",
    )
    with pytest.raises(
        OncoSegError, match="checkpoint_every_steps must be a whole number of at least 1, not 0"
    ):
        load_config(bad)
    for key, value, message in [
        ("batch_size", "0", "batch_size must be a whole number of at least 1, not 0"),
        ("lr", "abc", "lr must be a number of at least 1e-12, not 'abc'"),
        ("precision", "fp8", "precision must be one of auto, 32-true"),
        ("loggers", "csv", "loggers must be a list such as [csv, tensorboard], not 'csv'"),
    ]:
        bad.write_text(
            f"name: x\noutput: out\n{key}: {value}\nphases: [{{name: a, datasets: [busi]}}]\n",
            encoding="utf-8",
        )
        with pytest.raises(OncoSegError, match=re.escape(message)):
            load_config(bad)
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(OncoSegError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: x\noutput: out\nlr: 1e-4\nphases: [{name: a, datasets: [busi]}]\n", encoding="utf-8"
    )
    config = load_config(good)
    assert Path(config.output) == (tmp_path / "out").resolve()  # relative to the config file
    assert config.lr == 1e-4  # YAML reads 1e-4 as text


def test_settings_this_machine_cannot_run_are_one_line(shared_data, tmp_path, home, capsys):
    config = write_config(tmp_path, shared_data, accelerator="gpu")  # no GPU on these machines
    assert main(["train", str(config), "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("oncoseg: error: the training settings do not run here")
    assert "accelerator gpu" in errors[0]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ONCOSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_phases_chain_register_names_and_skip_when_done(shared_data, tmp_path, home, capsys):
    from oncoseg.train.checkpoints import read_index, resolve
    from oncoseg.train.lora import adapter_state

    config = write_config(tmp_path, shared_data, extra_phase=True)
    assert main(["train", str(config), "-q"]) == 0
    # trained on volumes: the run says its validation was per slice and how to check the 3D walk
    said = capsys.readouterr().out
    assert "oncoseg evaluate msd-hippocampus --checkpoint second --modes propagate" in said
    first, second = tmp_path / "run" / "01-first", tmp_path / "run" / "02-second"
    for phase in (first, second):
        assert (phase / "adapter.safetensors").exists() and (phase / "last.ckpt").exists()
        assert not list(phase.glob("best*.ckpt"))  # a finished phase keeps last.ckpt and the adapter only
        record = json.loads((phase / "done.json").read_text(encoding="utf-8"))
        assert record["epochs_run"] >= 1 and 0 <= record["best_val_dice"] <= 1
    index = read_index()
    assert set(index) == {"first", "second", "latest"}
    assert resolve("latest") == (second / "adapter.safetensors").resolve()
    assert (first / "adapter.safetensors").stat().st_size < 20e6

    # Chaining: the second phase started from the first one's weights with a fresh optimizer (its own steps only).
    state = torch.load(second / "last.ckpt", map_location="cpu", weights_only=False)
    steps = [s["step"] for s in state["optimizer_states"][0]["state"].values()]
    assert max(float(s) for s in steps) == 2  # 2 batches in its 1 epoch, nothing carried over
    from oncoseg.models.litemedsam import build_model
    from oncoseg.train.lora import load_adapter

    a, b = build_model(), build_model()
    load_adapter(a, first / "adapter.safetensors")
    load_adapter(b, second / "adapter.safetensors")
    assert any(not torch.equal(x, y) for x, y in zip(adapter_state(a).values(), adapter_state(b).values()))

    # A second call finds both phases done and trains nothing.
    began = time.perf_counter()
    assert main(["train", str(config), "-q"]) == 0
    assert time.perf_counter() - began < 30

    # The training checkpoint given where model weights are expected: one line naming the adapter to use.
    picture = next((shared_data / "kvasir-seg" / "images").glob("*.jpg"))
    capsys.readouterr()
    code = main(["segment", str(picture), "--box", "10,10,100,100", "--checkpoint", str(first / "last.ckpt"),
                 "-o", str(tmp_path / "mask.png")])  # fmt: skip
    assert code == 2 and not (tmp_path / "mask.png").exists()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and len(errors[0]) < 400, errors
    assert "expected a LoRA adapter or a full state dict, found a training checkpoint" in errors[0]
    assert str(first / "adapter.safetensors") in errors[0]

    # The named checkpoint works where users meet it.
    out = tmp_path / "eval"
    code = main(["evaluate", "msd-hippocampus", "--limit", "1", "--modes", "per_slice", "--checkpoint", "latest",
                 "--data", str(shared_data), "-o", str(out), "-q", "--no-report"])  # fmt: skip
    assert code == 0
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["checkpoint"] == "latest"
    capsys.readouterr()


def test_replay_and_wandb_offline_logging(shared_data, tmp_path, home, monkeypatch):
    """Rehearsal draws from a replayed dataset, and the W&B logger writes an offline run (no network) under the
    phase folder with the per-phase project name."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    text = TINY.format(output=tmp_path / "run", data=shared_data, epochs=1, steps=2).replace(
        "loggers: [csv]", "loggers: [csv, wandb]"
    )
    text += "    samples_per_epoch: 2\n    replay: {kvasir-seg: 0.5}\n"
    config = tmp_path / "train.yaml"
    config.write_text(text, encoding="utf-8")
    assert main(["train", str(config), "-q"]) == 0
    phase = tmp_path / "run" / "01-first"
    record = json.loads((phase / "done.json").read_text(encoding="utf-8"))
    assert record["replay"] == {"kvasir-seg": 0.5} and record["samples_per_epoch"] == 2
    runs = list((phase / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline W&B run was written"
    log = next(runs[0].glob("*.wandb")).read_bytes()  # the offline run's record stream, synced later
    assert b"val_dice" in log and b"tiny-first" in log  # the metrics, in the per-phase project

    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("0.5}", "1.5}"), encoding="utf-8")
    with pytest.raises(OncoSegError, match="replay shares"):
        load_config(bad)


def test_damaged_or_foreign_checkpoints_are_refused(shared_data, tmp_path, home, capsys):
    config = write_config(tmp_path, shared_data, epochs=2, steps=1)
    phase = tmp_path / "run" / "01-first"
    phase.mkdir(parents=True)
    (phase / "last.ckpt").write_bytes(b"not a checkpoint")
    assert main(["train", str(config), "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("oncoseg: error")]
    assert len(errors) == 1 and "damaged" in errors[0] and "last.ckpt" in errors[0]
    torch.save({"state_dict": {"model.something": torch.zeros(3)}}, phase / "last.ckpt")
    assert main(["train", str(config), "-q"]) == 2
    assert "another model or LoRA setting" in capsys.readouterr().err
    out = tmp_path / "eval"  # not the default folder, which an earlier evaluation may hold
    assert main(["evaluate", "kvasir-seg", "--checkpoint", "no-such-name", "-q", "-o", str(out)]) == 2
    assert "no checkpoint file or name" in capsys.readouterr().err


class _Keys:
    """A dataset of sample keys, to see which samples a loader hands out."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        return key


def test_loader_resumes_after_the_batches_it_handed_out():
    from oncoseg.train.phases import EpochSampler
    from oncoseg.train.resume import ResumableLoader

    def loader():
        return ResumableLoader(_Keys(), batch_size=3, sampler=EpochSampler(10, seed=1), collate_fn=list)

    first = loader()
    first.sampler.set_epoch(2)
    whole = [key for batch in first for key in batch]
    assert sorted(index for _, index in whole) == list(range(10)) and {e for e, _ in whole} == {2}
    iterator = iter(first)
    next(iterator), next(iterator)
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2}

    again = loader()
    again.load_state_dict(state)
    again.sampler.set_epoch(2)
    assert [key for batch in again for key in batch] == whole[6:]  # the rest of epoch 3, once
    assert [key for batch in again for key in batch] == whole
    other = loader()
    other.load_state_dict(state)
    other.sampler.set_epoch(3)  # the checkpoint's epoch was finished: the next one is whole
    assert len([key for batch in other for key in batch]) == 10


def _run(config: Path, env: dict, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oncoseg.cli", "train", str(config), *(options or ["-q"])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(shared_data, tmp_path):
    # one thread per run, so that the uninterrupted reference run can go alongside the killed one on 2 cores
    env = {
        **os.environ,
        "ONCOSEG_HOME": str(tmp_path / "home"),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir()
    killed_dir.mkdir()
    straight = write_config(straight_dir, shared_data, epochs=2, steps=2)
    killed = write_config(killed_dir, shared_data, epochs=2, steps=2)

    reference = _run(straight, env)
    process = _run(killed, env)
    checkpoint = killed_dir / "run" / "01-first" / "last.ckpt"
    deadline = time.time() + 600
    # Wait for the checkpoint written at the end of epoch 0, then kill during epoch 1's first steps.
    while time.time() < deadline and process.poll() is None and not checkpoint.exists():
        time.sleep(0.1)
    time.sleep(2.0)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "run" / "01-first" / "done.json").exists()

    resumed = _run(killed, env)
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-2000:]
    fingerprint = (killed_dir / "run" / "01-first" / "weights.rank0.sha256").read_text(encoding="utf-8")
    assert fingerprint == (straight_dir / "run" / "01-first" / "weights.rank0.sha256").read_text(
        encoding="utf-8"
    )


@pytest.mark.slow
def test_ddp_with_two_processes_ends_with_identical_weights(shared_data, tmp_path):
    env = {**os.environ, "ONCOSEG_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    config = write_config(tmp_path, shared_data, epochs=1, steps=2, devices=2, accelerator="cpu")
    process = _run(config, env)
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    phase = tmp_path / "run" / "01-first"
    ranks = sorted(phase.glob("weights.rank*.sha256"))
    assert [p.name for p in ranks] == ["weights.rank0.sha256", "weights.rank1.sha256"]
    assert ranks[0].read_text(encoding="utf-8") == ranks[1].read_text(encoding="utf-8")
    assert (phase / "adapter.safetensors").exists()


def _metrics(phase: Path) -> list[dict[str, str]]:
    with (phase / "logs" / "version_0" / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


PROGRESS = re.compile(
    r"step (\d+)/6  loss \d+\.\d{3}  val_dice (-|\d\.\d{3})  \d+\.\d samples/s  ETA (\d+[hms]\S*|-)"
)


def test_killed_mid_epoch_resumes_with_the_same_samples_and_losses(shared_data, tmp_path):
    """A run killed right after its first step checkpoint (mid-epoch) and run again logs the same per-step losses,
    validation and epoch means as an uninterrupted run, in one log; done.json counts both processes; piped
    output gets the plain progress line."""
    env = {
        **os.environ,
        "ONCOSEG_HOME": str(tmp_path / "home"),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    keys = {"checkpoint_every_steps": 2, "loggers": "[csv, tensorboard]"}
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    runs = {}
    for folder in (straight_dir, killed_dir):
        folder.mkdir()
        text = TINY.format(output=folder / "run", data=shared_data, epochs=2, steps=3).replace(
            "loggers: [csv]\n", ""
        )
        text = text.replace("phases:", "".join(f"{k}: {v}\n" for k, v in keys.items()) + "phases:")
        runs[folder] = folder / "train.yaml"
        runs[folder].write_text(text + "    samples_per_epoch: 6\n", encoding="utf-8")

    reference = _run(runs[straight_dir], env)
    process = _run(runs[killed_dir], env)
    phase = killed_dir / "run" / "01-first"
    checkpoint = phase / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None and not checkpoint.exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (phase / "done.json").exists()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 2}]
    assert state["global_step"] == 2  # written after batch 2 of epoch 1's 3: a mid-epoch checkpoint

    resumed = _run(runs[killed_dir], env, "--progress-every", "0")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-2000:]
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-2000:]

    # The same losses step by step, the same validation and epoch means, in one log per run.
    straight_phase = straight_dir / "run" / "01-first"
    assert _metrics(phase) == _metrics(straight_phase)
    assert len([row for row in _metrics(phase) if row["train_loss_step"]]) == 6
    for logs in ("logs", "tensorboard"):
        assert [p.name for p in (phase / logs).iterdir()] == ["version_0"]
    fingerprint = (phase / "weights.rank0.sha256").read_text(encoding="utf-8")
    assert fingerprint == (straight_phase / "weights.rank0.sha256").read_text(encoding="utf-8")

    # Time: both processes are counted.
    record = json.loads((phase / "done.json").read_text(encoding="utf-8"))
    processes = json.loads((phase / "time.json").read_text(encoding="utf-8"))["processes"]
    assert record["processes"] == len(processes) == 2
    assert record["seconds"] == pytest.approx(sum(p["seconds"] for p in processes), abs=0.2)
    assert processes[0]["seconds"] > 0

    # Piped output: the resume is announced, then one progress line per step (0 s interval) from step 3 on.
    lines = out.splitlines()
    assert "phase first: resuming from last.ckpt at step 2 (epoch 1, after batch 2 of 3)" in lines
    progress = [PROGRESS.fullmatch(line) for line in lines if line.startswith("step ")]
    assert all(progress), lines
    assert [int(m.group(1)) for m in progress] == [3, 4, 5, 6]
    assert progress[0].group(2) == "-" and progress[-1].group(2) != "-"  # val Dice once validated
