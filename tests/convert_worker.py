"""Worker of tests/test_convert.py, run under ``torchrun --nproc-per-node 2`` (gloo on CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/convert_worker.py SPEC.json

``SPEC.json``: ``{"out": DIR, "inputs": FILE.pt, "cases": [{"name", "hf_dir", "checkpoint"}, ...]}``.
For every case, loads the imported megatron checkpoint into the model built at TP=2 (then at PP=2) with
:func:`megasynth.model.convert.load_pretrained`, runs ``inputs`` (``input_ids``/``position_ids`` ``[b, s]``)
through it and writes the full logits ``[b, s, V_padded]`` to ``DIR/<name>-tp2.pt`` / ``DIR/<name>-pp2.pt``:
TP shards are all-gathered along the vocabulary; at PP=2 stage 0 sends its hidden states ``[s, b, h]`` to
stage 1.
"""

from __future__ import annotations

import json
import sys

import torch


def _logits_tp2(model, ids, pos):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    local = model(ids, pos, None)  # [b, s, V/2] on each TP rank
    parts = [torch.empty_like(local) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def _logits_pp2(model, ids, pos, hidden_shape):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if ps.is_pipeline_first_stage():
        hidden = model(ids, pos, None)  # [s, b, h]
        dist.send(hidden.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    hidden = torch.empty(hidden_shape)
    dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
    model.set_input_tensor(hidden)
    return model(ids, pos, None)


@torch.no_grad()
def main(argv: list[str]) -> None:
    import torch.distributed as dist

    from megasynth.config import ModelConfig, ParallelConfig
    from megasynth.model import builder
    from megasynth.model.convert import load_pretrained
    from megasynth.model.hf_compat import read_hf_config
    from megasynth.utils import setup_logging

    setup_logging()
    spec = json.loads(open(argv[0]).read())
    inputs = torch.load(spec["inputs"])
    ids, pos = inputs["input_ids"], inputs["position_ids"]
    for case in spec["cases"]:
        _, shape = read_hf_config(case["hf_dir"])
        for tp, pp in ((2, 1), (1, 2)):
            builder.init_parallel(tp, pp)
            model = builder.build_model(ModelConfig(), shape.vocab_size, ids.shape[1], shape=shape,
                                        parallel=ParallelConfig(tensor_model_parallel_size=tp,
                                                                pipeline_model_parallel_size=pp))
            load_pretrained(model, case["checkpoint"], shape, shape.vocab_size)
            model.eval()
            if tp == 2:
                logits = _logits_tp2(model, ids, pos)
            else:
                logits = _logits_pp2(model, ids, pos, (ids.shape[1], ids.shape[0], shape.hidden_size))
            if logits is not None and dist.get_rank() == (0 if tp == 2 else 1):
                torch.save(logits, f"{spec['out']}/{case['name']}-{'tp2' if tp == 2 else 'pp2'}.pt")
            dist.barrier()
    builder.destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1:])
