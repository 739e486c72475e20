"""The benchmark scripts run end to end on the CPU at a tiny size and print well-formed tables."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT
from torch import nn

from bench import fold_batchnorm, lightning_overhead, model_table, throughput

TINY = ["--batch-size", "2", "--img-size", "32", "--num-classes", "10", "--device", "cpu", "--precision", "fp32"]


def table_rows(table: str) -> dict[str, list[str]]:
    """First cell -> remaining cells, header and separator lines excluded."""
    lines = [line.strip("|").split("|") for line in table.strip().splitlines()[2:]]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in lines}


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x%"))


def test_throughput_table_and_results_file(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(throughput, "RESULTS_FILE", results)
    argv = [
        "--model",
        "coatnet_nano",
        "--timm-name",
        "coatnet_pico_rw_224",
        *TINY,
        "--warmup",
        "0",
        "--iters",
        "1",
        "--append-results",
    ]
    table = throughput.main(argv)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == list(throughput.COLUMNS)
    rows = table_rows(table)
    assert list(rows) == [
        "ours coatnet_nano (BN folded for inference)",
        "timm coatnet_pico_rw_224 (fused attn on)",
        "ratio ours / best timm",
    ]
    for label in list(rows)[:2]:
        train, infer, train_mem, infer_mem, gflop, train_mfu, infer_mfu = rows[label]
        assert number(train) > 0 and number(infer) > 0 and number(gflop) > 0
        assert [train_mem, infer_mem, train_mfu, infer_mfu] == ["n/a"] * 4  # CUDA-only figures
    assert number(rows["ratio ours / best timm"][0]) > 0 and number(rows["ratio ours / best timm"][1]) > 0
    written = results.read_text()
    assert "python -m bench.throughput --model coatnet_nano" in written and table in written


def test_fold_batchnorm_table():
    table = fold_batchnorm.main(["--model", "coatnet_nano", *TINY, "--warmup", "0", "--iters", "2"])
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == list(fold_batchnorm.COLUMNS)
    trained, folded, speedup, norms, difference = table_rows(table)["coatnet_nano"]
    assert number(trained) > 0 and number(folded) > 0 and number(speedup) > 0
    assert norms == "10 -> 0"  # the stem's and three per MBConv block, coatnet_nano has three
    assert float(difference) < 1e-4


def test_model_table_rows():
    table = model_table.main(["--img-size", "64", "--num-classes", "10", "--variants", "coatnet_nano", "vit_rel"])
    assert table.splitlines()[0] == model_table.HEADER
    rows = table_rows(table)
    assert list(rows) == ["`coatnet_nano`", "`vit_rel`"]
    layout, depths, widths, params, macs, activations = rows["`coatnet_nano`"]
    assert (layout, depths, widths) == ("CCTT", "1,2,2,1", "32,64,128,256")
    assert number(params) > 1e6 and number(macs.rstrip("G")) > 0 and number(activations.split()[0]) > 0


class BrokenInTraining(nn.Module):
    """Runs forward in eval mode only, to stand in for a configuration that cannot train."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("(*bias): last dimension must be contiguous\nmore detail")
        return self.fc(x.mean((2, 3)))


def test_inference_is_timed_on_the_folded_model_unless_told_otherwise():
    from coatnet import fold_batchnorm

    on = throughput.settings_from(throughput.parse_args(TINY))
    off = throughput.settings_from(throughput.parse_args(TINY + ["--no-fold-bn"]))
    assert throughput.our_candidate("coatnet_nano", on).for_inference is fold_batchnorm
    assert throughput.our_candidate("coatnet_nano", off).for_inference is None
    assert throughput.our_candidate("coatnet_nano", off).label == "ours coatnet_nano"
    stages = throughput.settings_from(throughput.parse_args(TINY + ["--no-fold-bn", "--grad-checkpointing", "0", "1"]))
    assert throughput.our_candidate("coatnet_nano", stages).label == "ours coatnet_nano (grad checkpointing S1, S2)"
    every = throughput.settings_from(throughput.parse_args(TINY + ["--grad-checkpointing"]))
    assert every.grad_checkpointing is True and on.grad_checkpointing is False
    with pytest.raises(SystemExit):  # one argparse line naming the valid models, not a traceback
        throughput.parse_args(TINY + ["--model", "coatnet_9"])
    # the phase runs on what for_inference returns: here a model that fails, unlike the trained one
    settings = throughput.settings_from(throughput.parse_args(TINY + ["--warmup", "0", "--iters", "1"]))
    candidate = throughput.Candidate(
        "linear", lambda: nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), ours=True, for_inference=lambda _: Raises()
    )
    row = throughput.benchmark(candidate, settings)
    assert row.train.images_per_s > 0 and "the inference model ran" in row.infer.error


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the inference model ran")


