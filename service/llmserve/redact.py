"""Redaction of personal data and secrets in logged prompt text, in linear time.

Masks e-mail addresses `[EMAIL]`, phone numbers `[PHONE]`, payment card numbers that pass
the Luhn check `[CARD]`, Chinese resident identity numbers with a valid check digit
(GB 11643) `[ID]`, and whatever is shaped like an API key or a bearer token `[SECRET]`.

Each regular expression here is one character class repeated, with nothing after it, so
the engine never backtracks; it finds maximal runs, and every run is then checked in
Python. The work is linear in the length of the text, whatever the text holds.
"""

from __future__ import annotations

import re

# Runs of characters that make up e-mail addresses, keys and tokens.
_WORD_RE = re.compile(r"[A-Za-z0-9._%+\-@/=~]+")
# Runs that may be phone or card numbers (digits with the usual separators).
_NUMBER_RE = re.compile(r"[0-9+(][0-9 ()+.\-]*")

_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_DIGITS = frozenset("0123456789")
# Prefixes of well-known key formats (OpenAI-style, Stripe, GitHub, GitLab, Slack,
# Hugging Face, AWS access key ids); what follows must be 16 or more token characters.
_KEY_PREFIXES = (
    "sk-",
    "sk_",
    "pk_",
    "rk_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "hf_",
    "AKIA",
)
# `name=value` where the value is a secret whatever its shape.
_SECRET_NAMES = frozenset(
    {"api_key", "apikey", "api-key", "access_token", "token", "secret", "password", "passwd"}
)
# A run of token characters at least this long, with letters and digits, is a key.
_GENERIC_KEY_LEN = 32
# Shorter words hold no key (a prefix and 16 characters) and no identity number (18).
_SHORTEST = 18
# GB 11643: weights of the first 17 digits, and the check character for sum mod 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cn_id_ok(value: str) -> bool:
    """An 18-character Chinese resident identity number with a valid check character."""
    if len(value) != 18 or not all(ch in _DIGITS for ch in value[:17]):
        return False
    total = sum(int(ch) * w for ch, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == value[17].upper()


def _is_email(local: str, domain: str) -> bool:
    labels = domain.split(".")
    return (
        bool(local)
        and len(labels) >= 2
        and all(label and set(label) <= _LABEL for label in labels)
        and len(labels[-1]) >= 2
        and labels[-1].isalpha()
    )


def _email_span(word: str) -> tuple[int, int] | None:
    """Where in `word` an e-mail address is, if it holds one."""
    at = word.find("@")
    if at <= 0 or word.count("@") != 1:
        return None
    start = at
    while start > 0 and word[start - 1] in _LOCAL:
        start -= 1
    end = at + 1
    while end < len(word) and (word[end] in _LABEL or word[end] == "."):
        end += 1
    while start < at and word[start] == ".":  # a local part does not start with a dot
        start += 1
    domain = word[at + 1 : end].rstrip(".")
    if not _is_email(word[start:at], domain):
        return None
    return start, at + 1 + len(domain)


def _is_key(token: str) -> bool:
    if len(token) < _SHORTEST:
        return False
    for prefix in _KEY_PREFIXES:
        if token.startswith(prefix):
            rest = token[len(prefix) :]
            return len(rest) >= 16 and set(rest) <= _TOKEN
    return (
        len(token) >= _GENERIC_KEY_LEN
        and set(token) <= _TOKEN
        and any(ch in _DIGITS for ch in token)
        and any(ch.isalpha() for ch in token)
    )


def _is_jwt(word: str) -> bool:
    parts = word.split(".")
    return (
        word.startswith("eyJ")
        and len(parts) == 3
        and all(part and set(part) <= _TOKEN for part in parts[:2])
        and set(parts[2]) <= _TOKEN
    )


def _mask_word(word: str, after_bearer: bool) -> str:
    if not after_bearer and len(word) < _SHORTEST and "@" not in word and "=" not in word:
        return word  # too short for any key, token or identity number
    core = word.rstrip(".")
    tail = word[len(core) :]
    if not core:
        return word
    if after_bearer or _is_jwt(core):
        return "[SECRET]" + tail
    name, eq, value = core.partition("=")
    if eq and value and name.lower() in _SECRET_NAMES:
        return name + "=[SECRET]" + tail
    span = _email_span(core)
    if span is not None:
        return core[: span[0]] + "[EMAIL]" + core[span[1] :] + tail
    if cn_id_ok(core):
        return "[ID]" + tail
    # Keys among the parts a URL, a path or an assignment is made of.
    parts = re.split(r"([./=%~@+])", core)  # a one-character class: no backtracking
    masked = ["[SECRET]" if _is_key(part) else part for part in parts]
    return "".join(masked) + tail


def _redact_words(text: str) -> str:
    out: list[str] = []
    pos = 0
    previous = ""
    for match in _WORD_RE.finditer(text):
        start, end = match.span()
        gap = text[pos:start]
        word = match.group(0)
        after_bearer = previous.lower() == "bearer" and gap.isspace()
        out.append(gap)
        out.append(_mask_word(word, after_bearer))
        previous = word
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _number_kind(run: str) -> str | None:
    digits = "".join(ch for ch in run if ch in _DIGITS)
    if 13 <= len(digits) <= 19 and set(run) <= _DIGITS | {" ", "-"} and luhn_ok(digits):
        return "[CARD]"
    if not 7 <= len(digits) <= 15:
        return None
    if run.count(".") == 1 and set(run) <= _DIGITS | {"."}:
        return None  # a decimal number
    pieces = run.split("-")
    if [len(p) for p in pieces] == [4, 2, 2] and all(p.isdigit() for p in pieces):
        return None  # an ISO date
    return "[PHONE]"


def _redact_numbers(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _NUMBER_RE.finditer(text):
        start, run = match.start(), match.group(0)
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            # Glued to a word: a number may begin after the run's first separator.
            cut = next((i for i, ch in enumerate(run) if ch not in _DIGITS), len(run))
            start, run = start + cut, run[cut:]
            skip = next((i for i, ch in enumerate(run) if ch in _DIGITS), len(run))
            start, run = start + skip, run[skip:]
        last = max((i for i, ch in enumerate(run) if ch in _DIGITS), default=-1)
        if last < 0:
            continue
        run = run[: last + 1]  # the number ends at its last digit
        end = start + len(run)
        after = text[end] if end < len(text) else " "
        if after.isalnum() or after == "_":
            continue
        kind = _number_kind(run)
        if kind is None:
            continue
        out.append(text[pos:start])
        out.append(kind)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """Mask e-mail addresses, phone and card numbers, identity numbers and secrets."""
    return _redact_numbers(_redact_words(text))
