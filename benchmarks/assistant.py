"""The assistant's targets, measured side by side in one run (issue: "from text predictor to an
assistant you can check"): notebook 07's model is fine-tuned with the defaults, then both it (chat
tokens added, no fine-tuning: "before") and the fine-tuned one ("after") are served and graded
through the API by the evaluation harness on the held-out set.

Printed: exact match with 95% intervals, per kind, tool calls valid and right; schema validity of
bookings with and without constraints over ``--validity-requests`` bookings; the fine-tuning's
wall time; the decode step held to a JSON grammar against a free one, at batch 1 and 16.

    python benchmarks/assistant.py [--base DIR] [--n 300] [--validity-requests 500] [--examples N --epochs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_serving import constrained_step_cost  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import maaskit
    from maaskit.lm import SFTRecipe, add_chat_tokens, evaluate_endpoint, finetune, load_or_train
    from maaskit.lm.formats.artifact import save_language_model
    from maaskit.lm.training.sft import grow_vocabulary

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "notebooks" / "models" / "gpt-python-docs",
                        help="notebook 07's model (trained there if missing)")  # fmt: skip
    parser.add_argument("--n", type=int, default=300, help="held-out requests per model")
    parser.add_argument("--validity-requests", type=int, default=500, help="bookings, with and without constraints")
    parser.add_argument("--examples", type=int, default=SFTRecipe().examples)
    parser.add_argument("--epochs", type=int, default=SFTRecipe().epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    pretrained, tokenizer, _ = load_or_train(args.base, seed=args.seed, device="cpu")
    with tempfile.TemporaryDirectory(prefix="maaskit-assistant-") as tmp:
        before_dir, after_dir = Path(tmp) / "before", Path(tmp) / "after"
        chat_tokenizer = add_chat_tokens(tokenizer)
        save_language_model(grow_vocabulary(pretrained, chat_tokenizer.get_vocab_size()), chat_tokenizer, before_dir,
                            name="before")  # fmt: skip
        start = time.perf_counter()
        tuned = finetune((pretrained, tokenizer), recipe=SFTRecipe(examples=args.examples, epochs=args.epochs),
                         seed=args.seed, device="cpu", out=after_dir, name="after", progress=sys.stdout)  # fmt: skip
        train_s = time.perf_counter() - start
        figures: dict = {"train_seconds": train_s, "data": repr(tuned.data)}
        with maaskit.serve(after_dir, before_dir) as server:
            url = server.url + "/v1"
            for name in ("before", "after"):
                report = evaluate_endpoint(url, "none", name, "assistant", n=args.n, seed=args.seed)
                print(report, "\n", flush=True)
                figures[name] = report.as_dict()
            # bookings are every third request: 3x as many requests hold the bookings asked for
            for name in ("before", "after"):
                for constrained in (True, False):
                    report = evaluate_endpoint(url, "none", name, "assistant", n=3 * args.validity_requests,
                                               seed=args.seed + 1, constrained=constrained, kinds=["book"])  # fmt: skip
                    hits, n = report.schema_valid
                    figures[f"validity {name} {'constrained' if constrained else 'free'}"] = [hits, n]
        steps = constrained_step_cost(after_dir, 32, 15)  # the steps vary by about 30% run to run here
    figures["constrained_steps"] = steps

    print(f"\nfine-tuning: {train_s:.0f} s ({args.examples} conversations x {args.epochs} epochs) on {figures['data']}")
    print("| model | exact match | 95% interval | calculate | convert | book | tool calls valid | right |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("before", "after"):
        d = figures[name]
        kinds = " | ".join(f"{d['by_kind'][k]['accuracy']:.1%}" for k in ("calculate", "convert", "book"))
        valid, right = d["calls_valid"], d["calls_correct"]
        print(f"| {name} | {d['accuracy']:.1%} | {d['interval'][0]:.1%}–{d['interval'][1]:.1%} | {kinds} | "
              f"{valid[0]}/{valid[1]} | {right[0]}/{right[1]} |")  # fmt: skip
    for key, (hits, n) in ((k, v) for k, v in figures.items() if k.startswith("validity")):
        print(f"{key}: {hits}/{n} bookings fit the schema ({hits / n:.1%})")
    for n, cost in steps.items():
        print(f"decode step at batch {n}: {cost['constrained_ms']:.3f} ms constrained, {cost['free_ms']:.3f} ms free: "
              f"{cost['constrained_ms'] / cost['free_ms']:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
