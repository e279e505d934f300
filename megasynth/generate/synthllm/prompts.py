"""SynthLLM prompts (rating, concept extraction, question, answer), base and chat formats.

After Qin et al. 2025 (SynthLLM, "Scaling Laws of Synthetic Data for Language Models"), in our own
words: the rating prompt is an educational-value score on a 1-5 scale in the spirit of FineWeb-Edu
(Penedo et al. 2024); extraction asks for topics and key concepts as JSON; the question prompt asks for
a new, self-contained question that needs the given concepts together, grounded in reference excerpts
(level 1: one document; level 2: a subset of one document's concepts; level 3: concepts from several
documents); the answer prompt asks for a complete step-by-step solution.

Formats as in :mod:`megasynth.generate.prompts`: ``base`` ends with a header that starts the answer
(``response_prefix`` is prepended to the output), ``chat`` renders one user message with the
tokenizer's chat template. Bump :data:`PROMPT_VERSIONS` when a text changes; records carry them.
"""

from __future__ import annotations

from megasynth.generate.prompts import Prompt, has_chat_template
from megasynth.utils import MegasynthError

PROMPT_VERSIONS = {"score": "synthllm-score-v1", "extract": "synthllm-extract-v2",
                   "question": "synthllm-question-v2", "answer": "synthllm-answer-v1"}

_SCORE = (
    "Rate how useful the passage below is for teaching a student something new, on a scale from 1 to 5: "
    "1 = no educational value (spam, lists, boilerplate), 2 = little, 3 = some useful facts or ideas, "
    "4 = clearly educational and coherent, 5 = excellent, like a textbook. "
    'Reply with JSON only, in the form {"score": N}.'
)
_EXTRACT = (
    "Read the passage below and list its main topics (at most 3) and its key concepts (at most {n}). "
    "Write each one as a short canonical term of 1 to {w} words, the way it would appear in the index of a "
    "textbook: a noun or noun phrase in the singular, without articles, opinions or whole sentences, naming an "
    "idea, method, event, law, institution or technical term. Use the most common general name of each concept, "
    'so that other passages about the same concept would use the same term. Reply with JSON only, in the form '
    '{{"topics": ["..."], "concepts": ["...", "..."]}}.'
)
_QUESTION = {
    1: ("Using the reference passage below, write one new, self-contained question or problem that tests a "
        "deep understanding of its key concepts: {concepts}. The question must be answerable from the "
        "concepts, must not copy sentences from the passage, and must not mention 'the passage'."),
    2: ("Write one new, self-contained question or problem that can only be solved by combining all of "
        "these concepts from the reference passage below: {concepts}. Do not copy sentences from the "
        "passage and do not mention 'the passage'."),
    3: ("The concepts {concepts} come from different documents, excerpts of which are given below. "
        "Write one new, self-contained question or problem that requires connecting all of these concepts "
        "in a single line of reasoning. Do not copy sentences from the excerpts and do not mention them."),
}
_QUESTION_ONLY = " Write only the question itself: no answer, no solution, no hints and no second question."
_ANSWER = ("Answer the question below with a complete, correct solution that explains each step of the "
           "reasoning. The reference excerpts may help.")

BASE_STOP = ["\nPassage:", "\nQuestion:", "\nReference"]



def _render(instruction: str, body: str, fmt: str, header: str, prefix: str, tokenizer) -> Prompt:
    if fmt == "base":
        return Prompt(f"{instruction}\n\n{body}\n\n{header}{prefix}", "base", True, prefix, tuple(BASE_STOP))
    if fmt == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise MegasynthError("generation.prompt_format: chat needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\n\n{body}"}],
                                             tokenize=False, add_generation_prompt=True)
        return Prompt(text, "chat", False)
    raise MegasynthError(f"generation.prompt_format: must be base or chat here, got {fmt!r}")


def _references(excerpts: list[str]) -> str:
    if len(excerpts) == 1:
        return f"Passage:\n{excerpts[0].strip()}"
    return "\n\n".join(f"Reference {i + 1}:\n{e.strip()}" for i, e in enumerate(excerpts))


def score_prompt(document: str, fmt: str, tokenizer=None) -> Prompt:
    """The 1-5 educational-value rating prompt for one excerpt."""
    return _render(_SCORE, f"Passage:\n{document.strip()}", fmt, "Rating (JSON): ", "", tokenizer)


def extract_prompt(document: str, max_concepts: int, fmt: str, tokenizer=None, max_words: int = 4) -> Prompt:
    """The topic/concept extraction prompt for one excerpt (JSON answer, see :mod:`.concepts`): terms of 1 to
    ``max_words`` words."""
    return _render(_EXTRACT.format(n=max_concepts, w=max_words), f"Passage:\n{document.strip()}", fmt, "JSON: ",
                   "", tokenizer)


def question_prompt(level: int, concepts: list[str], excerpts: list[str], fmt: str, tokenizer=None) -> Prompt:
    """The question prompt of a level-``level`` combination grounded in reference ``excerpts``.

    Raises:
        MegasynthError: unknown level.
    """
    if level not in _QUESTION:
        raise MegasynthError(f"generation.synthllm.samples_per_level: unknown level {level}")
    listed = ", ".join(f'"{c}"' for c in concepts)
    return _render(_QUESTION[level].format(concepts=listed) + _QUESTION_ONLY, _references(excerpts), fmt,
                   "New question:\n", "", tokenizer)


def answer_prompt(question: str, excerpts: list[str], fmt: str, tokenizer=None) -> Prompt:
    """The answer prompt for a generated ``question`` with its reference ``excerpts``."""
    body = f"{_references(excerpts)}\n\nQuestion:\n{question.strip()}"
    return _render(_ANSWER, body, fmt, "Solution:\n", "", tokenizer)
