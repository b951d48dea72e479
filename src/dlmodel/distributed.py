"""The batch engine's Dask executor (`dlmodel predict` and `dlmodel plate` with ``--workers``
or ``--scheduler``): a LocalCluster (``workers=N``) or an existing scheduler.

Each worker process loads the model once (``load_cached``) and does whole tasks; outputs
are written atomically by the workers, so a worker killed mid-task leaves no output under its
real name and Dask re-runs that task elsewhere. Engine threads are set so that the workers on
one machine never use more threads than it has cores.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

from .errors import InputError


def _work(attempt: Callable[[Any, Any], Tuple[int, Optional[str]]], job: Any, task: Any) -> Tuple[int, Optional[str]]:
    """Runs on a worker: (files written, None) when done, (0, error) when this task failed."""
    return attempt(job, task)


def threads_per_worker(client) -> dict:
    """Engine threads for each worker: its machine's cores (as that worker sees them, not this
    client) shared by that machine's workers."""
    workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else client.scheduler_info()["workers"]
    per_host = Counter(w["host"] for w in workers.values())
    from .engines import cores as worker_cores

    seen = client.run(worker_cores)  # runs on every worker: {address: cores}
    return {addr: max(1, int(seen.get(addr) or 1) // per_host[w["host"]]) for addr, w in workers.items()}


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def run_tasks(job: Any, tasks: Sequence[Any], attempt: Callable[[Any, Any], Tuple[int, Optional[str]]],
              workers: Optional[int] = None, scheduler: Optional[str] = None,
              progress: bool = True) -> Iterator[Tuple[int, Optional[str]]]:
    """Run ``attempt(job, task)`` for each task on a LocalCluster of ``workers`` processes or on
    an existing ``scheduler``; yields each task's (files written, error) as it ends. Jobs,
    tasks and the bookkeeping are :mod:`dlmodel.runs`'s: this module only places work."""
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers={workers!r}: use a whole number >= 1")
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    try:
        threads = threads_per_worker(client) if job.threads is None else {}
        futures = []
        for i, task in enumerate(tasks):
            # one job per worker address so each gets its own thread count
            addr = sorted(threads)[i % len(threads)] if threads else None
            placement = {"workers": [addr], "allow_other_workers": True} if addr else {}
            wjob = replace(job, threads=threads[addr]) if addr else job
            futures.append(client.submit(_work, attempt, wjob, task, pure=False, retries=2, **placement))
        # the bar counts what the job's tasks are made of (images, a slice's image sets)
        sizes = {fut.key: task.size for fut, task in zip(futures, tasks)}
        bar = tqdm(total=sum(sizes.values()), unit=getattr(job, "unit", "task"), desc=getattr(job, "label", "dlmodel"),
                   disable=None if progress else True)
        for fut in as_completed(futures):
            yield fut.result()
            bar.update(sizes[fut.key])
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
