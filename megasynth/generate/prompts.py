"""Prompts of the synthetic styles (HQ, QA, TXBK), in a base-model and a chat format.

The styles follow published recipes, in our own words:

- ``hq``: rephrase a web document as clear, encyclopedic prose — WRAP's "Wikipedia-style" rephrasing
  (Maini et al. 2024, "Rephrasing the Web") and Nemotron-CC's wikipedia-style prompt (Su et al. 2024).
- ``qa``: rewrite the document as conversational question–answer pairs about its content — WRAP's QA
  style and Nemotron-CC's "diverse QA pairs".
- ``txbk``: a textbook section on the document's topic with explanations, worked examples and exercises
  — HF Cosmopedia (Ben Allal et al. 2024) textbook prompts seeded by web documents.

Formats:

- ``base``: a plain continuation prompt (instruction, the document, then a header that starts the
  answer) that a base model continues; the header's answer start (``response_prefix``) is prepended
  to the generated text so records read as complete documents.
- ``chat``: one user message rendered with the tokenizer's chat template (``add_generation_prompt``).
- ``auto``: ``chat`` if the tokenizer has a chat template, else ``base``.

Prompt families (``generation.prompts.<style>``: ``family``, ``variant``, ``audience``, ``topic``), each
selectable per style; a style without an entry uses the ``default`` family (the prompts above):

- ``wrap`` — WRAP (Maini et al. 2024, "Rephrasing the Web", App. prompts): ``easy`` (very simple words
  and sentences a small child follows), ``medium`` (varied, high-quality Wikipedia-like English),
  ``hard`` (terse, erudite language with rare words), ``qa`` (a conversation of Question:/Answer: turns).
- ``nemotron_cc`` — the Nemotron-CC rephrasing set (Su et al. 2024; the prompts NeMo Curator ships for
  it): ``wikipedia`` (paraphrase in Wikipedia-style English), ``diverse_qa`` (up to eight questions of
  varied kinds with answers), ``distill`` (a condensed but faithful version), ``extract_knowledge``
  (the text's knowledge restated as textbook/Wikipedia-like passages), ``knowledge_list`` (an organised
  list of facts, details, concepts and numbers).
- ``cosmopedia`` — Cosmopedia web-seeded generation (Ben Allal et al. 2024; the prompt builders of
  huggingface/cosmopedia ``prompts/web_samples`` and ``prompts/openstax``): ``textbook_academic``,
  ``textbook_narrative``, ``blog_post``, ``wikihow`` (a how-to guide); optional ``audience``
  (``young_children``, ``high_school``, ``college``, ``professionals``) and ``topic`` (a phrase that the
  text should be related to, like Cosmopedia's cluster topics).

The texts are this project's own wording of what each recipe asks for. Every (family, variant) has a
version (``<family>-<variant>-v1``; the default family keeps ``hq-v1`` …); records carry the version and
:meth:`PromptSpec.provenance`. Bump a version whenever its text (or an audience text) changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megasynth.utils import MegasynthError

PROMPT_VERSION = {"hq": "hq-v1", "qa": "qa-v1", "txbk": "txbk-v1"}

# Instruction text per style (shared by both formats).
_INSTRUCTIONS = {
    "hq": (
        "Rewrite the passage below as a clear, well-organised encyclopedia article in the neutral, "
        "factual style of Wikipedia. Keep every fact, name, date and number from the passage, explain "
        "terms a general reader may not know, use complete sentences grouped into paragraphs, and leave "
        "out opinions, rhetoric and filler. Do not add facts that the passage does not support."
    ),
    "qa": (
        "Turn the passage below into a conversation of questions and answers about its content. A "
        "curious reader asks varied questions (facts, reasons, consequences, definitions) and each "
        "answer is accurate, self-contained and based only on the passage. Write each pair as "
        "'Question:' followed by 'Answer:'."
    ),
    "txbk": (
        "Using the passage below as the starting point, write a section of a textbook for students "
        "on the passage's main topic. Explain the key ideas step by step, give at least one worked "
        "example, and finish with a few exercises for the reader. Write in clear, instructive prose."
    ),
}

# Base format: the header after the document that starts the answer, and the answer's first words.
_BASE_HEADER = {
    "hq": ("Encyclopedia article:\n\n", ""),
    "qa": ("Questions and answers about the passage:\n\n", "Question:"),
    "txbk": ("Textbook section:\n\n", "## "),
}

# Base models tend to start another "passage" after they finish: stop there.
BASE_STOP = ["\nPassage:"]


# --------------------------------------------------------------------------------------------------
# Prompt families: (family, variant) -> (instruction, base header, base response prefix)
# --------------------------------------------------------------------------------------------------
_FAMILIES: dict[str, dict[str, tuple[str, str, str]]] = {
    # WRAP (Maini et al. 2024), its four rephrasing styles.
    "wrap": {
        "easy": (
            "Rewrite the passage below so that a small child could follow it. Use only very common words "
            "and short, simple sentences, and keep what the passage says.",
            "Simple version:\n\n", ""),
        "medium": (
            "Rewrite the passage below in varied, high-quality English, written the way sentences in a "
            "Wikipedia article are written. Keep its meaning and every fact it states.",
            "Rewritten passage:\n\n", ""),
        "hard": (
            "Rewrite the passage below in terse, learned language that only an erudite scholar would read "
            "with ease: replace plain words and phrases with rare and sophisticated ones, and keep the meaning.",
            "Scholarly version:\n\n", ""),
        "qa": (
            "Recast the passage below as a conversation in several turns. Each turn is a line that starts "
            "with 'Question:' followed by a line that starts with 'Answer:'; together they cover what the "
            "passage says.",
            "Conversation:\n\n", "Question:"),
    },
    # Nemotron-CC (Su et al. 2024), its five prompts for rephrasing web text.
    "nemotron_cc": {
        "wikipedia": (
            "Paraphrase the text below in clear, high-quality English in the style of sentences on "
            "Wikipedia. Vary the wording and sentence structure, and keep every fact.",
            "Paraphrased text:\n\n", ""),
        "diverse_qa": (
            "Read the text below, then ask up to eight questions about it and answer each one correctly "
            "from the text. Make the questions varied: yes/no questions, open questions starting with what, "
            "how, when, where, why or who, multiple-choice questions that list their options, comparisons, "
            "reading-comprehension questions, and problems to solve where the text allows. Ask about facts, "
            "important knowledge and concrete details. Use short, clear plain text without Markdown, and put "
            "each pair on its own line as 'Question: ... Answer: ...'.",
            "Questions and answers based on the text:\n\n", "Question:"),
        "distill": (
            "Rewrite the text below as a shorter version that stays accurate and informative; not a bare "
            "summary. Keep the crucial information, key concepts, values and factual details, technical "
            "terms, examples, reasoning and evidence, and make it easier to read. Include only what the text "
            "says, and write plain prose without formatting.",
            "Condensed text:\n\n", ""),
        "extract_knowledge": (
            "Restate the knowledge in the text below as one or more passages of clear, high-quality English "
            "like the sentences of a textbook or of Wikipedia. Keep content from fields such as the "
            "humanities, the social and natural sciences, technology, engineering, mathematics, law, "
            "business, education, agriculture, politics and history; leave out whatever holds no useful "
            "facts or knowledge. Keep examples, reasoning and evidence, change or add no detail, and write "
            "plain text without titles, notes or comments.",
            "Knowledge from the text:\n\n", ""),
        "knowledge_list": (
            "Pull the key information out of the text below as a concise, well-organised list: facts, "
            "concrete details, key concepts, and important numbers and statistics. Each point must be clear, "
            "specific and supported by the text; make the list dense and easy to learn from, with no titles "
            "or headings.",
            "Key information:\n\n", "- "),
    },
    # Cosmopedia (Ben Allal et al. 2024), web-seeded formats.
    "cosmopedia": {
        "textbook_academic": (
            "Using the web extract below as a starting point, write a long, detailed course unit for a "
            "textbook on a subject related to it. Develop each concept in depth before moving to the next, "
            "since depth of understanding matters more than breadth. Be rigorous, keep an academic but "
            "engaging tone, and include specific worked examples such as proofs, calculations, or key dates "
            "and figures.{audience}{topic} Begin with the content itself, without a title or introductory "
            "phrases, and do not refer to images.",
            "Course unit:\n\n", ""),
        "textbook_narrative": (
            "Using the web extract below as a starting point, write a long, detailed course unit for a "
            "textbook on a subject related to it, told as a captivating narrative in the manner of a fine "
            "non-fiction writer. Cover each concept in depth before moving on, and connect it to real-life "
            "examples, current events or recent studies.{audience}{topic} Begin with the content itself, "
            "without a title or introductory phrases, and do not refer to images.",
            "Course unit:\n\n", ""),
        "blog_post": (
            "Write an informative, insightful blog post that builds on the web extract below, exploring "
            "its finer points with fresh angles and deeper analysis. Write in a conversational tone that "
            "makes hard ideas accessible, and bring the subject to life with examples or anecdotes."
            "{audience}{topic} Start with the content itself: no title, no greeting and no rhetorical "
            "opening question.",
            "Blog post:\n\n", ""),
        "wikihow": (
            "Write a long, detailed how-to guide in the style of WikiHow, with a title related to the web "
            "extract below. Give numbered steps; for each step explain in depth how to do it and how it helps "
            "reach the goal, with key tips and guidelines. Keep it clear and practical so readers can follow "
            "it.{audience}{topic} Do not refer to images.",
            "How-to guide:\n\n", "How to "),
    },
}

COSMOPEDIA_AUDIENCES = {
    "young_children": (
        " Write for young children of about 5 to 10 years: only simple everyday words, short sentences, a "
        "cheerful tone, and examples from their world such as toys, snacks or animals; no technical terms."),
    "high_school": (
        " Write for high school students new to the subject: plain language with little jargon, and "
        "relatable real-life situations and thought experiments that spark curiosity."),
    "college": (
        " Write for college students: rigorous, in-depth coverage in an academic tone, with specific "
        "examples such as equations, proofs, dates and names."),
    "professionals": (
        " Write for professionals and researchers with deep expertise: technical, scholarly language, "
        "advanced ideas, and critical analysis of evidence and methods; do not invent references."),
}
"""Cosmopedia audiences (its ``prompts/openstax`` builder's audiences, in this project's words)."""

PROMPT_FAMILIES: dict[str, tuple[str, ...]] = {"default": tuple(_INSTRUCTIONS),
                                               **{f: tuple(v) for f, v in _FAMILIES.items()}}
"""Family -> its variants (``default``: one variant per style, today's prompts)."""
DEFAULT_VARIANT = {"wrap": "medium", "nemotron_cc": "wikipedia", "cosmopedia": "textbook_academic"}
"""Variant used when a family is given without one (``default`` uses the style's own)."""
_FAMILY_VERSION = {"wrap": "v1", "nemotron_cc": "v1", "cosmopedia": "v1"}


@dataclass(frozen=True)
class PromptSpec:
    """A resolved prompt choice for one style: family, variant, optional audience/topic, version."""

    family: str
    variant: str
    version: str
    audience: Optional[str] = None
    topic: Optional[str] = None

    def provenance(self) -> dict:
        """``{"family", "variant", "version", "audience", "topic"}`` for records and manifests."""
        return {"family": self.family, "variant": self.variant, "version": self.version,
                "audience": self.audience, "topic": self.topic}


def prompt_spec(style: str, family: str = "default", variant: Optional[str] = None, audience: Optional[str] = None,
                topic: Optional[str] = None, where: Optional[str] = None) -> PromptSpec:
    """Resolve and check one style's prompt choice (``where``: dotted config prefix for errors).

    Raises:
        MegasynthError: unknown style, family, variant or audience, or an audience/topic given to a
            family other than ``cosmopedia`` — one line naming the field.
    """
    where = where or f"generation.prompts.{style}"
    if style not in _INSTRUCTIONS:
        raise MegasynthError(f"{where}: unknown style {style!r} (known: {', '.join(_INSTRUCTIONS)})")
    if family not in PROMPT_FAMILIES:
        raise MegasynthError(f"{where}.family: unknown prompt family {family!r} "
                             f"(known: {', '.join(PROMPT_FAMILIES)})")
    if family == "default":
        if variant not in (None, style):
            raise MegasynthError(f"{where}.variant: the default family has one variant per style ({style!r}); "
                                 f"got {variant!r}")
        variant, version = style, PROMPT_VERSION[style]
    else:
        variant = variant or DEFAULT_VARIANT[family]
        if variant not in PROMPT_FAMILIES[family]:
            raise MegasynthError(f"{where}.variant: unknown variant {variant!r} of family {family!r} "
                                 f"(known: {', '.join(PROMPT_FAMILIES[family])})")
        version = f"{family}-{variant}-{_FAMILY_VERSION[family]}"
    for name, value in (("audience", audience), ("topic", topic)):
        if value is not None and family != "cosmopedia":
            raise MegasynthError(f"{where}.{name}: only the cosmopedia family takes an {name}, not {family!r}")
    if audience is not None and audience not in COSMOPEDIA_AUDIENCES:
        raise MegasynthError(f"{where}.audience: unknown audience {audience!r} "
                             f"(known: {', '.join(COSMOPEDIA_AUDIENCES)})")
    if topic is not None and not str(topic).strip():
        raise MegasynthError(f"{where}.topic: empty; leave it out for no topic")
    return PromptSpec(family, variant, version, audience, str(topic).strip() if topic is not None else None)


def style_prompt_spec(gen_cfg, style: str) -> PromptSpec:
    """The :class:`PromptSpec` of ``style`` from ``gen_cfg.prompts`` (a GenerationConfig); default if absent."""
    pc = (getattr(gen_cfg, "prompts", None) or {}).get(style)
    if pc is None:
        return prompt_spec(style)
    return prompt_spec(style, pc.family, pc.variant, pc.audience, pc.topic)


def _instruction(style: str, spec: PromptSpec) -> tuple[str, str, str]:
    """(instruction, base header, base response prefix) of ``spec``."""
    if spec.family == "default":
        header, prefix = _BASE_HEADER[style]
        return _INSTRUCTIONS[style], header, prefix
    text, header, prefix = _FAMILIES[spec.family][spec.variant]
    if spec.family == "cosmopedia":
        audience = COSMOPEDIA_AUDIENCES[spec.audience] if spec.audience else ""
        topic = f" Relate it to the topic \"{spec.topic}\"." if spec.topic else ""
        text = text.format(audience=audience, topic=topic)
    return text, header, prefix


@dataclass(frozen=True)
class Prompt:
    """One rendered generation prompt.

    ``text`` is what the tokenizer encodes: with ``add_special_tokens=True`` for ``base`` (adds BOS),
    ``False`` for ``chat`` (the template already contains them). ``response_prefix`` is the start of
    the answer already in the prompt; it is prepended to the generated text.
    """

    text: str
    format: str
    add_special_tokens: bool
    response_prefix: str = ""
    stop: tuple[str, ...] = ()


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(prompt_format: str, tokenizer) -> str:
    """``auto`` → ``chat`` if the tokenizer has a chat template else ``base``.

    Raises:
        MegasynthError: ``chat`` requested for a tokenizer without a chat template, or unknown format.
    """
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "base"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise MegasynthError("generation.prompt_format: chat needs a tokenizer with a chat template "
                             "(this generator has none; use base or auto)")
    if prompt_format not in ("base", "chat"):
        raise MegasynthError(f"generation.prompt_format: must be auto, base or chat, got {prompt_format!r}")
    return prompt_format


def build_prompt(style: str, document: str, prompt_format: str, tokenizer=None,
                 spec: Optional[PromptSpec] = None) -> Prompt:
    """Render the ``style`` prompt for one document excerpt in ``prompt_format`` (``base``/``chat``).

    ``spec`` chooses the prompt family (default: :func:`prompt_spec` of ``style``, today's prompt).
    ``tokenizer`` is needed for ``chat`` (``apply_chat_template``).

    Raises:
        MegasynthError: unknown style or format, or ``chat`` without a chat template.
    """
    if style not in _INSTRUCTIONS:
        raise MegasynthError(f"generation.styles: unknown style {style!r} (known: {', '.join(_INSTRUCTIONS)})")
    instruction, header, prefix = _instruction(style, spec or prompt_spec(style))
    document = document.strip()
    if prompt_format == "base":
        text = f"{instruction}\n\nPassage:\n{document}\n\n{header}{prefix}"
        return Prompt(text, "base", True, prefix, tuple(BASE_STOP))
    if prompt_format == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise MegasynthError("generation.prompt_format: chat needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": f"{instruction}\n\nPassage:\n{document}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prompt(text, "chat", False)
    raise MegasynthError(f"generation.prompt_format: must be base or chat here, got {prompt_format!r}")
