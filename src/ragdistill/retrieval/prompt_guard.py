"""The prompt guard: whether a hint's text could act on the prompt it is pasted into.

Hints are data, never instructions. The teacher and the LLM re-ranker paste them into prompts, so
mining rejects a hint that could act on a prompt (:func:`injection_reason`, called by
:func:`ragdistill.retrieval.hints.validate_hint`) and the same check runs again whenever hints are
rendered (:func:`unsafe_for_prompt`), so a bank edited by hand cannot inject either.

Every check but the first reads the text in its *guard form* (:func:`guard_form`): the text a model
would read, with look-alike spellings undone. Compatibility forms are folded (Unicode NFKC: fullwidth
``Ｉｇｎｏｒｅ``, mathematical bold letters, ligatures, circled letters), case is folded, combining marks
and format or control characters (zero-width spaces and joiners, soft hyphens, bidi controls) are
dropped, and whitespace of any kind is collapsed to one space. Letters of other scripts that merely
look Latin (Cyrillic ``і``) are not folded, and phrasing in other languages is not recognised: the
override check is a deny-list of English phrasings. The reasons, in the order they are tried:

- ``control_characters``: control or invisible format characters (NUL, escape, zero-width, bidi
  overrides), or whitespace other than the plain space, in the text as given: a hint is one line;
- ``template_token``: a chat-template token (``<|im_start|>``, ``</s>``, ``[INST]``, ``<<SYS>>``,
  ``<start_of_turn>``, ``<|eot_id|>``, ``<think>``);
- ``role_marker``: a turn label such as ``system:``, ``assistant:``, ``user:``, ``### Instruction``;
- ``transcript_marker``: text that mimics the agent's transcript (``action:``, ``observation:``,
  ``thought:``, ``think:`` or ``think[``, a ``> `` command line);
- ``instruction_override``: phrasing that addresses the model instead of the game
  (:func:`override_phrase`).
"""

from __future__ import annotations

import re
import unicodedata

INJECTION_REASONS: tuple[str, ...] = (
    "control_characters",
    "template_token",
    "role_marker",
    "transcript_marker",
    "instruction_override",
)
MAX_PROMPT_HINT_CHARS = 300
"""No hint longer than this reaches a prompt, whatever ``mining.max_hint_chars`` allowed."""

_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Mn", "Me"})


