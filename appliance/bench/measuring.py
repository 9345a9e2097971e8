"""How every figure is taken: timed runs of a piece of work, percentiles, and the progress
line shown on a terminal.
"""

import statistics
import sys
import time


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text:<60}", end="", file=sys.stderr, flush=True)


def _times_s(work, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def _median_s(work, repeat: int = 21) -> float:
    return statistics.median(_times_s(work, repeat))


def _percentiles(seconds: list[float]) -> dict:
    return {
        "p50": round(statistics.median(seconds) * 1000, 3),
        "p99": round(statistics.quantiles(seconds, n=100)[98] * 1000, 3),
    }
