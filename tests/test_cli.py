"""The command line as the README shows it: every command in ``megasynth --help``, overrides before and after
options, one ``<prog>: error:`` line for bad input, the study file kept verbatim with each invocation recorded
apart, and every command line of README.md's bash blocks run (long ones checked with ``--dry-run``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
MEGASYNTH = [sys.executable, "-m", "megasynth.cli"]


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command_one_line_each(tmp_path):
    from megasynth.cli import ANALYSIS_COMMANDS, study_commands

    out = _run([*MEGASYNTH, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, help_ in {**study_commands(), **ANALYSIS_COMMANDS}.items():
        assert any(re.fullmatch(rf"  {name}\s+{re.escape(help_)}", line) for line in lines), name
    bad = _run([*MEGASYNTH, "trian", "x.yaml"], tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'trian'" in bad.stderr


def test_overrides_before_and_after_options_dry_run_writes_nothing(tmp_path):
    study = ROOT / "examples" / "quickstart.yaml"
    for argv in (["run", str(study), "--study-dir", "studies/q2", "train.train_iters=60", "--dry-run"],
                 ["run", "--dry-run", str(study), "train.train_iters=60", "--study-dir", "studies/q2"],
                 ["mix", str(study), "train.train_iters=60", "--study-dir=studies/q2", "--dry-run", "-v"]):
        out = _run([*MEGASYNTH, *argv], tmp_path)
        assert out.returncode == 0, (argv, out.stderr)
        config, stages = out.stdout.split("# stages")
        resolved = yaml.safe_load(config)
        assert resolved["train"]["train_iters"] == 60 and resolved["study_dir"] == "studies/q2"
        want = ["corpora", "generate", "decontaminate", "preprocess", "mix", "train", "collapse", "evaluate", "report"] \
            if argv[0] == "run" else ["mix"]
        assert [ln.split(":")[0] for ln in stages.splitlines()[1:]] == want
        assert all(ln.endswith(": run") or ln == "collapse: skip (collapse.generations: 0)"
                   for ln in stages.splitlines()[1:])
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("argv, prefix", [
    ([*MEGASYNTH, "run", "none.yaml"], "megasynth: error: none.yaml: study file not found"),
    ([*MEGASYNTH, "fit", "none.csv"], "megasynth: error: "),
    ([sys.executable, "-m", "megasynth.study.launch", "none.yaml", "--dry-run"],
     "megasynth: error: none.yaml: study file not found"),
    ([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", "none.jsonl", "--output-prefix", "o",
      "--tokenizer-type", "llama3"], "preprocess_data: error: --input: no file matches none.jsonl"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, argv, prefix):
    out = _run(argv, tmp_path)
    errors = [ln for ln in out.stderr.splitlines() if ": error: " in ln]
    assert out.returncode == 2 and len(errors) == 1 and errors[0].startswith(prefix), out.stderr


def test_study_file_kept_verbatim_and_invocations_recorded_apart(tmp_path):
    """Reusing the study directory's ``study.yaml`` as the study file does not carry an earlier
    invocation's overrides forward: they live in ``invocations/``, not in ``study.yaml``."""
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"text": f"Note {i}: the river rises in the northern hills."}) + "\n"
                             for i in range(3)))
    text = (f"# a study file with comments, kept as written\nname: cli\nstudy_dir: {tmp_path / 'study'}\n"
            f"corpora:\n  train:\n    - {{name: notes, loader: jsonl, path: {notes}, min_chars: 10}}  # tiny\n"
            "generation: {enabled: false}\nmixtures:\n  - {name: natural, sources: {notes: 1.0}}\n"
            "train: {train_iters: 40}\n")
    study = tmp_path / "cli.yaml"
    study.write_text(text)
    root = tmp_path / "study"

    first = _run([*MEGASYNTH, "corpora", str(study), "-v", "train.train_iters=17"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert (root / "study.yaml").read_text() == text
    assert len((root / "corpora" / "notes.jsonl").read_text().splitlines()) == 3
    (inv1,) = sorted((root / "invocations").glob("*-corpora.yaml"))
    rec = yaml.safe_load(inv1.read_text())
    assert rec["command"] == "corpora" and rec["overrides"] == ["train.train_iters=17"]
    assert rec["argv"] == ["corpora", str(study), "-v", "train.train_iters=17"] and rec["study_file"] == str(study)
    assert rec["config"]["train"]["train_iters"] == 17

    again = _run([*MEGASYNTH, "corpora", str(root / "study.yaml")], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "stage corpora: complete, skipping" in again.stderr
    assert (root / "study.yaml").read_text() == text
    inv2 = [p for p in sorted((root / "invocations").glob("*-corpora.yaml")) if p != inv1]
    assert len(inv2) == 1 and yaml.safe_load(inv2[0].read_text())["config"]["train"]["train_iters"] == 40


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_loads_dry_runs_and_plans(tmp_path, example):
    """Every study file of examples/ validates: ``megasynth run --dry-run`` lists its stages and writes nothing, and
    one with a sweep section is planned (``megasynth sweep plan``), cluster paths (/models, /data) included."""
    study = ROOT / "examples" / example
    out = _run([*MEGASYNTH, "run", str(study), "--dry-run", "--study-dir", str(tmp_path / "s")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "# stages" in out.stdout and not (tmp_path / "s").exists()
    if "sweep" in yaml.safe_load(study.read_text()):
        plan = _run([*MEGASYNTH, "sweep", "plan", str(study), "--format", "json"], tmp_path)
        assert plan.returncode == 0, plan.stderr[-3000:]
        assert json.loads(plan.stdout)["totals"]["runs"] >= 4


# ------------------------------------------------------------------------------------------ README.md
SKIP = {  # first words of README commands the test does not run -> why
    "make": "creates the venv and runs the whole study or the whole suite (minutes)",
    "docker": "needs Docker",
    "megasynth sweep run": "trains a whole sweep (an hour on 2 cores; tests/test_sweep.py runs a small one)",
    "launch/slurm_cluster.sh": "installs and starts system daemons (root); tests/test_slurm.py uses the cluster",
    "PYTHON=.venv/bin/python bash benchmarks/gpu_check_prepare.sh": "downloads wheels and builds the study data "
                                                                     "the GPU check carries (minutes)",
    "python benchmarks/gpu_image_env.py": "builds a virtual environment of the GPU image's packages (minutes)",
    "PYTHON=/tmp/gpu_image/venv/bin/python bash benchmarks/gpu_check.sh": "the GPU check's CPU dry run (minutes; "
                                                                           "tests/test_gpu.py runs its tests)",
}
DRY_RUN = {  # long README commands, checked with --dry-run (resolved config and layout; nothing trained)
    "megasynth run examples/quickstart.yaml --study-dir studies/q2 sweep.budgets.tokens=[51200,102400,204800]":
        "a whole study",
    "launch/train.sh --nproc": "training with torchrun (GPUs for the TE runs)",
}


QUICKSTART_RUN = "llama3-tiny_hq33_s1234_409.6k"
"""The planned run of the quickstart whose run file a README command trains (the WSD trunk of hq33)."""


def readme_commands() -> list[str]:
    """Every command of README.md's ```bash blocks: continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = " ".join(shlex.split(cmd, comments=True))
            if cmd:
                commands.append(cmd)
    return commands


def _readme_inputs(sandbox: Path) -> None:
    """The files README commands read, made here: a results table, a JSONL file, a planned run's run.yaml."""
    from megasynth.analysis.results import COLUMNS
    from megasynth.config import StudyConfig

    for name in ("examples", "launch", "tools"):
        (sandbox / name).symlink_to(ROOT / name)
    rows = [",".join(COLUMNS)]
    for mixture, ratio, E in (("natural", 0.0, 3.0), ("hq33", 0.33, 2.9)):
        for D in (1e5, 2e5, 4e5, 8e5, 1.6e6):
            loss = E + 400.0 * D ** -0.5
            for metric, value in (("loss", loss), ("bpb", 0.5 * loss)):
                row = {"run": f"{mixture}_{int(D)}", "mixture": mixture, "preset": "llama3-tiny", "n_params": 10000000,
                       "n_params_non_embedding": 2000000, "tokens": int(D), "synthetic_ratio": ratio,
                       "eval_set": "wiki", "loss": repr(value), "synthetic_sources": "hq" if ratio else "",
                       "seed": 1, "schedule": "cosine", "schedule_complete": "true", "generator": "",
                       "metric": metric}  # one complete run per budget point
                rows.append(",".join(str(row[c]) for c in COLUMNS))
    (sandbox / "results.csv").write_text("\n".join(rows) + "\n")
    (sandbox / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (
        "The river rises in the northern hills.", "Farmers grow wheat and beans.", "A stone bridge of seven arches.")))
    from megasynth.study.runs import plan_runs

    run = next(r for r in plan_runs(StudyConfig.from_yaml(ROOT / "examples" / "quickstart.yaml"))
               if r.run_id == QUICKSTART_RUN)
    path = sandbox / "studies" / "quickstart" / "runs" / QUICKSTART_RUN / "run.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(run.to_yaml())


def _skipped(cmd: str) -> bool:
    return any(cmd == k or cmd.startswith(k + " ") for k in SKIP)


def _argv(cmd: str) -> list[str] | None:
    """How the test runs a README command (None: skipped, see SKIP)."""
    words = shlex.split(cmd)
    if _skipped(cmd):
        return None
    if any(cmd == k or (k.endswith("--nproc") and cmd.startswith(k)) for k in DRY_RUN):
        words.append("--dry-run")
    if words[0] == "sbatch":  # the job's step, dry: as many ranks as the job would start (launch/train.sbatch)
        i = next(i for i, w in enumerate(words) if w.startswith("launch/"))
        opts = dict(zip(words[1:i:2], words[2:i:2]))  # the README passes sbatch options as `--name value`
        if words[i] == "launch/study.sbatch":
            return [*MEGASYNTH, "run", *words[i + 1:], "--dry-run"]
        per_node = int(opts.get("--gpus-per-node") or opts.get("--ntasks-per-node") or 1)
        nproc = int(opts.get("--nodes", 1)) * per_node
        return [sys.executable, "-m", "megasynth.study.launch", *words[i + 1:], "--dry-run", "--nproc", str(nproc)]
    head = {"megasynth": MEGASYNTH, "python": [sys.executable], "launch/train.sh": ["bash", "launch/train.sh"]}
    return [*head.get(words[0], [words[0]]), *words[1:]]


def test_every_readme_command_runs(tmp_path):
    _readme_inputs(tmp_path)
    ran, skipped = [], []
    for cmd in readme_commands():
        argv = _argv(cmd)
        if argv is None:
            skipped.append(cmd)
            continue
        out = _run(argv, tmp_path, timeout=180)
        assert out.returncode == 0, f"README command failed: {cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        ran.append(cmd)
    assert len(ran) >= 9 and all(_skipped(c) for c in skipped), (ran, skipped)
    assert (tmp_path / "data" / "docs_text_document.idx").is_file()
    fit = json.loads((tmp_path / "fits" / "data_law_fit.json").read_text())  # the E the table was made with
    assert [(f["mixture"], round(f["params"]["E"], 3)) for f in fit["fits"]] == [("natural", 3.0), ("hq33", 2.9)]
    assert (tmp_path / "fits" / "efficiency.json").is_file()
    bpb = json.loads((tmp_path / "fits" / "bpb_law_fit.json").read_text())  # --metric bpb: the bpb rows
    assert [(f["mixture"], round(f["params"]["E"], 3)) for f in bpb["fits"]] == [("natural", 1.5), ("hq33", 1.45)]
    assert not (tmp_path / "studies" / "q2").exists()  # dry runs write nothing
