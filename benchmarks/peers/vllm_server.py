"""Start vLLM's CPU build (its own venv, ``tools/peers.py vllm``) serving a Hugging Face folder on
127.0.0.1, as its documentation advises for CPUs: tcmalloc and its bundled Intel OpenMP preloaded,
a KV-cache size in GiB, the engine's threads pinned to one core (on 2 cores, left alone, its busy
polling starves its own HTTP front end).

    python vllm_server.py FOLDER PORT [--dtype float32|bfloat16] [--max-model-len N] [--cores 1] [--eager]

Run with the peer's Python; it replaces itself with vLLM's OpenAI server (``vllm serve``'s console
script fails in this build: "No package metadata was found for vllm").
"""

import argparse
import glob
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("port")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", default="512")
    parser.add_argument("--kv-cache-gib", default="1")
    parser.add_argument("--name", default="model")
    parser.add_argument("--cores", default="1", help="cores for the engine's threads (VLLM_CPU_OMP_THREADS_BIND)")
    parser.add_argument("--eager", action="store_true", help="--enforce-eager: no compiled graphs (a quicker start)")
    args = parser.parse_args()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=args.kv_cache_gib, VLLM_TARGET_DEVICE="cpu")
    env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if args.cores == "1" else f"0-{int(args.cores) - 1}"
    preload = glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4") + [
        str(p) for p in Path(sys.prefix, "lib").glob("libiomp5.so")
    ]
    if preload:
        env["LD_PRELOAD"] = ":".join([*preload, env.get("LD_PRELOAD", "")]).rstrip(":")
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.folder,
        "--served-model-name", args.name, "--host", "127.0.0.1", "--port", args.port, "--dtype", args.dtype,
        "--max-model-len", args.max_model_len, "--disable-log-stats", "--max-num-seqs", "16",
    ] + (["--enforce-eager"] if args.eager else [])  # fmt: skip
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
