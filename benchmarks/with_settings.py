"""Run a module as ``python3 -m`` would, with CupyBackend's settings set first.

    PYTHONPATH=$PWD python3 benchmarks/with_settings.py SETTINGS MODULE [ARGS...]

SETTINGS as _knobs.py writes them (choose_settings.py's --out file), "" for
main's; MODULE e.g. gpubp (the benchmark) or pytest (the GPU tests). The runs
behind the README's table are made so with the settings chosen in the same
call (benchmarks/gpu_session.sh), before they are written into CupyBackend.
"""

import runpy
import sys

import _knobs


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    settings = _knobs.parse(argv[0])
    if settings:
        from gpubp.backends.cupy_backend import CupyBackend

        _knobs.apply(CupyBackend, settings)
        print(f"CupyBackend settings: {_knobs.format(settings)}", file=sys.stderr)
    sys.argv = [argv[1]] + argv[2:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