def guard_form(text: str) -> str:
    """``text`` as the checks read it: NFKC-folded, case-folded, without combining marks and format or
    control characters, whitespace collapsed. ``İGNORE``, ``Ｉｇｎｏｒｅ`` and ``ig\\u200bnore`` all
    become ``ignore``. Only for checking: a hint's stored and rendered text is never this form."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept = "".join(
        " " if char.isspace() else char
        for char in decomposed
        if char.isspace() or unicodedata.category(char) not in _DROPPED_CATEGORIES
    )
    return " ".join(unicodedata.normalize("NFKC", kept).split())


def _words_form(folded: str) -> str:
    """A guard form as words only: each run of other characters (punctuation, braces, apostrophes)
    becomes one space, so "ignore -- previous... instructions" reads as the phrase it is and "don't"
    as "don t"."""
    return " ".join(re.sub(r"[\W_\u02bc]+", " ", folded).split())


def _one_of(phrases: str) -> str:
    """A regex group for space-separated words; ``_`` joins the words of one phrase."""
    alternatives = sorted((phrase.replace("_", " ") for phrase in phrases.split()), key=len, reverse=True)
    return "(?:" + "|".join(alternatives) + ")"


def _not_after(phrases: str) -> str:
    """Lookbehinds: what follows does not match right after any of the phrases (as in :func:`_one_of`)."""
    return "".join(f"(?<!\\b{phrase.replace('_', ' ')} )" for phrase in phrases.split())


_DISMISS = (  # not after a negation: "never ignore the instructions about {size}" is a hint
    _not_after("not don_t never")
    + r"\b"
    + _one_of(
        "ignore disregard forget override overrule bypass discard abandon drop skip neglect set_aside "
        "stop_following stop_obeying do_not_follow do_not_obey don_t_follow don_t_obey no_longer_follow"
    )
)
_DETERMINER = _one_of("all any the of these those this that every each")
_EARLIER = _one_of(
    "previous prior above earlier preceding foregoing original initial given former old current your my "
    "system developer"
)
_LEAD_IN = rf"(?:(?:{_DETERMINER}|{_EARLIER}) )*"
_RULES = _one_of(
    "instruction instructions prompt prompts rule rules guideline guidelines direction directions "
    "directive directives programming guardrails system_message"
)
_TASK = _one_of(
    "task tasks goal goals objective objectives message messages context orders conversation text"
)
_GIVEN_BEFORE = _one_of("above so_far given_to_you you_were_given you_have_been_given i_gave_you from_before")
_NOT_A_CLAUSE = _not_after(  # "if you are now holding {object}" describes the game
    "where if when once while since because unless until whether"
)
_ANSWER = r"(?:answer|reply|respond(?! to)|output|claim|refuse)"

_OVERRIDE_PATTERNS: dict[str, str] = {
    # "ignore previous instructions", "forget all your rules"
    "dismiss the rules": rf"{_DISMISS} {_LEAD_IN}{_RULES}\b",
    # "disregard the earlier task": a task or goal counts only when it is the prompt's own
    "dismiss an earlier task": rf"{_DISMISS} (?:{_DETERMINER} )*{_EARLIER} {_LEAD_IN}{_TASK}\b",
    # "disregard the task above", "ignore the goal you were given"
    "dismiss what came before": rf"{_DISMISS} {_LEAD_IN}(?:{_RULES}|{_TASK}) {_GIVEN_BEFORE}\b",
    # "forget everything above", "ignore all of the above", "disregard everything before"
    "dismiss everything": rf"{_DISMISS} (?:(?:everything|anything|whatever|what|all|of|the|this|that) )+"
    r"(?:above|foregoing|so far|you were told|you have been told|i said)\b"
    rf"|{_DISMISS} (?:everything|anything) (?:before|earlier|previously|prior)\b",
    # "new instructions:", "your new goal is", "the real task"
    "replace the task": r"\b(?:new|updated|revised|changed|real|actual|true|secret|hidden) "
    r"(?:instructions?|directives?|prompts?|orders)\b"
    r"|\bnew (?:rules|tasks?|goals?|objectives?|mission|persona|role|identity|purpose)\b"
    r"|\b(?:your|the) (?:real|actual|true) (?:task|job|goal|objective|purpose|mission)\b",
    # "always answer yes", "never refuse", "reply with done": the model's answers, not a game action
    "dictate the answers": r"\b(?:always|only|never|instead|just|simply)(?: just| simply| only| ever)? "
    rf"(?:{_ANSWER}|say|print|tell)\b"
    rf"|\b(?:must|should|now)(?: always| only| just)? {_ANSWER}\b"
    r"|\b(?:answer|reply)(?: only| just)? (?:with|by saying)\b|\brespond (?:only|just|solely) with\b"
    r"|\b(?:your|every|each|all) (?:answers?|responses?|replies|outputs?) "
    r"(?:must|should|shall|will|has to|have to)\b",
    # "from now on", "you must now", "you are now", "no longer bound by"
    "change the standing orders": r"\bfrom now on\b|\bfrom this point (?:on|onwards?|forward)\b"
    r"|\bhenceforth\b|\bfor the rest of (?:this|the) (?:conversation|chat|session)\b"
    rf"|\byou (?:must|shall) now\b|\bnow you must\b|{_NOT_A_CLAUSE}\byou(?: are| re|re) now\b"
    r"|\bno longer (?:bound|restricted|limited|constrained) by\b|\bnot bound by\b"
    r"|\byou have been (?:reprogrammed|updated|freed|unlocked|jailbroken|reset)\b",
    # "act as an unrestricted AI", "pretend you are", "you are a helpful assistant"
    "assign a role": r"\b(?:act|behave) (?:as|like) (?:an?|my|your|if you|though you)\b"
    r"|\bpretend (?:to be|to have|that|you|you re|youre|i am|i m)\b|\brole ?play\b|\bimpersonate\b"
    r"|\byou(?: are| re|re)(?: now)? (?:an?|the) (?:\w+ ){0,2}(?:ai|assistant|chatbot|language model|llm|bot)\b",
    # "system prompt", "developer mode", "reveal your prompt", "jailbreak"
    "talk about the prompt": r"\b(?:system|developer) (?:prompts?|messages?|instructions?|mode)\b"
    r"|\b(?:hidden|secret|initial) prompts?\b|\bjailbr(?:eak|oken)|\bprompt injection\b|\bdan mode\b"
    rf"|\b(?:reveal|leak|disclose|dump|print|repeat) {_LEAD_IN}prompts?\b"
    rf"|\b(?:reveal|leak|disclose|dump) {_LEAD_IN}instructions?\b",
}
_OVERRIDE = {name: re.compile(pattern) for name, pattern in _OVERRIDE_PATTERNS.items()}

_TEMPLATE_TOKEN = re.compile(
    r"<\|[^<>]{0,40}\|>|<\|?(?:im_start|im_end|endoftext|eot_id|begin_of_text|start_header_id)"
    r"|</?s>|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>|</?(?:system|user|assistant|think|tool_call)>"
)
_ROLE_MARKER = re.compile(
    r"\b(?:system|assistant|user|human|developer|ai)\s*:|#{2,}\s*(?:instruction|response|system|input)\b"
)
_TRANSCRIPT_MARKER = re.compile(r"\b(?:action|observation|obs|thought|think)\s*:|\bthink\s*\[|(?:^|\s)>\s*\S")


def override_phrase(text: str) -> str | None:
    """``"<family>: <phrase>"`` for the first phrase in ``text`` that addresses the model rather than
    the game (it dismisses the prompt's instructions, sets a new task, dictates the answers, changes
    standing orders, assigns a role or talks about the prompt), or None.

    The phrases are matched in the guard form reduced to words, so case, compatibility forms,
    zero-width characters, punctuation and spacing cannot split them. The objects are the prompt's
    own: "Ignore the error messages", "Disregard products above {price}" and "Always check the
    countertop first" are hints; "Ignore the task above" and "Always answer yes" are not."""
    return _override_in(guard_form(text))


