"""Timing one way of one workload: warm-up, repeats, per-batch waits, CPU of both processes."""

import dataclasses
import os
import resource
import statistics
import time

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds():
    """CPU seconds (user + system, every thread) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pid_cpu_seconds(pid):
    """CPU seconds of another local process (Linux /proc), or the sum over a list of them (a
    DataLoader's workers); None when unreadable."""
    if isinstance(pid, (list, tuple)):
        each = [pid_cpu_seconds(p) for p in pid]
        return None if any(s is None for s in each) else sum(each)
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


@dataclasses.dataclass
class Measurement:
    images_per_s: float  # median over repeats
    images_per_s_runs: list
    p50_ms: float  # per-batch wait seen by the consumer, pooled over repeats
    p99_ms: float
    train_cpu_us_per_image: float  # this process, median over repeats
    server_cpu_us_per_image: float  # None when no local server is watched
    batches: int
    images: int
    round_trip_p50_ms: float = None  # remote calls: send -> receipt, per request
    round_trip_p99_ms: float = None


def measure(next_batch, batch, *, warmup_s, min_time_s, repeats, min_batches=5, server_pid=None,
            round_trips=None, on_batch=None, warmup_batches=2):
    """Calls ``next_batch()`` (which returns once one batch is ready) in timed windows.

    Warm-up runs for ``warmup_s`` and at least ``warmup_batches`` batches (enough for a way that
    keeps several batches in flight to have touched all its buffers once: first touches of fresh
    memory cost page faults that the steady state does not pay), and is not counted. Each of
    ``repeats`` windows runs until ``min_time_s`` has passed and ``min_batches`` were taken.
    ``round_trips`` (optional) is a list the caller appends per-request round trips to; it is
    cleared after the warm-up. ``server_pid``: a process id, or a list of them whose CPU is
    summed.
    """
    start = time.perf_counter()
    n = 0
    while n < warmup_batches or time.perf_counter() - start < warmup_s:
        next_batch()
        n += 1
        if on_batch:
            on_batch()
    if round_trips is not None:
        del round_trips[:]
    rates, cpu, server_cpu, waits = [], [], [], []
    total_batches = 0
    for _ in range(repeats):
        cpu0 = process_cpu_seconds()
        srv0 = pid_cpu_seconds(server_pid) if server_pid else None
        t0 = time.perf_counter()
        last = t0
        k = 0
        while k < min_batches or last - t0 < min_time_s:
            next_batch()
            now = time.perf_counter()
            waits.append(now - last)
            last = now
            k += 1
            if on_batch:
                on_batch()
        elapsed = last - t0
        images = k * batch
        rates.append(images / elapsed)
        cpu.append((process_cpu_seconds() - cpu0) / images)
        if srv0 is not None:
            srv1 = pid_cpu_seconds(server_pid)
            server_cpu.append((srv1 - srv0) / images if srv1 is not None else float("nan"))
        total_batches += k
    w = np.asarray(waits) * 1e3
    m = Measurement(
        images_per_s=statistics.median(rates), images_per_s_runs=rates,
        p50_ms=float(np.percentile(w, 50)), p99_ms=float(np.percentile(w, 99)),
        train_cpu_us_per_image=statistics.median(cpu) * 1e6,
        server_cpu_us_per_image=statistics.median(server_cpu) * 1e6 if server_cpu else None,
        batches=total_batches, images=total_batches * batch)
    if round_trips:
        rt = np.asarray(round_trips) * 1e3
        m.round_trip_p50_ms = float(np.percentile(rt, 50))
        m.round_trip_p99_ms = float(np.percentile(rt, 99))
    return m
