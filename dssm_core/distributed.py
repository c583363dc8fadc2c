"""Data-parallel training over torch.distributed: the rank's context and the few collectives.

``training.fit(..., dist=ctx)`` uses a :class:`DistContext`: every rank draws the same shuffled
order from the shared seed, takes its own slice of every batch (:meth:`DistContext.slice`),
and after ``backward`` the gradients are averaged over the ranks (:meth:`average_gradients`,
dense and sparse alike: gloo all-reduces sparse gradients), so every rank holds the same
weights after every step. Rank 0 alone evaluates, reports and decides early stopping; the
decision is broadcast (:meth:`broadcast_decision`) so all ranks stop together.

Backend: gloo on CPU, NCCL where CUDA is present (``device="auto"``). The process group has
a timeout (default 60 s), so a rank that dies makes the others fail instead of hanging.

The context is a value the caller holds and passes on; this module keeps no global state
beyond what ``torch.distributed`` itself holds for the process group.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from typing import Mapping, Sequence

import torch

FAIL_ENV = "DSSM_DIST_FAIL_RANK"          # test hook: "RANK:BATCHES" makes RANK exit mid-epoch
DEFAULT_TIMEOUT_S = 60.0


class RankFailed(RuntimeError):
    """A collective failed: another rank died, or did not answer within the group timeout."""


def _collective(fn, *args, **kwargs):  # fn: a torch.distributed collective
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankFailed("another training process stopped or stopped answering "
                         f"({first[:200]})") from exc


@dataclasses.dataclass(frozen=True)
class DistContext:
    """One rank of a data-parallel training (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"
    fail_after_batches: int | None = None     # test hook (``DSSM_DIST_FAIL_RANK``)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slice(self, start: int, end: int) -> tuple[int, int]:
        """This rank's part ``[a, b)`` of the batch ``[start, end)``: contiguous, the first
        ``(end - start) % world_size`` ranks one row longer."""
        n = end - start
        q, r = divmod(n, self.world_size)
        a = start + self.rank * q + min(self.rank, r)
        return a, a + q + (1 if self.rank < r else 0)

    def usable(self, start: int, end: int, min_rows: int = 2) -> bool:
        """Whether every rank's slice of the batch has ``min_rows`` (batch norm and the
        in-batch softmax need two); the same answer on every rank."""
        return (end - start) // self.world_size >= min_rows

    # --- collectives (no-ops with one process) ------------------------------------------
    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Every rank takes rank 0's parameters and buffers."""
        if not self.active:
            return
        import torch.distributed as td

        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                _collective(td.broadcast, t.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (sparse ones stay sparse)."""
        if not self.active:
            return
        import torch.distributed as td

        dense = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
        if dense:
            flat = torch.cat([g.reshape(-1) for g in dense])
            _collective(td.all_reduce, flat)
            flat /= self.world_size
            offset = 0
            for g in dense:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                g = p.grad.coalesce()
                _collective(td.all_reduce, g)
                p.grad = g.coalesce() / self.world_size

    def sum_floats(self, *values: float) -> list[float]:
        """The sums over the ranks of a few numbers (float64)."""
        if not self.active:
            return [float(v) for v in values]
        import torch.distributed as td

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        _collective(td.all_reduce, t)
        return [float(v) for v in t]

    def broadcast_decision(self, *values: int) -> list[int]:
        """Rank 0's integers (stop flag, best epoch...) on every rank."""
        if not self.active:
            return [int(v) for v in values]
        import torch.distributed as td

        t = torch.tensor([int(v) for v in values], dtype=torch.int64)
        _collective(td.broadcast, t, src=0)
        return [int(v) for v in t]

    def barrier(self) -> None:
        """Wait for every rank (before leaving the group after a success: a rank that left
        first would make the others' transport abort)."""
        if self.active:
            import torch.distributed as td

            _collective(td.barrier)

    def maybe_fail(self, batches_done: int) -> None:
        """The test hook: this rank dies (exit status 17) after ``fail_after_batches``."""
        if self.fail_after_batches is not None and batches_done >= self.fail_after_batches:
            os._exit(17)


def env_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process, else None."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None


def choose_backend(device: str = "auto") -> str:
    """"nccl" when ``device`` is cuda (or auto and CUDA is present), else "gloo"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "nccl"
    return "gloo"


def _fail_hook(rank: int, environ: Mapping[str, str]) -> int | None:
    spec = environ.get(FAIL_ENV)
    if not spec:
        return None
    who, _, after = spec.partition(":")
    return int(after or "1") if int(who) == rank else None


def init(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
         environ: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group torchrun describes (or a one-process context without one).

    The group's timeout bounds every collective: a rank that dies makes the others raise
    within ``timeout_s`` rather than wait forever.
    """
    env = os.environ if environ is None else environ
    world = env_world(env)
    if world is None or world[1] <= 1:
        return DistContext()
    rank, size, local = world
    backend = choose_backend(device)
    import torch.distributed as td

    if not td.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        td.init_process_group(backend, rank=rank, world_size=size,
                              timeout=datetime.timedelta(seconds=float(timeout_s)))
    return DistContext(rank=rank, world_size=size, local_rank=local, backend=backend,
                       fail_after_batches=_fail_hook(rank, env))


def teardown(ctx: DistContext) -> None:
    """Leave the process group (if this context joined one)."""
    if not ctx.active:
        return
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def torchrun_command(nproc: int, cli_argv: Sequence[str]) -> list[str]:
    """The command that runs ``python -m dssm_core CLI_ARGV`` as ``nproc`` local ranks."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={int(nproc)}", "-m", "dssm_core", *cli_argv]


def without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--workers N`` / ``--workers=N`` (what each rank is given)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out
