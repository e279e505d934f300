"""The ``collapse`` stage: the recursive train → generate → train loop (``collapse:`` in the study file).

Generation 0 is the trained run of ``collapse.base_mixture`` (natural text). For ``k = 1 .. collapse.generations``:

1. export the final checkpoint of generation ``k − 1``'s run to a HF Llama directory
   ``collapse/g<k>/generator/`` (:func:`megasynth.model.convert.export_hf`, with the study's tokenizer);
2. generate ``collapse.num_documents`` records of style ``collapse.style`` with it as the generator, through the
   generate stage (:func:`megasynth.generate.run_generate`: vLLM, base-model prompts seeded with the same natural
   excerpts every generation, the study's sampling and filters) into ``collapse/g<k>/synthetic/<style>/``;
3. tokenize them as source ``collapse-g<k>`` (``tokenized/collapse-g<k>_text_document``) and write mixture
   ``collapse-g<k>`` (that source, plus ``collapse.natural_share`` of the base mixture's sources);
4. train run ``collapse-g<k>`` (:func:`megasynth.train.train_one`) with the study's model and train settings.

Every step skips what is complete (markers), so the loop can be killed and rerun. An export whose source run
was retrained since (its ``summary.json`` changed) is refused with the path named. The runs join
``results.csv`` in the ``evaluate`` stage and the report's model-collapse section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.study.runs import plan_collapse_runs, plan_runs
from megasynth.utils import MegasynthError, is_done, mark_done, read_json

logger = logging.getLogger("megasynth.study")


def collapse_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether every run of the loop is complete (the stage's completion).

    Raises:
        MegasynthError: a run directory holds another run (a changed identity setting, named).
    """
    from megasynth.train.record import check_run_dir

    runs = plan_collapse_runs(cfg)
    return all([check_run_dir(run, layout.run(run.run_id)) for run in runs])


def run_collapse(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Run the loop for ``collapse.generations`` generations (see the module docstring).

    Raises:
        MegasynthError: the base mixture's run is not trained, a generation kept no records, or as the
            stages it reuses.
    """
    from megasynth.train import train_one
    from megasynth.train.record import check_run_dir

    c = cfg.collapse
    base = next(r for r in plan_runs(cfg) if r.mixture.name == c.base_mixture)
    prev: RunConfig = base
    for k, run in enumerate(plan_collapse_runs(cfg), start=1):
        if check_run_dir(run, layout.run(run.run_id)):
            logger.info("collapse: generation %d (%s) complete, skipping", k, run.run_id)
            prev = run
            continue
        if not is_done(layout.run(prev.run_id).summary):
            raise MegasynthError(f"collapse.base_mixture: run {prev.run_id!r} is not trained yet "
                                 f"(no {layout.run(prev.run_id).summary}); run the train stage first")
        logger.info("collapse: generation %d: %s writes %d %s records, then %s trains on them", k, prev.run_id,
                    c.num_documents, c.style, run.run_id)
        generator = export_generator(cfg, layout, prev, k)
        records = generate(cfg, layout, k, generator, prev.run_id)
        tokenize(cfg, layout, k, records)
        from megasynth.data.mixtures import write_mixture
        from megasynth.data.tokenizer import load_tokenizer

        write_mixture(layout, run.mixture.name, run.mixture.sources, run.train, load_tokenizer(cfg.tokenizer, layout),
                      f"collapse (generation {k})")
        train_one(run, layout)
        prev = run


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tokenizer_dir(cfg: StudyConfig, layout: StudyLayout):
    """The HF tokenizer directory an exported generator carries (the study's BPE, or ``tokenizer.path``).

    Raises:
        MegasynthError: ``tokenizer.type: llama3`` (the tiktoken tokenizer is not an HF directory).
    """
    if cfg.tokenizer.type == "bpe":
        return layout.tokenizer_dir
    if cfg.tokenizer.type == "huggingface" and cfg.tokenizer.path:
        return cfg.tokenizer.path
    raise MegasynthError("collapse.generations: the loop exports each model with an HF tokenizer for vLLM; use "
                         "tokenizer.type bpe or huggingface")


def export_generator(cfg: StudyConfig, layout: StudyLayout, source: RunConfig, k: int):
    """Export run ``source``'s final checkpoint to ``collapse/g<k>/generator/`` (skipped when done); return it.

    Raises:
        MegasynthError: an earlier export of this generation was made from another training of ``source``.
    """
    from megasynth.model.convert import export_hf

    out = layout.collapse_generator(k)
    files = layout.run(source.run_id)
    sha = _sha(files.summary)
    if is_done(out) and out.is_dir():
        old = read_json(out.parent / f"{out.name}.done")
        if old.get("summary_sha256") != sha:
            raise MegasynthError(f"{out}: exported from an earlier training of run {source.run_id!r}; delete "
                                 f"{layout.collapse(k).root} (and the later generations) to rerun the loop from it")
        return out
    export_hf(files.checkpoints, out, tokenizer=tokenizer_dir(cfg, layout), preset=source.model.preset,
              overwrite=True)
    mark_done(out, {"source_run": source.run_id, "summary_sha256": sha})
    return out


def generate(cfg: StudyConfig, layout: StudyLayout, k: int, generator, generator_name: str) -> list:
    """Records of generation ``k`` written by ``generator`` through the generate stage; return their shard paths.

    Raises:
        MegasynthError: no record kept (every output filtered).
    """
    from megasynth.generate.pipeline import generate_done, run_generate

    c, g = cfg.collapse, cfg.generation
    sub = layout.collapse(k)
    src = cfg.generation_source
    corpus = sub.corpus(src)
    if not corpus.exists():  # the seed corpus, linked (copied where links are not possible)
        corpus.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(layout.corpus(src), corpus)
        except OSError:
            shutil.copyfile(layout.corpus(src), corpus)
    gen = dataclasses.replace(g, enabled=True, source=src, styles=[c.style], model=str(generator),
                              model_name=f"{generator_name} (megasynth collapse generation {k - 1})",
                              num_documents=c.num_documents, prompt_format="base",
                              synthllm=dataclasses.replace(g.synthllm, enabled=False))
    sub_cfg = dataclasses.replace(cfg, generation=gen, study_dir=str(sub.root))
    if not generate_done(sub_cfg, sub):
        run_generate(sub_cfg, sub)
    manifest = read_json(sub.synthetic_manifest(c.style))
    kept = manifest.get("counts", {}).get("kept", 0)
    if not kept:
        raise MegasynthError(f"{sub.synthetic_manifest(c.style)}: generation {k} kept no records "
                             f"({manifest.get('counts')}); loosen generation.min_output_words / "
                             "max_repeated_ngram_frac / keep_truncated")
    return [sub.synthetic_dir(c.style) / name for name in manifest["shards"]]


def tokenize(cfg: StudyConfig, layout: StudyLayout, k: int, shards: list) -> dict:
    """Tokenize generation ``k``'s records as source ``collapse-g<k>`` with the study's tokenizer."""
    from megasynth.data.preprocess import tokenize_source
    from megasynth.data.tokenizer import load_tokenizer

    return tokenize_source(layout, cfg.collapse.name(k), "synthetic", shards, load_tokenizer(cfg.tokenizer, layout))
