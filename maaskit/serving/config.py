"""Every serving default, written once: :class:`ServeConfig` is what ``maaskit serve`` parses into,
what :func:`~maaskit.serving.runner.serve` and ``serve_workers`` build from, and what each
``--workers`` process reads back. Pure data: the CLI's help needs no PyTorch.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..lm.runtime.backend import EngineConfig

__all__ = ["ServeConfig", "options"]

_ENVIRONMENT = "MAASKIT_SERVE_CONFIG"  # how --workers hands the config to each worker process


def _option(default: Any, help: str, *, cli: bool = True, **argparse: Any) -> Any:
    """A field with its help, as ``maaskit serve --help`` and ``serve()``'s documentation show it
    (``cli=False``: set from Python only; ``argparse``: more of the option's settings, e.g. choices)."""
    return field(default=default, metadata={"help": help, "cli": cli, **argparse})


@dataclass(frozen=True)
class ServeConfig:
    """How a server listens, who may call it, and how its models batch.

    Batching: a request that finds the model idle runs at once, those arriving while it is busy share
    the next pass (up to ``max_batch_size`` images); ``max_delay_ms`` adds a wait for company; past
    ``max_queue`` waiting images the answer is 503 with ``Retry-After``. ``max_sequences``: a language
    model's sequences sharing each decode step (continuous batching; 1 runs them one at a time).
    ``inline``: run cheap passes on the event loop's thread ("auto": when they take under a
    millisecond). ``workers``: server processes sharing the socket (each gets its share of the cores).
    ``drain_seconds``: how long a stopping server lets admitted requests finish (see
    :mod:`~maaskit.serving.drain`); token streams still running then end with an error event.

    Language models: ``dtype`` of the weights and cache ("auto": the checkpoint's own; on a CPU,
    bfloat16 only where it has fast bfloat16 products, else float32); ``context``: positions a Hugging
    Face model's cache holds (its own limit is often far more than a small machine needs);
    ``kv_cache_gb``: memory for the sequences' caches, which caps ``max_sequences`` (None:
    ``max_sequences`` slots); ``prefill_chunk``: prompt tokens computed per step, at most (vLLM's
    ``max_num_batched_tokens``; None: measured, :mod:`maaskit.lm.runtime.backend.budget`);
    ``prefill_stall``: fewer beside running streams, sized by time, so that such a step costs at most
    ``1 + prefill_stall`` decode steps (0: off, always up to ``prefill_chunk``);
    ``prefix_cache_gb``: memory for shared prompt prefixes (0: off).

    ``threads``: PyTorch threads for each process's forward passes (None: shared among ``workers``, all
    cores but one, which the event loop needs; all cores for a language model of 32 MiB of weights or
    more, whose decode steps are long). ``compile``: language models' forward passes run through
    ``torch.compile`` (:mod:`maaskit.lm.runtime.backend.compiled`), built in the background while the eager
    pass serves (None: on, unless the environment says ``MAASKIT_COMPILE=0``).
    """

    host: str = _option("127.0.0.1", "address to bind (loopback: only this machine)")
    # serve() in a notebook passes 0 (any free port): see runner.NOTEBOOK_DEFAULTS
    port: int = _option(8000, "port to listen on (0: any free one)")
    token: str | None = _option(None, "require 'Authorization: Bearer TOKEN' (or set MAASKIT_TOKEN)")
    api_keys: str | None = _option(
        None,
        'a JSON file [{"name", "key", "rpm", "tpm"}, ...]: keys accepted, with per-key quotas (default: '
        "$MAASKIT_API_KEYS, if set)",
        metavar="FILE",
    )
    allow_insecure: bool = _option(False, "bind a non-loopback address without a token")
    device: str = _option("auto", "auto, cpu, cuda, cuda:N or mps")
    max_batch_size: int = _option(32, "most images in one forward pass")
    max_delay_ms: float = _option(
        0.0,
        "extra wait for other requests to share a forward pass (0: a request that finds the model idle runs at "
        "once; those arriving while it is busy share the next pass anyway)",
    )
    max_queue: int = _option(1024, "images that may wait; past that the answer is 503 + Retry-After")
    inline: bool | str = _option("auto", "run cheap passes on the event loop's thread", cli=False)
    max_sequences: int = _option(
        16, "a language model's sequences sharing each decode step (continuous batching; 1: one at a time)"
    )
    model_repository: str | None = _option(
        None,
        "a directory of model folders, loadable and unloadable through /v2/repository (Triton's); with no "
        "DIR, all of them are served",
        metavar="DIR",
    )
    name: str | None = _option(None, "the model's name (one model only; default: from its manifest)")
    max_body_bytes: int = _option(32 * 1024 * 1024, "the largest request body", cli=False)
    workers: int = _option(1, "server processes (for CPU-bound models)")
    log_level: str = _option("warning", "the server's log", choices=("critical", "error", "warning", "info", "debug"))
    access_log: bool = _option(False, "log every request (off by default: it costs time on every request)")
    drain_seconds: float = _option(  # under Kubernetes' default 30 s grace, with room for the rest of the stop
        20.0,
        "on SIGTERM or Ctrl-C, how long requests in flight may finish (streams still running then end with an "
        "error event); the same signal again stops at once",
    )
    dtype: str = _option(
        "auto",
        "a language model's weights and cache (auto: the checkpoint's own; on a CPU without fast bfloat16 "
        "products, float32)",
        choices=("auto", "float32", "bfloat16"),
    )
    context: int = _option(2048, "positions a Hugging Face model's cache holds (at most the model's own limit)")
    kv_cache_gb: float | None = _option(
        None,
        "memory for the sequences' key/value caches; fewer slots than --max-sequences if it holds fewer (more "
        "requests wait their turn); default: --max-sequences slots",
    )
    # unpaced by default: paced (stall 0.5), prompts of 512 tokens at 16 streams got 0.4x vLLM's tokens/s and
    # 6-7x its time to first token (benchmarks/FIGURES.md, "prefill pacing"); the budget is measured rather than
    # vLLM's 2,048: prompts arriving together then get their first tokens one after another, not all at the end
    # of one long step (benchmarks/FIGURES.md, "prefill budget")
    prefill_chunk: int | None = _option(
        None,
        "prompt tokens computed per step, at most (a longer prompt is computed in chunks beside the streams); "
        "default: on a CPU, the fewest at which the model's products run at full speed, measured at start "
        "(256 for a 53M model on 2 cores), else 2048",
    )
    prefill_stall: float = _option(
        0.0,
        "fewer prompt tokens beside running streams, sized by time, so that a step with them costs at most 1 + "
        "this many decode steps: no long gap in a stream when a long prompt joins, at the price of tokens/s "
        "and time to first token when long prompts keep coming (0: off)",
    )
    prefix_cache_gb: float = _option(
        0.25, "memory for the keys and values of shared prompt prefixes, reused across requests (0: off)"
    )
    threads: int | None = _option(
        None,
        "PyTorch threads per process for forward passes (default, shared among --workers: all cores but one; all "
        "cores for a language model of 32 MiB or more)",
    )
    compile: bool | None = _option(
        None,
        "language models: compile the forward pass of every step with torch.compile, in the background: the "
        "server answers at once with the eager pass and switches when the compiled one is built (minutes on a "
        "CPU, both cores busy meanwhile; a copy of the weights per graph; needs a C++ compiler, else eager) "
        "(default: on, unless MAASKIT_COMPILE=0)",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_queue",
            "max_sequences",
            "workers",
            "max_body_bytes",
            "context",
            *(("prefill_chunk",) if self.prefill_chunk is not None else ()),  # None: measured
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a whole number of at least 1, got {self.threads!r}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be 0 or more, got {self.max_delay_ms!r}")
        if not self.drain_seconds >= 0:
            raise ValueError(f"drain_seconds must be 0 or more, got {self.drain_seconds!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.kv_cache_gb is not None and not self.kv_cache_gb > 0:
            raise ValueError(f"kv_cache_gb must be more than 0, got {self.kv_cache_gb!r}")
        if not self.prefill_stall >= 0:
            raise ValueError(f"prefill_stall must be 0 or more, got {self.prefill_stall!r}")
        if not self.prefix_cache_gb >= 0:
            raise ValueError(f"prefix_cache_gb must be 0 or more, got {self.prefix_cache_gb!r}")

    def but(self, **changes: Any) -> ServeConfig:
        return replace(self, **changes)

    def engine(self) -> EngineConfig:
        """What a language model's engine takes of these settings (:mod:`maaskit.lm.runtime.backend`)."""
        from ..lm.runtime.backend import EngineConfig

        compile = self.compile if self.compile is not None else os.environ.get("MAASKIT_COMPILE", "1") != "0"
        return EngineConfig(dtype=self.dtype, max_sequences=self.max_sequences, kv_cache_gb=self.kv_cache_gb,
                            prefix_cache_gb=self.prefix_cache_gb, prefill_chunk=self.prefill_chunk,
                            prefill_stall=self.prefill_stall or None, compile=compile)  # fmt: skip

    def check_exposure(self, *, has_keys: bool) -> None:
        """Refuse a public address that nothing protects: neither a token nor API keys (the same rule
        for one worker or many)."""
        if not _is_loopback(self.host) and self.token is None and not has_keys and not self.allow_insecure:
            raise ValueError(
                f"refusing to serve on {self.host} without a token or API keys: anyone who can reach it could "
                "use it. Pass token=... (maaskit serve --token) or API keys, or allow_insecure=True if you mean it"
            )

    def to_environment(self) -> None:
        """Leave this config where a worker process (started by uvicorn from an import string) finds it."""
        os.environ[_ENVIRONMENT] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(os.environ[_ENVIRONMENT]).items() if k in known})

    @staticmethod
    def clear_environment() -> None:
        os.environ.pop(_ENVIRONMENT, None)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def options() -> list[Field]:
    """ServeConfig's fields in order: what ``maaskit serve``'s options and ``serve()``'s keywords are made from."""
    return list(fields(ServeConfig))
