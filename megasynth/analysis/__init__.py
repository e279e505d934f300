"""Analysis stages: results table (``run_evaluate``), data-law fits and report (``run_report``).

* :mod:`megasynth.analysis.results` — ``runs/<run_id>/{summary.json, evals.jsonl}`` → ``results.csv``.
* :mod:`megasynth.analysis.laws` — scaling-law fits with bootstrap CIs (data law L(D) = E + B·D^(−β)).
* :mod:`megasynth.analysis.report` — ``fits/data_law.json``, ``report/report.md`` and PNG plots.
* :mod:`megasynth.analysis.chinchilla` — L(N, D) by Hoffmann et al. Approach 3 (batched L-BFGS, 4,500 starts).
* :mod:`megasynth.analysis.fit_table` — ``megasynth fit`` over a results table, extrapolation checks.
* :mod:`megasynth.analysis.mixtures` — optimal ratio, compute efficiency, generator comparison.
* :mod:`megasynth.analysis.unigrams` — streamed unigram statistics of Megatron indexed datasets.
* :mod:`megasynth.analysis.cli` — ``main(argv)`` for ``megasynth fit`` / ``megasynth analyze``.
* :mod:`megasynth.analysis.plots` — matplotlib (Agg) figures; imported only by the report stage.
"""

from megasynth.analysis.chinchilla import ChinchillaFit, compute_optimal, fit_chinchilla
from megasynth.analysis.laws import (DataLaw, DataLawFit, LawFit, LawSpec, RectifiedLaw, RectifiedLawFit,
                                     fit_data_law, fit_law, fit_rectified_law)
from megasynth.analysis.fit_table import extrapolation_check, fit_table
from megasynth.analysis.mixtures import compare_generators, efficiency, efficiency_table, optimal_ratio, optimal_ratio_table
from megasynth.analysis.report import natural_baseline, report_up_to_date, run_report
from megasynth.analysis.results import COLUMNS, ResultRow, read_results, results_up_to_date, run_evaluate

__all__ = ["run_evaluate", "run_report", "results_up_to_date", "report_up_to_date", "fit_data_law", "fit_law",
           "DataLaw", "DataLawFit", "LawFit", "LawSpec", "natural_baseline", "read_results", "ResultRow", "COLUMNS",
           "RectifiedLaw", "RectifiedLawFit", "fit_rectified_law", "ChinchillaFit", "fit_chinchilla",
           "compute_optimal", "fit_table", "extrapolation_check", "optimal_ratio", "optimal_ratio_table",
           "efficiency", "efficiency_table", "compare_generators"]
