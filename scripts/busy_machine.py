"""Run `make test` on a busy machine, to see that the suite holds there: beside a second
`make test` in another clone, or beside CPU-bound processes that keep every core busy.

    python3 scripts/busy_machine.py beside-another-run
    python3 scripts/busy_machine.py beside-cpu-load [--burners 2]

Each `make test` runs in a fresh clone of this checkout's HEAD (as CI runs it), under a temporary
directory that is removed afterwards (`--keep` keeps the clones and their logs). Everything is
bounded: the runs are stopped after `--minutes` (default 80) and the burners end with them. Prints
each run's pytest summary line, its exit code and time, and the load average while it ran;
exits non-zero when a run failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^=+ (.* in [\d.]+s.*) =+$")
LOAD_SAMPLE_SECONDS = 10


@dataclass
class Run:
    """One `make test` in a clone of its own."""

    name: str
    clone: Path
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.clone.parent / f"{self.name}.log"

    def start(self) -> None:
        self.started = time.monotonic()
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["make", "test"],
                cwd=self.clone,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a stop reaches the whole tree
            )

    def wait(self, deadline: float) -> None:
        assert self.process is not None
        try:
            self.returncode = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.returncode = self.process.wait()
            with open(self.log, "a") as log:
                log.write("\nbusy_machine: stopped at the time limit\n")
        self.ended = time.monotonic()

    def summary(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        found = [match[1] for line in lines if (match := SUMMARY.match(line))]
        return found[-1] if found else "no pytest summary: " + " | ".join(lines[-3:])

    def failures(self) -> list[str]:
        """pytest's short summary lines of what failed (FAILED …, ERROR …)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(("FAILED ", "ERROR "))]


class LoadSampler(threading.Thread):
    """The 1-minute load average, sampled while the runs go."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(LOAD_SAMPLE_SECONDS):
            self.samples.append(os.getloadavg()[0])

    def describe(self) -> str:
        if not self.samples:
            return "load average: not sampled"
        mean = sum(self.samples) / len(self.samples)
        peak = max(self.samples)
        return f"1-minute load average: mean {mean:.1f}, max {peak:.1f} ({os.cpu_count()} cores)"


def clone(base: Path, name: str) -> Path:
    target = base / name
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(target)], check=True)
    return target


def start_burners(count: int, deadline: float) -> list[subprocess.Popen]:
    """CPU-bound processes that spin until ``deadline`` (monotonic seconds from now on)."""
    seconds = max(1.0, deadline - time.monotonic())
    spin = f"import time\nend = time.monotonic() + {seconds:.0f}\nwhile time.monotonic() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("beside-another-run", "beside-cpu-load"))
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="CPU-bound processes")
    parser.add_argument("--minutes", type=float, default=80, help="stop everything after this")
    parser.add_argument("--keep", action="store_true", help="keep the clones and their logs")
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    base = Path(tempfile.mkdtemp(prefix="ipai-busy-machine-"))
    base.chmod(0o755)  # the embedded PostgreSQL runs as a system user from the clone's .venv
    burners: list[subprocess.Popen] = []
    sampler = LoadSampler()
    keep = True  # until the runs have ended
    try:
        names = ["first", "second"] if args.mode == "beside-another-run" else ["beside-load"]
        runs = [Run(name, clone(base, name)) for name in names]
        if args.mode == "beside-cpu-load":
            burners = start_burners(args.burners, deadline)
            print(f"busy_machine: {len(burners)} CPU-bound processes spin beside the run")
        sampler.start()
        for run in runs:
            run.start()
        for run in runs:
            run.wait(deadline)
        sampler.stopped.set()
        for run in runs:
            minutes = (run.ended - run.started) / 60
            print(f"{run.name}: exit {run.returncode} after {minutes:.1f} min: {run.summary()}")
            for line in run.failures():
                print(f"  {line}")
        print(sampler.describe())
        passed = all(run.returncode == 0 for run in runs)
        keep = args.keep or not passed  # a failure's logs are what the next person needs
        if keep:
            print(f"clones and logs kept in {base}")
        return 0 if passed else 1
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
