"""`dlmodel predict` on a Dask cluster: a LocalCluster (``workers=N``) or an existing scheduler.

Each worker process loads the model once (``load_cached``) and predicts whole files; outputs
are written atomically by the workers, so a worker killed mid-image leaves no output under its
real name and Dask re-runs that image elsewhere. Engine threads are set so that the workers on
one machine never use more threads than it has cores.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .errors import DLModelError
from .runs import Job, Summary, predict_file, todo


def _work(job: Job, path: str) -> Tuple[str, Optional[str]]:
    """Runs on a worker: (path, None) when done, (path, error) when this image failed."""
    try:
        predict_file(job, Path(path))
        return path, None
    except DLModelError as e:
        return path, str(e)
    except Exception as e:  # an unexpected failure of one image must not end the run
        return path, f"{path}: {type(e).__name__}: {e}"


def threads_per_worker(client) -> dict:
    """Engine threads for each worker: its machine's cores shared by that machine's workers."""
    workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else client.scheduler_info()["workers"]
    per_host = Counter(w["host"] for w in workers.values())
    cores = {w["host"]: w.get("metrics", {}).get("cpu_count") or os.cpu_count() or 1 for w in workers.values()}
    return {addr: max(1, int(cores[w["host"]]) // per_host[w["host"]]) for addr, w in workers.items()}


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def run(job: Job, paths: Sequence[Path], workers: Optional[int] = None, scheduler: Optional[str] = None,
        resume: bool = False, progress: bool = True) -> Summary:
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    summary = Summary()
    remaining = todo(job, paths, resume)
    summary.skipped = len(paths) - len(remaining)
    if not remaining:
        return summary
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        n = workers or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    try:
        threads = threads_per_worker(client) if job.threads is None else {}
        futures = []
        for i, path in enumerate(remaining):
            # one job per worker address so each gets its own thread count
            addr = sorted(threads)[i % len(threads)] if threads else None
            placement = {"workers": [addr], "allow_other_workers": True} if addr else {}
            wjob = replace(job, threads=threads[addr]) if addr else job
            futures.append(client.submit(_work, wjob, str(path), pure=False, retries=2, **placement))
        bar = tqdm(total=len(futures), unit="image", desc="dlmodel", disable=None if progress else True)
        for fut in as_completed(futures):
            path, error = fut.result()
            if error:
                summary.failures.append(error)
                tqdm.write(f"dlmodel: skipped: {error}")
            else:
                summary.done += 1
            bar.update(1)
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return summary
