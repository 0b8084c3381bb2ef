"""From token ids to the text a client sees: incremental decoding, stop sequences and the chat
template that turns messages into a prompt.

Byte-level BPE can split one character over several tokens, so text is released only once it
decodes cleanly; text that could be the start of a stop sequence is held back until it is known
not to be one (as OpenAI's API never shows the stop sequence itself).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

__all__ = ["CHAT_TEMPLATE", "TURN_ENDS", "TextStream", "chat_prompt"]

CHAT_TEMPLATE = "{role}: {content}\n"  # one line per message, then "assistant:" for the answer
TURN_ENDS = ("\nuser:", "\nsystem:")  # where an answer ends: the model starting another turn


def chat_prompt(messages: Sequence[dict]) -> str:
    """The prompt for a list of ``{"role", "content"}`` messages: each as ``role: content`` on its
    own line, then ``assistant:`` for the model to continue. A small model has no chat training;
    the template is documented so that what it sees is no secret."""
    roles = ("system", "user", "assistant", "developer", "tool")
    lines = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in roles:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(roles)}, got {role!r}")
        if content is None and role == "assistant":  # a turn that only called tools (the calls are not shown)
            content = ""
        if isinstance(content, list):  # OpenAI's content parts: the text ones are read
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        lines.append(CHAT_TEMPLATE.format(role=role, content=content))
    if not lines:
        raise ValueError("messages must hold at least one message")
    return "".join(lines) + "assistant:"


class TextStream:
    """Feed token ids one at a time; get back the text that is now safe to show, and learn when a
    stop sequence has appeared (``stopped``)."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        # ids[:read] are in ``text``; each push decodes only ids[prefix:], the ones since the last
        # release with the release before them as context (a decoder drops a leading space at the start
        # of what it decodes: the context takes that). Decoding all ids every token cost O(n²) a stream.
        self.prefix = self.read = 0
        self.shown = 0  # characters of the decoded text already released
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """The new text that may be shown after ``token`` ('' while it is held back)."""
        self.ids.append(token)
        if not self._decode(partial=False):  # a character still incomplete: wait for its other bytes
            return ""
        text = self.text
        for s in self.stop:
            at = text.find(s, max(0, self.shown - len(s) + 1))
            if at != -1:
                self.stopped = True
                return self._release(at)
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._release(len(text) - hold)

    def flush(self) -> str:
        """What was held back, once generation has ended without a stop sequence (a character left
        incomplete by the last token shows as U+FFFD)."""
        if self.stopped:
            return ""
        self._decode(partial=True)
        return self._release(len(self.text))

    def _decode(self, partial: bool) -> bool:
        """Add the text of the ids not yet in ``text``; False (and nothing added) if it ends in an
        incomplete character, unless ``partial``."""
        context = self.tokenizer.decode(self.ids[self.prefix : self.read])
        window = self.tokenizer.decode(self.ids[self.prefix :])
        if window.endswith("\ufffd") and not partial:
            return False
        if not window.startswith(context):  # a decoder that rewrites earlier text given later tokens
            self.text, self.prefix, self.read = self.tokenizer.decode(self.ids), self.read, len(self.ids)
            return True
        added = window[len(context) :]
        self.text += added
        if added:  # ids that added no text (a skipped special token) stay in the context, which must show text
            self.prefix = self.read
        self.read = len(self.ids)
        return True

    def _release(self, upto: int) -> str:
        new = self.text[self.shown : upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return new