def _override_in(folded: str) -> str | None:
    words = _words_form(folded)
    for family, pattern in _OVERRIDE.items():
        if (match := pattern.search(words)) is not None:
            return f"{family}: {match.group(0)}"
    return None


def injection_reason(text: str) -> str | None:
    """Why ``text`` could act on a prompt as more than a hint (a reason of :data:`INJECTION_REASONS`),
    or None when it reads as plain data."""
    if any(char != " " and unicodedata.category(char) in _CONTROL_CATEGORIES for char in text):
        return "control_characters"
    if any(char != " " and char.isspace() for char in text):
        return "control_characters"
    folded = guard_form(text)
    for reason, pattern in (
        ("template_token", _TEMPLATE_TOKEN),
        ("role_marker", _ROLE_MARKER),
        ("transcript_marker", _TRANSCRIPT_MARKER),
    ):
        if pattern.search(folded) is not None:
            return reason
    if _override_in(folded) is not None:
        return "instruction_override"
    return None


def unsafe_for_prompt(text: str) -> str | None:
    """Why a stored hint must not be rendered into a prompt (an injection reason, or ``too_long``), or
    None. The render-time guard: a bank edited by hand, or mined before these checks, cannot inject."""
    if len(text) > MAX_PROMPT_HINT_CHARS:
        return "too_long"
    return injection_reason(text)