def test_failing_configuration_is_reported_not_raised():
    settings = throughput.settings_from(throughput.parse_args(TINY + ["--warmup", "0", "--iters", "1"]))
    row = throughput.benchmark(throughput.Candidate("broken", BrokenInTraining, ours=False), settings)
    table = throughput.format_table([row], peak_tflops=None)
    cells = table_rows(table)["broken"]
    assert cells[0] == "fails: RuntimeError: (*bias): last dimension must be contiguous"
    assert number(cells[1]) > 0


def test_lightning_overhead_table():
    argv = ["--model", "coatnet_nano", *TINY, "--warmup", "1", "--steps", "2"]
    table = lightning_overhead.main(argv)
    rows = table_rows(table)
    raw = ["raw PyTorch step, before", "raw PyTorch step, after"]
    assert list(rows) == [raw[0], "Lightning Trainer.fit", raw[1]]
    for steps_per_s, ms_per_step, images_per_s, overhead in rows.values():
        assert number(steps_per_s) > 0 and number(ms_per_step) > 0 and number(images_per_s) > 0
    # Overheads are against the faster raw block: that one reads +0.0%, the other is slower.
    assert sorted(rows[name][3] for name in raw)[0] == "+0.0%" and all(number(rows[name][3]) >= 0 for name in raw)
    assert number(rows["Lightning Trainer.fit"][3]) > -100


