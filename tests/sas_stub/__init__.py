"""Stub SAS installation for tests: ``install(dir)`` makes ``dir/bin/<task>`` for every whitelisted task."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from xmmcore.sas_params import TASK_PARAMS

STUB = Path(__file__).with_name("sas_stub.py")


def install(sas_dir: Path) -> Path:
    """A fake ``$SAS_DIR`` (``bin/<task>`` wrappers, ``config/``, ``setsas.sh``); returns ``sas_dir``."""
    bin_dir = sas_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (sas_dir / "config").mkdir(exist_ok=True)
    for task in TASK_PARAMS:
        wrapper = bin_dir / task
        wrapper.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(STUB))} {task} "$@"\n'
        )
        wrapper.chmod(0o755)
    (sas_dir / "setsas.sh").write_text(
        'export SAS_PATH="$SAS_DIR"\nexport PATH="$SAS_DIR/bin:$PATH"\nexport SAS_VERBOSITY=4\n'
    )
    return sas_dir
