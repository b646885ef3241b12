"""Crash isolation for the riskiest tests: named cases run in a child interpreter, so that a
segfault or abort in native code fails the one case that caused it, with the signal and the
child's traceback (faulthandler), instead of killing the whole test run.

A case module defines ``CASES``: dict name -> function of no arguments that returns normally
when the case passes and raises (an assertion) when it fails. ``run_cases`` runs them all in
one child; after a crash it starts a new child for the cases that had not run yet.

Run as a script, this file is the child: ``python isolation.py MODULE NAME...``.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Result:
    status: str            # "ok", "failed" (the case raised) or "crashed" (the child died)
    detail: str = ""


def _signal_name(returncode):
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def run_cases(module, names, timeout=600):
    """Runs ``module.CASES[name]`` for each name in child processes; dict name -> Result."""
    results, pending = {}, list(names)
    while pending:
        cmd = [sys.executable, "-X", "faulthandler", os.path.join(HERE, "isolation.py"), module,
               *pending]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["status"] == "start":
                started = event["case"]
            else:
                results[event["case"]] = Result(event["status"], event.get("detail", ""))
                started = None
        done = [n for n in pending if n in results]
        if started is not None:  # the child died inside this case
            results[started] = Result(
                "crashed", f"case {started!r} crashed the interpreter ({_signal_name(proc.returncode)})"
                f"; the child's stderr ends with:\n{proc.stderr[-4000:]}")
            done.append(started)
        elif not done:  # died before any case ran: every pending case reports why
            for n in pending:
                results[n] = Result("crashed", f"the child process failed to start cases "
                                    f"({_signal_name(proc.returncode)}):\n{proc.stderr[-4000:]}")
            done = pending
        pending = [n for n in pending if n not in done]
    return results


def _child(module, names):
    sys.path.insert(0, HERE)
    cases = importlib.import_module(module).CASES
    for name in names:
        print(json.dumps({"case": name, "status": "start"}), flush=True)
        try:
            cases[name]()
        except BaseException:
            print(json.dumps({"case": name, "status": "failed",
                              "detail": traceback.format_exc()}), flush=True)
        else:
            print(json.dumps({"case": name, "status": "ok"}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
