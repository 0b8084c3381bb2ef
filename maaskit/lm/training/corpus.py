"""Text to learn from, with nothing downloaded: by default the Python documentation's topics that
ship inside CPython (``pydoc_data.topics``, about 0.5 MB of English about Python), or any UTF-8 file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_corpus"]


def load_corpus(path: str | Path | None = None) -> str:
    """The text of ``path`` (UTF-8), or with none the documentation topics bundled with Python."""
    if path is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[name].strip() for name in sorted(topics))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no corpus file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text