def test_scalars_summarises_and_exports_every_event_file(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    from bench import scalars

    run = tmp_path / "version_0"
    for part, accuracies in enumerate(([0.2, 0.5], [0.4, 0.7])):  # a resumed run writes a second file
        writer = SummaryWriter(str(run / f"part{part}"))
        for step, value in enumerate(accuracies, start=10 * part):
            writer.add_scalar("val/acc1", value, step)
        writer.add_scalar("train/images_per_sec", 100.0 + part, part)
        writer.close()
    table = scalars.main(
        [str(run), "--tags", "val/acc1", "train/images_per_sec", "missing/tag", "--csv", str(tmp_path / "c.csv")]
    )
    rows = table_rows(table)
    assert rows["val/acc1"] == ["4", "0.7000", "0.2000", "0.7000", "0.4500"]
    assert rows["train/images_per_sec"][0] == "2" and "missing/tag" not in rows
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "tag,step,value" and "val/acc1,11,0.699999988079071" in lines and len(lines) == 7
    with pytest.raises(SystemExit) as exit_info:
        scalars.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no TensorBoard event files" in capsys.readouterr().err


def test_scalars_names_requested_tags_that_are_not_in_the_logs(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    from bench import scalars

    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("val/acc1", 0.5, 0)
    writer.add_scalar("train/loss", 2.0, 0)
    writer.close()
    table = scalars.main([str(tmp_path), "--tags", "val/acc1", "val/acc_1"])
    assert list(table_rows(table)) == ["val/acc1"]
    warning = capsys.readouterr().err
    assert "val/acc_1" in warning and "train/loss, val/acc1" in warning
    with pytest.raises(SystemExit) as exit_info:
        scalars.main([str(tmp_path), "--tags", "val/top1", "val/acc_1"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "val/top1 val/acc_1" in error and "train/loss, val/acc1" in error
    assert "val/acc1" in scalars.main([str(tmp_path)])
    assert capsys.readouterr().err == "", "a default tag the run does not log (train/mfu on a CPU) is no surprise"


def test_profile_step_reports_every_stage_and_the_top_operators():
    from bench import profile_step

    report = profile_step.main(
        [
            "--model",
            "coatnet_nano",
            "--batch-size",
            "2",
            "--img-size",
            "32",
            "--num-classes",
            "10",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--warmup",
            "1",
            "--steps",
            "1",
        ]
    )
    stage_part, operator_part = report.split("Top ")
    stages = table_rows(stage_part[stage_part.index("| stage") :])
    assert list(stages) == ["stem", "S1", "S2", "S3", "S4", "head"]
    assert all(number(fwd) > 0 and number(bwd) > 0 for fwd, bwd, _ in stages.values()), stages
    assert abs(sum(number(share) for _, _, share in stages.values()) - 100) < 1
    operators = table_rows(operator_part[operator_part.index("| operator") :])
    assert len(operators) == profile_step.TOP_OPERATORS and any("convolution" in name for name in operators)


def test_gpu_checks_script_records_skipped_steps_and_rejects_unknown_topics(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = REPO_ROOT / "bench" / "gpu_checks.sh"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OUT": str(tmp_path),
        "BUDGET_S": "0",
    }
    done = subprocess.run(["bash", str(script), "speed"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    steps = (
        "c0_compiled",
        "c0_eager",
        "c0_profile",
        "c0_lightning_overhead",
        "c0_fold_bn",
        "c1_eager",
        "c0_grad_checkpointing",
        "c0_grad_checkpointing_s1_s2",
    )
    for step in steps:
        assert f"- {step}: skipped" in summary
    assert (tmp_path / "RESULTS.md").is_file() and summary in done.stdout
    chosen = subprocess.run(
        ["bash", str(script), "speed"],
        env={**env, "ONLY": "c0_host_syncs c1_eager"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chosen.returncode == 0, chosen.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "- c0_host_syncs: skipped" in summary and "- c1_eager: skipped" in summary  # selected, then out of budget
    assert "- c0_compiled: not selected" in summary and "- c0_eager: not selected" in summary
    wrong = subprocess.run(["bash", str(script), "nope"], env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "unknown topic 'nope'" in wrong.stderr


def test_data_pipeline_table_compares_folder_and_shards(tmp_path, capsys):
    from bench import data_pipeline

    data_pipeline.main(
        ["--num-images", "16", "--workers", "0", "--batch-size", "8", "--root", str(tmp_path), "--device", "cpu"]
    )
    rows = [
        line.split("|")[1:-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "img/s" not in line
    ]
    assert [(r[0].split()[0], r[1].strip()) for r in rows] == [
        ("cpu", "folder"),
        ("device", "folder"),
        ("cpu", "shards"),
        ("device", "shards"),
    ]
    assert all(float(r[-1]) > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["train-000000.tar"]


def test_loader_vs_timm_table_has_every_side_at_both_sizes(tmp_path, capsys):
    pytest.importorskip("timm")
    from bench import loader_vs_timm

    loader_vs_timm.main(
        ["--num-images", "8", "--large-images", "4", "--batch-size", "4", "--rounds", "1", "--root", str(tmp_path)]
    )
    rows = [
        line.split("|")[1:-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "img/s" not in line
    ]
    assert [(r[0].split()[0], r[1].strip()) for r in rows][:2] == [
        ("imagenet-like", "project loader"),
        ("imagenet-like", "timm loader"),
    ]
    assert len(rows) == 12 and {r[0].split()[0] for r in rows} == {"imagenet-like", "large"}
    assert sum("decode floor" in r[1] for r in rows) == 2  # the whole-file decoding floor, at each size
    assert all(float(r[2]) > 0 and r[4].strip().endswith("x") for r in rows)
    timm_rows = [r for r in rows if r[1].strip() == "timm loader"]
    assert all(r[4].strip() == "1.00x" for r in timm_rows)


def test_import_footprint_counts_a_cifar_fit_without_shard_reader_or_decoders():
    import re
    import subprocess
    import sys

    from conftest import subprocess_env

    proc = subprocess.run(
        [sys.executable, "-m", "bench.import_footprint", "--list"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    count = re.search(r"project modules imported by the CIFAR-10 fit: (\d+) \((\d+) lines\)", proc.stderr)
    assert count and 0 < int(count.group(1)) < 100, proc.stderr[-2000:]
    modules = set(re.findall(r"^  (\S+)$", proc.stderr, flags=re.M))
    assert {"datamodules.cifar", "lightning_modules.classifier", "coatnet.model"} <= modules
    assert not modules & {"datamodules.sources.tar_shards", "datamodules.decoding.device_decode", "ablate.study"}
