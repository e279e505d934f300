"""Analysis stages: results table (``run_evaluate``), data-law fits and report (``run_report``).

* :mod:`megasynth.analysis.results` — ``runs/*/{summary.json, evals.jsonl}`` → ``results.csv``.
* :mod:`megasynth.analysis.fit` — scaling-law fits with bootstrap CIs (data law L(D) = E + B·D^(−β)).
* :mod:`megasynth.analysis.report` — ``fits/data_law.json``, ``report/report.md`` and PNG plots.
* :mod:`megasynth.analysis.plots` — matplotlib (Agg) figures; imported only by the report stage.
"""

from megasynth.analysis.fit import DataLaw, DataLawFit, LawFit, LawSpec, fit_data_law, fit_law
from megasynth.analysis.report import natural_baseline, run_report
from megasynth.analysis.results import COLUMNS, ResultRow, read_results, run_evaluate

__all__ = ["run_evaluate", "run_report", "fit_data_law", "fit_law", "DataLaw", "DataLawFit", "LawFit", "LawSpec",
           "natural_baseline", "read_results", "ResultRow", "COLUMNS"]
