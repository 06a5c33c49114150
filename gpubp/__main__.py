"""Command line: ``gpubp bench`` and ``gpubp demo`` (or ``python -m gpubp ...``)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
    from . import __version__

    parser = argparse.ArgumentParser(prog="gpubp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
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
    demo.add_argument("--progress", action="store_true",
                      help="a progress bar over the epochs (needs tqdm: the progress extra)")
    demo.add_argument("--save", metavar="PATH",
                      help="write the trained model to PATH (an .npz; gpubp.MLP.load reads it)")

    bench = sub.add_parser("bench", help="time training on NumPy and CuPy beside PyTorch and the GEMM floor")
    bench.add_argument("--config", action="append", metavar="NAME",
                       help="a named config (small, medium, large, narrow, tiny); repeatable; "
                            "default: small, medium, large, narrow (large on the CPU only when named)")
    bench.add_argument("--layers", help="a network of your own, e.g. 784,256,10 (with --batch)")
    bench.add_argument("--batch", type=int, help="batch size of the --layers network")
    bench.add_argument("--activation", default="sigmoid", help="hidden activation of the --layers network")
    bench.add_argument("--output", default="softmax", help="output of the --layers network")
    bench.add_argument("--backend", default="all", choices=["numpy", "cupy", "all"])
    bench.add_argument("--quick", action="store_true", help="few repetitions, a small epoch")
    bench.add_argument("--repeat", type=int, help="timed repetitions per figure (default 30, quick 5)")
    bench.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    bench.add_argument("--precision", default="float32", choices=["float32", "tf32", "bf16"],
                       help="precision of the matrix products (gpubp, the floor and PyTorch)")
    bench.add_argument("--kernels", action="store_true",
                       help="time each fused CUDA kernel against the plain CuPy it replaces (GPU only)")
    bench.add_argument("--profile", action="store_true",
                       help="where each config's eager training step spends its time, operation "
                            "by operation (--backend numpy or cupy)")
    bench.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of step times (needs matplotlib)")

    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(bench, args)      # its errors print `gpubp bench`'s usage
    if args.command == "demo":
        from .demo import run_digits

        if args.save is not None and not _folder_exists(args.save):
            parser.exit(2, f"gpubp demo: error: --save {args.save}: its folder does not exist\n")
        try:
            model, history, accuracy, seconds = run_digits(
                backend=args.backend, epochs=args.epochs, batch_size=args.batch_size,
                hidden=args.hidden, activation=args.activation, lr=args.lr, dtype=args.dtype,
                seed=args.seed, verbose=args.verbose, progress=args.progress)
        except (ValueError, TypeError, RuntimeError, ImportError) as exc:
            parser.exit(2, f"gpubp demo: error: {exc}\n")
        print(f"digits: {model}")
        print(f"backend {model.backend.name}, {args.epochs} epochs in {seconds:.2f} s, "
              f"final training loss {history['loss'][-1]:.4f}")
        print(f"held-out accuracy {accuracy:.4f} ({accuracy * 100:.1f}%)")
        if args.save is not None:
            print(f"saved the model to {model.save(args.save)}")
    return 0


def _bench_kernels(parser, args):
    from .backends import BackendUnavailableError, get_backend, plain_cupy_backend
    from .bench.kernels import kernel_table, run_kernels
    from .bench.run import environment
    from .bench.timing import CupyEvents

    try:
        fused, unfused = get_backend("cupy"), plain_cupy_backend()
    except BackendUnavailableError as exc:
        parser.exit(2, f"gpubp bench --kernels needs the CuPy backend: {exc}\n")
    rows = run_kernels(fused, unfused, CupyEvents(), quick=args.quick,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    meta = environment()
    return _print_and_save(kernel_table(rows, meta), {"meta": meta, "kernels": rows}, args.json)


def _print_and_save(text, results, path):
    """Print a table; with --json, write its figures to path too."""
    from .bench.report import write_json

    print(text)
    if path:
        write_json(results, path)
        print(f"wrote {path}")
    return 0


def _bench_profile(parser, args, configs):
    from .backends import BackendUnavailableError, get_backend
    from .bench.profile import profile_step, profile_table
    from .bench.run import environment

    if args.backend == "all":
        parser.error("--profile takes one backend: --backend numpy or --backend cupy")
    try:
        backend = get_backend(args.backend)
    except BackendUnavailableError as exc:
        parser.exit(2, f"gpubp bench --profile: {exc}\n")
    if not args.config and backend.name == "numpy":      # large on the CPU only when named
        configs = [c for c in configs if c.cpu_by_default]
    repeat = args.repeat or (5 if args.quick else 30)
    profiles = []
    for config in configs:
        print(f"profiling {config.name} ...", file=sys.stderr, flush=True)
        profiles.append(profile_step(config, backend, args.precision, repeat=repeat))
    meta = environment()
    return _print_and_save(profile_table(profiles, meta), {"meta": meta, "profiles": profiles},
                           args.json)


def _custom_network(parser, args, custom_config):
    """The --layers/--batch network, checked as gpubp.MLP and Trainer check
    theirs, before anything is timed."""
    from .losses import OUTPUTS
    from .model import ACTIVATIONS

    if args.layers is None or args.batch is None:
        parser.error("--layers and --batch go together")
    try:
        layers = [int(s) for s in args.layers.split(",")]
    except ValueError as exc:
        parser.error(f"--layers must be comma-separated integers, e.g. 784,256,10 ({exc})")
    if len(layers) < 2 or min(layers) < 1:
        parser.error(f"--layers needs at least an input and an output size, all positive; got {args.layers}")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1; got {args.batch}")
    if args.activation not in ACTIVATIONS:
        parser.error(f"--activation must be one of {', '.join(ACTIVATIONS)}; got {args.activation!r}")
    if args.output not in OUTPUTS:
        parser.error(f"--output must be one of {', '.join(OUTPUTS)}; got {args.output!r}")
    if args.output == "softmax" and layers[-1] < 2:
        parser.error("--output softmax needs at least 2 outputs")
    return custom_config(layers, args.batch, args.activation, args.output)


def _folder_exists(path):
    return os.path.isdir(os.path.dirname(os.path.abspath(path)))


def _check_outputs(parser, args):
    """--json's folder and --plot's matplotlib, checked before a run of minutes."""
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not _folder_exists(path):
            folder = os.path.dirname(os.path.abspath(path))
            parser.error(f"{flag} {path}: the folder {folder} does not exist")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'gpubp[plot]'")


def _bench(parser, args):
    from .bench import CONFIGS, DEFAULT_CONFIGS, Settings, custom_config, run
    from .bench.report import plot, table, write_json

    _check_outputs(parser, args)
    if args.kernels:
        return _bench_kernels(parser, args)

    names = args.config or ([] if args.layers else list(DEFAULT_CONFIGS))
    names = list(dict.fromkeys(names))          # a config named twice is timed once
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown --config {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    configs = [CONFIGS[n] for n in names]
    if args.layers is not None or args.batch is not None:
        configs.append(_custom_network(parser, args, custom_config))
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.profile:
        return _bench_profile(parser, args, configs)
    backends = ["numpy", "cupy"] if args.backend == "all" else [args.backend]
    settings = Settings(quick=args.quick, repeat=args.repeat, use_torch=not args.no_torch,
                        precision=args.precision)
    explicit = set(args.config or []) | {c.name for c in configs if c.name.startswith("custom-")}
    # With --json, what is measured so far is written after each config.
    results = run(configs, backends, settings, explicit=explicit,
                  log=lambda s: print(s, file=sys.stderr, flush=True),
                  on_config=(lambda r: write_json(r, args.json)) if args.json else None)
    print(table(results))
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
