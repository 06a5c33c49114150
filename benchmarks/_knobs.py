"""CupyBackend's settings under trial, written as text: "NAME=INT" items joined
by commas, "" for main's. _BESIDE_SMS is per precision: "_BESIDE_SMS.tf32=16"
(or "_BESIDE_SMS=16" where the precision is given, as in knob_sweep.py). Shared by
knob_sweep.py, choose_settings.py and with_settings.py.

    _BESIDE_SMS          SMs the GEMMs leave to the work beside the backward pass
    _BACKWARD_BESIDE     1: the backward pass's per-element work beside its GEMMs
    _STEP_PRIORITY       1: the step's kernels first, kept in the graph
    _OUTPUT_FUSED        1: the output layer's bias, loss, delta and bias sums in one pass
    _BG_BLOCK_ROWS       rows per block row of the packed column sums
    _OVERLAP_MIN_WEIGHTS weights from which a layer's update runs beside the backward pass
    _FIRST_SLABS         slabs of rows the first layer's weight gradient is made in
"""

from __future__ import annotations

PRECISIONS = ("float32", "tf32", "bf16")
FLAGS = ("_BACKWARD_BESIDE", "_STEP_PRIORITY", "_OUTPUT_FUSED")
COUNTS = ("_BG_BLOCK_ROWS", "_OVERLAP_MIN_WEIGHTS", "_FIRST_SLABS")
NAMES = ("_BESIDE_SMS",) + FLAGS + COUNTS


def parse(text, precision=None):
    """{name: value} from ``text``; _BESIDE_SMS's value is {precision: SMs}."""
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name, _, for_precision = name.strip().partition(".")
        if not sep or name not in NAMES:
            raise ValueError(f"{item!r} is not NAME=INT with NAME one of {', '.join(NAMES)}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value.strip()!r} is not a whole number") from None
        if number < 0:
            raise ValueError(f"{item!r}: the value must be >= 0")
        if name == "_BESIDE_SMS":
            for_precision = for_precision or precision
            if for_precision not in PRECISIONS:
                raise ValueError(f"{item!r}: name a precision, _BESIDE_SMS.<{'|'.join(PRECISIONS)}>")
            settings.setdefault(name, {})[for_precision] = number      # 0: every SM
        elif for_precision:
            raise ValueError(f"{item!r}: only _BESIDE_SMS is per precision")
        elif name in FLAGS:
            if number not in (0, 1):
                raise ValueError(f"{item!r}: {name} is 0 or 1")
            settings[name] = bool(number)
        else:
            if number < 1:
                raise ValueError(f"{item!r}: {name} is at least 1")
            settings[name] = number
    return settings


def format(settings):
    """The text parse() reads back as ``settings`` (names in a fixed order)."""
    items = []
    for name in NAMES:
        if name not in settings:
            continue
        value = settings[name]
        if name == "_BESIDE_SMS":
            items += [f"{name}.{p}={value[p]}" for p in PRECISIONS if p in value]
        else:
            items.append(f"{name}={int(value)}")
    return ",".join(items)


def merge(*all_settings):
    """Later settings over earlier ones; _BESIDE_SMS merged precision by precision."""
    out = {}
    for settings in all_settings:
        for name, value in settings.items():
            out[name] = {**out.get(name, {}), **value} if name == "_BESIDE_SMS" else value
    return out


def apply(cls, settings):
    """Set ``settings`` on the class ``cls`` (CupyBackend); returns what they
    replaced, for apply(cls, returned) to restore. Read when a step is made."""
    before = {name: getattr(cls, name) for name in settings}
    for name, value in settings.items():
        setattr(cls, name, dict(value) if name == "_BESIDE_SMS" else value)
    return before
