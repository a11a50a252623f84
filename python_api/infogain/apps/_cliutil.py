"""Helpers shared by the command-line subcommands (``python -m infogain ...``) and ``benches/``:
sampler-option flags, comma-separated option values, output locations, plain-text tables."""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless its help already describes it or there is
    none to show (None, a False flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def option_type(name: str):
    """An argparse ``type`` reading ``generate`` option ``name`` with the package's one option parser
    (:func:`infogain.samplers.options.parse_option`); a bad value is a usage error with its message."""
    from ..samplers.options import option_types, parse_option

    if name not in option_types():
        raise ValueError(f"{name!r} is not a generate option")

    def parse(text: str):
        try:
            return parse_option(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name   # argparse names the type in some of its messages
    return parse


def split_list(option: str, text: str) -> List[str]:
    """``"a,b"`` -> ``["a", "b"]`` (whitespace stripped). ValueError naming ``option`` for an empty
    value or an empty entry (``"a,,b"``, a trailing comma): a typo, not a request to skip one."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError(f"{option} must name at least one entry, got {text!r}")
    if not all(items):
        raise ValueError(f"{option} has an empty entry in {text!r}")
    return items


def parse_device(option: str, text: Optional[str]):
    """``torch.device`` from an option value (None: CUDA when available, else CPU); ValueError
    naming ``option`` for a malformed name or a CUDA device this machine does not have."""
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{option} {text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {text!r}: CUDA is not available on this machine")
    return device


def make_output_dir(option: str, path: str) -> str:
    """Create folder ``path`` (and parents) for a command's output; ValueError naming ``option``
    when that is impossible (a file in the way, no permission, a read-only file system)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {path!r} cannot be created: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path!r} is not writable")
    return path


def check_output_file(option: str, path: str) -> str:
    """Make sure file ``path`` can be written once a command's work is done: its folder exists or is created,
    and ``path`` itself is not a folder. ValueError naming ``option`` otherwise, before the work starts."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; give a file path "
                         f"(e.g. {os.path.join(path, 'e2e.json')!r})")
    make_output_dir(option, os.path.dirname(os.path.abspath(path)))
    return path


def format_table(rows: Sequence[Dict[str, object]], columns: List[str]) -> str:
    """``rows`` as left-aligned columns under a header; floats to 4 significant digits, a missing
    cell is empty."""
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = [columns] + cells
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines)
