"""Timing helpers: per-call wall clock, client CPU per block, alternating rounds, statistics."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Block:
    """One timed block of calls: each call's wall time (ns) and the process CPU of the block (s)."""

    walls_ns: list[int]
    cpu_s: float

    @property
    def cpu_per_call_us(self) -> float:
        return self.cpu_s / len(self.walls_ns) * 1e6


@dataclass
class Variant:
    """One side of a comparison: a sync or async callable that makes one call."""

    name: str
    call: Callable[[], Any] | None = None
    acall: Callable[[], Awaitable[Any]] | None = None
    enter: Callable[[], None] | None = None  # untimed, before each block (e.g. instrument)
    leave: Callable[[], None] | None = None  # untimed, after each block
    blocks: list[Block] = field(default_factory=list)

    def walls_us(self) -> list[float]:
        return [w / 1000 for b in self.blocks for w in b.walls_ns]

    def cpu_us(self) -> list[float]:
        return [b.cpu_per_call_us for b in self.blocks]

    def summary(self) -> dict[str, float]:
        walls = self.walls_us()
        return {
            "calls": len(walls),
            "wall_median_us": statistics.median(walls),
            "wall_p99_us": percentile(walls, 99),
            "cpu_per_call_us": statistics.median(self.cpu_us()),
        }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def time_sync(call: Callable[[], Any], n: int) -> Block:
    walls = [0] * n
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
    for i in range(n):
        t0 = clock()
        call()
        walls[i] = clock() - t0
    return Block(walls, time.process_time() - cpu0)


async def time_async(acall: Callable[[], Awaitable[Any]], n: int) -> Block:
    walls = [0] * n
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
    for i in range(n):
        t0 = clock()
        await acall()
        walls[i] = clock() - t0
    return Block(walls, time.process_time() - cpu0)


def run_block(variant: Variant, n: int, loop: asyncio.AbstractEventLoop | None, *, keep: bool = True) -> Block:
    gc.collect()
    if variant.enter is not None:
        variant.enter()
    try:
        if variant.call is not None:
            block = time_sync(variant.call, n)
        else:
            assert variant.acall is not None
            assert loop is not None
            block = loop.run_until_complete(time_async(variant.acall, n))
    finally:
        if variant.leave is not None:
            variant.leave()
    if keep:
        variant.blocks.append(block)
    return block


def alternate(
    variants: Sequence[Variant],
    *,
    rounds: int,
    calls: int,
    warmup: int,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Warm every variant up, then run ``rounds`` rounds of ``calls`` calls each, the variants
    interleaved and their order reversed every other round (ABBA), so drift hits all alike."""
    for v in variants:
        run_block(v, warmup, loop, keep=False)
    for r in range(rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            run_block(v, calls, loop)


def paired_cpu_added(side: Variant, base: Variant) -> float:
    """Median over rounds of (side - base) CPU per call, in µs: each round's pair ran back to back."""
    return statistics.median(a - b for a, b in zip(side.cpu_us(), base.cpu_us(), strict=True))


def compare(side: Variant, base: Variant) -> dict[str, float]:
    s, b = side.summary(), base.summary()
    return {
        "wall_ratio": s["wall_median_us"] / b["wall_median_us"],
        "cpu_added_us": paired_cpu_added(side, base),
    }


def loop_mean_us(fn: Callable[[], Any], calls: int) -> float:
    """Wall time per call (µs) of ``calls`` calls of ``fn`` in one loop."""
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls / 1000


def noise_band_us(fn: Callable[[], Any], *, rounds: int, calls: int) -> float:
    """This run's noise for ``fn`` measured plain-vs-plain: per round, two identical blocks of
    ``calls`` calls back to back; the median over rounds of their difference, in µs per call
    (absolute). A cost smaller than this is not measurable by comparing two blocks of the same
    size in this run: it is what "no measurable cost" is held to."""
    loop_mean_us(fn, calls)  # warm-up
    diffs = []
    for _ in range(rounds):
        a, b = loop_mean_us(fn, calls), loop_mean_us(fn, calls)
        diffs.append(abs(a - b))
    return statistics.median(diffs)
