"""Command line: ``gpubp demo`` (or ``python -m gpubp demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpubp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on scikit-learn's digits; print accuracy, time, backend")
    demo.add_argument("--backend", default=None, help="auto, numpy or cupy (default: $GPUBP_BACKEND or auto)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--hidden", type=int, default=64, help="width of the hidden layer")
    demo.add_argument("--activation", default="sigmoid")
    demo.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    demo.add_argument("--dtype", default="float32")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--verbose", action="store_true", help="print every epoch")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_digits

        try:
            model, history, accuracy, seconds = run_digits(
                backend=args.backend, epochs=args.epochs, batch_size=args.batch_size,
                hidden=args.hidden, activation=args.activation, lr=args.lr, dtype=args.dtype,
                seed=args.seed, verbose=args.verbose)
        except (ValueError, TypeError, RuntimeError) as exc:
            parser.exit(2, f"gpubp demo: error: {exc}\n")
        print(f"digits: {model}")
        print(f"backend {model.backend.name}, {args.epochs} epochs in {seconds:.2f} s, "
              f"final training loss {history['loss'][-1]:.4f}")
        print(f"held-out accuracy {accuracy:.4f} ({accuracy * 100:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
