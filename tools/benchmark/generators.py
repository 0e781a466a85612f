"""The load generator processes, driven from the orchestrator over ``multiprocessing`` pipes
(the workers themselves are tools/benchmark/gen.py)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from tools.benchmark.gen import worker_main
from tools.benchmark.procfs import proc_cpu


class Generators:
    def __init__(self, count: int, cpu: int, use_uvloop: bool) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cpu if cpu >= 0 else None, use_uvloop), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.senders = [0] * count

    def __len__(self) -> int:
        return len(self.pipes)

    def call(self, op: str, kwargs_each: list[dict[str, Any]], timeout: float = 300.0) -> list[Any]:
        for pipe, kwargs in zip(self.pipes, kwargs_each):
            pipe.send((op, kwargs))
        results = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"generator did not answer {op} within {timeout:.0f} s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"generator failed in {op}:\n{value}")
            results.append(value)
        return results

    def call_one(self, index: int, op: str, timeout: float = 300.0, **kwargs: Any) -> Any:
        """``op`` on one generator process only."""
        pipe = self.pipes[index]
        pipe.send((op, kwargs))
        if not pipe.poll(timeout):
            raise RuntimeError(f"generator did not answer {op} within {timeout:.0f} s")
        status, value = pipe.recv()
        if status != "ok":
            raise RuntimeError(f"generator failed in {op}:\n{value}")
        return value

    def call_all(self, op: str, timeout: float = 300.0, **kwargs: Any) -> list[Any]:
        return self.call(op, [kwargs] * len(self.pipes), timeout)

    def cpu(self) -> float:
        return sum((proc_cpu(p.pid) for p in self.procs if p.pid is not None), 0.0)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit", {}))
                pipe.poll(10) and pipe.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
