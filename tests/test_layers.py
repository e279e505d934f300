"""The floors of the house and the one list of stages.

Base floor (``config/``, ``layout``, ``utils``) < stage packages (``corpora``, ``generate``, ``data``,
``model``, ``train``, ``analysis``) < top floor (``study``, ``cli``): no module imports a floor above its
own. The stage registry is the one list of stages; ``docs/CONTRACTS.md``'s table is rendered from it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "megasynth"
STAGE_PACKAGES = ("corpora", "generate", "data", "model", "train", "evaluation", "analysis")
TOP = ("megasynth.study", "megasynth.cli")


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _module_name(path: Path) -> str:
    parts = _rel(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (lazy imports inside functions too)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if a.name != "*" else base) for a in node.names]
            out.append((node.lineno, base))
    return out


def _violations(files, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{_rel(p)}:{line}: imports {mod}" for p in files for line, mod in _imports(p)
            if any(mod == f or mod.startswith(f + ".") for f in forbidden)]


def test_stage_packages_never_import_the_top_floor():
    files = [p for pkg in STAGE_PACKAGES for p in sorted((PKG / pkg).rglob("*.py"))]
    assert len(files) > 40
    assert _violations(files, TOP) == []


def test_base_floor_imports_no_stage_and_no_top():
    """``config/`` reads torch-free catalogs of a higher floor to validate names: the preset table of
    ``model/presets.py`` (``model.preset``), the prompt families of ``generate/prompts.py``
    (``generation.prompts``), the task names of ``evaluation/catalog.py`` (``evaluation.tasks``) and the math
    tasks of ``evaluation/math.py`` (``generation.synthllm.decontaminate``, ``evaluation.math_tasks``) and the presets'
    vLLM head-size check (``evaluation.math_tasks``); nothing else."""
    files = [PKG / "layout.py", PKG / "utils.py", *sorted((PKG / "config").glob("*.py"))]
    forbidden = TOP + tuple(f"megasynth.{p}" for p in STAGE_PACKAGES)
    allowed = {"megasynth.model.presets", "megasynth.model.presets.PRESETS",
               "megasynth.model.presets.check_vllm_head_dim", "megasynth.generate.prompts",
               "megasynth.generate.prompts.prompt_spec", "megasynth.evaluation.catalog",
               "megasynth.evaluation.catalog.resolve_task", "megasynth.evaluation.math",
               "megasynth.evaluation.math.MATH_TASKS"}
    got = [v for v in _violations(files, forbidden) if v.rsplit(" ", 1)[1] not in allowed]
    assert got == []


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from megasynth.study.runs import plan_runs\n")
    assert _violations([bad], TOP) == [f"{bad}:2: imports megasynth.study.runs.plan_runs",
                                       f"{bad}:2: imports megasynth.study.runs"]


def test_one_registry_of_stages():
    from megasynth.cli import ANALYSIS_COMMANDS, study_commands
    from megasynth.study.stages import STAGE, STAGES

    names = [s.name for s in STAGES]
    assert names == ["corpora", "generate", "decontaminate", "preprocess", "mix", "train", "collapse", "evaluate",
                     "report"]
    assert list(study_commands()) == [*names, "run", "serve"] and set(ANALYSIS_COMMANDS) == {"fit", "analyze"}
    for i, s in enumerate(STAGES):  # requirements come earlier in the order the runner follows
        assert all(names.index(r) < i for r in s.requires), s.name
        assert callable(s.run_fn()) and s.help and s.writes and s.done_when
    assert [s.name for s in STAGES if s.auto] == ["corpora", "decontaminate"]
    assert STAGE["generate"].skip_if is not None and STAGE["collapse"].skip_if is not None


def test_contracts_table_is_rendered_from_the_registry():
    from megasynth.study.stages import render_stage_table, with_stage_table

    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    assert render_stage_table() in text
    assert with_stage_table(text) == text, "run `python -m megasynth.study.stages docs/CONTRACTS.md`"
    with pytest.raises(ValueError, match="markers"):
        with_stage_table("no table here")


def test_help_imports_no_torch_or_vllm():
    code = ("import sys\nfrom megasynth.cli import main\n"
            "for argv in (['--help'], ['mix', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'megatron', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
