"""DeepSeek-R1 reasoning output: the part before `</think>` is `reasoning_content`.

R1 models (and their distills) think first, then answer; their chat template opens the
thinking (`<think>\\n` ends the prompt), and the model closes it with `</think>`. As vLLM's
`deepseek_r1` parser does, everything before `</think>` is reasoning, everything after
is content, and an output that never closes its thinking is all reasoning (content is
null). A `<think>` the model writes itself at the start is dropped.

`ReasoningSplitter` does this on a stream: pieces of text go in, (reasoning, content)
pieces come out, and a piece that may be the start of a tag is held back until the next
one tells.
"""

from __future__ import annotations

PARSERS = ("", "deepseek_r1")
START = "<think>"
END = "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    def __init__(self) -> None:
        self.thinking = True
        self.closed = False  # `</think>` seen
        self._held = ""
        self._at_start = True  # nothing but whitespace emitted as reasoning yet

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and the content `text` adds (either may be empty)."""
        text = self._held + text
        self._held = ""
        if not self.thinking:
            return "", text
        if self._at_start:
            stripped = text.lstrip()
            if START.startswith(stripped) and stripped != START:
                self._held = text  # may still become `<think>`
                return "", ""
            if stripped.startswith(START):
                text = stripped[len(START) :]
            if text.strip():
                self._at_start = False
        end = text.find(END)
        if end >= 0:
            self.thinking = False
            self.closed = True
            return text[:end], text[end + len(END) :]
        keep = _partial_suffix(text, END)
        if keep:
            self._held = text[-keep:]
            text = text[:-keep]
        return text, ""

    def flush(self) -> tuple[str, str]:
        """What was held back, once the output has ended."""
        held, self._held = self._held, ""
        return (held, "") if self.thinking else ("", held)


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(reasoning, content) of a whole output; content is None when thinking never ended."""
    splitter = ReasoningSplitter()
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.flush()
    reasoning += more_reasoning
    content += more_content
    return reasoning, content if splitter.closed else None
