"""Redaction of e-mail addresses and phone numbers in logged prompt text."""

from __future__ import annotations

import re

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digits with optional +country code, brackets and separators; checked for 7-15 digits.
PHONE_RE = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{5,}\d(?!\w)")


def _phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "[PHONE]" if 7 <= digits <= 15 else match.group(0)


def redact(text: str) -> str:
    """Replace e-mail addresses with [EMAIL] and phone numbers with [PHONE]."""
    text = EMAIL_RE.sub("[EMAIL]", text)
    return PHONE_RE.sub(_phone, text)
