"""The server's Prometheus metrics: requests, failures, latency, batch sizes and queueing; for
language models time to first token, inter-token latency, tokens generated (a counter: tokens/s is
``rate(maaskit_lm_generated_tokens_total[1m])``), running and waiting sequences and the cache slots
they hold; and per API key its requests, tokens and refusals (by the key's name, never the key).

With ``--workers N`` each worker process counts for itself and ``/metrics`` adds them up
(prometheus_client's multiprocess mode, switched on by ``PROMETHEUS_MULTIPROC_DIR``), so a
scrape sees the whole server whichever worker answers it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from .dataplane import ServedLanguageModel, ServedModel

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServerMetrics:
    # long: one statement per series the server exports, read as the list of them
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("maaskit_requests", "Inference requests answered", ["model", "protocol"], registry=r)
        self.failures = Counter("maaskit_request_failures", "Requests answered with an error", ["status"], registry=r)
        self.latency = Histogram(
            "maaskit_request_seconds", "Inference latency in the server", ["protocol"], registry=r, buckets=_SECONDS
        )
        self.batch_size = Histogram(
            "maaskit_batch_size", "Images per forward pass", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.forward = Histogram("maaskit_forward_seconds", "Forward pass time", registry=r, buckets=_SECONDS)
        self.queued = Histogram(
            "maaskit_queue_seconds", "Time a request waited for its forward pass", registry=r, buckets=_SECONDS
        )
        self.waiting = Gauge(
            "maaskit_queue_images", "Images waiting for a forward pass", registry=r, multiprocess_mode="livesum"
        )
        # one series per server process (a pid label with --workers): how many are up
        self.process = Gauge("maaskit_server_process", "1 per serving process", registry=r, multiprocess_mode="liveall")
        self.process.set(1)

        lm = ["model"]
        self.first_token = Histogram(
            "maaskit_lm_time_to_first_token_seconds", "Request to first token", lm, registry=r, buckets=_SECONDS
        )
        self.inter_token = Histogram(
            "maaskit_lm_inter_token_seconds", "Between one token of a sequence and the next", lm, registry=r,
            buckets=_SECONDS,
        )  # fmt: skip
        self.tokens = Counter("maaskit_lm_generated_tokens", "Tokens generated", lm, registry=r)
        self.running = Gauge(
            "maaskit_lm_running_sequences",
            "Sequences in the running batch",
            lm,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting_sequences = Gauge(
            "maaskit_lm_waiting_sequences", "Sequences waiting to join it", lm, registry=r, multiprocess_mode="livesum"
        )
        self.slots = Gauge(
            "maaskit_lm_cache_slots_used", "KV-cache slots held by a sequence", lm, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.abandoned = Counter(
            "maaskit_lm_abandoned_sequences", "Sequences stopped because their client left", lm, registry=r
        )
        self.prompt_tokens, self.prefix_queries, self.prefix_hits = (
            Counter(name, doc, lm, registry=r)
            for name, doc in (("maaskit_lm_prompt_tokens", "Prompt tokens admitted"),
                              ("maaskit_lm_prefix_cache_queries", "Prompt tokens looked up in the prefix cache"),
                              ("maaskit_lm_prefix_cache_hits", "Prompt tokens the prefix cache supplied"))
        )  # fmt: skip
        self.step_tokens = Histogram(
            "maaskit_lm_step_tokens", "Tokens an engine step computed, by kind (prompt chunks, decodes)",
            [*lm, "kind"], registry=r, buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        )  # fmt: skip
        self.cache_positions = Gauge(
            "maaskit_lm_kv_cache_positions_used", "Positions of the key/value cache holding a sequence's tokens",
            lm, registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.compiled = Gauge(
            "maaskit_lm_compiled", "1 once the compiled forward pass serves (--compile; built after the start)", lm,
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.vllm = _VLLMNames(r)
        self.key_requests = Counter("maaskit_api_key_requests", "Requests admitted, per API key", ["key"], registry=r)
        self.key_tokens = Counter("maaskit_api_key_tokens", "Tokens used, per API key", ["key", "kind"], registry=r)
        self.key_rejections = Counter(
            "maaskit_api_key_rate_limited", "Requests refused with 429, per API key", ["key"], registry=r
        )
        self._watched: set[int] = set()

    def watch_language_model(self, served: ServedLanguageModel) -> None:
        """Count what ``served``'s engine does (once per model)."""
        if id(served) in self._watched:
            return
        self._watched.add(id(served))
        engine, name = served.engine, served.name
        # the labelled series, looked up once: this runs for every token
        first, inter = self.first_token.labels(name), self.inter_token.labels(name)
        tokens = self.tokens.labels(name)  # tokens/s is Prometheus' rate() of this counter
        running, waiting = self.running.labels(name), self.waiting_sequences.labels(name)
        slots, positions = self.slots.labels(name), self.cache_positions.labels(name)
        dropped = self.abandoned.labels(name)
        prompts, queries, hits = (m.labels(name) for m in (self.prompt_tokens, self.prefix_queries, self.prefix_hits))
        v = self.vllm.labelled(name)
        prefix = engine.prefix_cache
        seen = [0, 0]  # the prefix cache's counts already added

        def listener(kind: str, value: float) -> None:
            if kind == "token":
                inter.observe(value)
                v.inter_token.observe(value)
                return
            if kind == "first_token":
                first.observe(value)
                v.first_token.observe(value)
                return
            if kind == "step":
                tokens.inc(value)
                v.tokens.inc(value)
            elif kind == "prompt":
                prompts.inc(value)
                v.prompt_tokens.inc(value)
            elif kind == "dropped":
                dropped.inc(value)
            running.set(engine.running)
            waiting.set(engine.waiting)
            slots.set(engine.slots_in_use)
            v.running.set(engine.running)
            v.waiting.set(engine.waiting)
            positions.set(in_cache := engine.cache_tokens)
            v.cache_usage.set(in_cache / (engine.max_sequences * engine.context))  # vLLM's: the share in use
            if prefix is not None and (prefix.queries, prefix.hits) != tuple(seen):
                for counter, alias, i, now in ((queries, v.prefix_queries, 0, prefix.queries),
                                               (hits, v.prefix_hits, 1, prefix.hits)):  # fmt: skip
                    counter.inc(now - seen[i])
                    alias.inc(now - seen[i])
                    seen[i] = now

        engine.listeners.append(listener)
        # what each step ran, from the engine's step records (maaskit.lm.runtime.engine.StepRecord)
        prompt_step, decode_step = self.step_tokens.labels(name, "prompt"), self.step_tokens.labels(name, "decode")

        def watcher(record: Any) -> None:
            prompt_step.observe(record.prompt_tokens)
            decode_step.observe(len(record.decodes))

        engine.watchers.append(watcher)
        if engine.compiling is not None:
            compiled = self.compiled.labels(name)
            engine.compiling.add_done_callback(lambda done: compiled.set(int(done.exception() is None)))

    def observe_batch(self, served: ServedModel, size: int, seconds: float, queued: list[float]) -> None:
        self.batch_size.observe(size)
        self.forward.observe(seconds)
        for q in queued:
            self.queued.observe(q)
        self.waiting.set(served.batcher.waiting)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class _VLLMNames:
    """The same language-model series under the names vLLM gives them (``vllm:...``, labelled by
    ``model_name``), so that a Grafana dashboard built for vLLM reads a maaskit server."""

    def __init__(self, r: CollectorRegistry):
        lm = ["model_name"]
        self.first_token = Histogram("vllm:time_to_first_token_seconds", "Time to first token", lm, registry=r,
                                     buckets=_SECONDS)  # fmt: skip
        self.inter_token = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency", lm, registry=r,
                                     buckets=_SECONDS)  # fmt: skip
        self.tokens = Counter("vllm:generation_tokens", "Generation tokens", lm, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens", lm, registry=r)
        self.running = Gauge("vllm:num_requests_running", "Requests running", lm, registry=r,
                             multiprocess_mode="livesum")  # fmt: skip
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", lm, registry=r,
                             multiprocess_mode="livesum")  # fmt: skip
        self.cache_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1: full)", lm, registry=r,
                                 multiprocess_mode="livemax")  # fmt: skip
        self.prefix_queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens", lm, registry=r)
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens", lm, registry=r)

    def labelled(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(**{k: m.labels(name) for k, m in vars(self).items()})
