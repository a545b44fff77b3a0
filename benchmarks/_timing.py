"""Timing helpers shared by the benchmark scripts.

On 2 cores, OpenBLAS's and PyTorch's worker threads keep spinning for about 0.1 s after each
call, so every contender is warmed up before it is timed, the contenders take turns
(interleaved rounds), and there is a pause between one contender's turn and the next.
Figures are medians over the rounds.
"""
import os
import platform
import statistics
import time

PAUSE = 0.15  # seconds between contenders: lets other libraries' spinning workers sleep


def time_call(fn, *, min_time=0.05, max_reps=10_000):
    """Seconds per call of fn(): repeat until min_time has passed, return the mean."""
    fn()
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def interleaved(contenders, *, rounds=5, min_time=0.05):
    """{name: median seconds per call} over `rounds` turns of every contender in order."""
    samples = {name: [] for name in contenders}
    for fn in contenders.values():  # warm every contender once
        fn()
        time.sleep(PAUSE)
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(time_call(fn, min_time=min_time))
            time.sleep(PAUSE)
    return {name: statistics.median(s) for name, s in samples.items()}


def machine_line():
    """One line naming this machine: CPU model, cores, Python."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def print_table(header, rows):
    """A plain aligned text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    print(fmt.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt.format(*row))
