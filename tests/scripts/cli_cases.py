"""Run diffaug's command line once per case, all in this one process: a suite of failing commands then pays
for importing torch and Lightning once instead of once per case.

    python tests/scripts/cli_cases.py CASES.json RESULTS.json

CASES.json holds ``[{"argv": [...], "cwd": "..."}]``; each case runs ``diffaug.cli.main(argv)``, the function
the ``diffaug`` console script calls, with file descriptors 1 and 2 sent to files of their own, so that
everything the command prints (Python, logging, warnings, C++ extensions alike) is captured. RESULTS.json
gets ``[{"code": exit status or null, "stdout": ..., "stderr": ...}]``; an exception that escapes main()
prints its traceback into that case's stderr and gives code null.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path


def _run(argv: list[str]) -> int | None:
    from diffaug.cli import main

    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 (an escaped exception is what the suite looks for)
        traceback.print_exc()
        return None


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = []
    start = os.getcwd()
    filters = list(warnings.filters)
    for case in cases:
        os.chdir(case.get("cwd") or start)
        warnings.resetwarnings()  # every case shows its warnings, as a fresh process would
        warnings.filters[:] = filters
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                code = _run(case["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            out.seek(0)
            err.seek(0)
            results.append({"code": code, "stdout": out.read(), "stderr": err.read()})
    os.chdir(start)
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
