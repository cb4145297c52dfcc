"""The command line: `fastbp demo` (also `python -m fastbp demo`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastbp", description="Fast MLP training on the CPU.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a network on generated spirals, with progress")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--samples", type=int, default=60_000, help="training rows")
    demo.add_argument("--hidden", type=int, default=128, help="width of the two hidden layers")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--learning-rate", type=float, default=0.05)
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo.add_argument("--threads", type=int, default=None, help="BLAS threads (default: auto)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from fastbp import demo as demo_module
    try:
        demo_module.run(epochs=args.epochs, n_samples=args.samples, hidden=args.hidden,
                        batch_size=args.batch_size, learning_rate=args.learning_rate,
                        dtype=args.dtype, seed=args.seed, n_threads=args.threads)
    except (ValueError, TypeError) as error:
        print(f"fastbp demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
