"""Pieces on a Dask cluster (`dask.distributed`, the optional extra `dask`).

`--scheduler local` starts a LocalCluster on this machine: one single-threaded worker process per
CPU (fewer when the memory budget does not allow that many), no dashboard, and the budget split
between them (Dask's own per-worker memory limit stays at its default, the machine's memory over
the workers, above that budget, so that a worker is never paused by Dask while a piece runs). `--scheduler tcp://HOST:PORT` connects to a running scheduler (`dask scheduler`,
dask-jobqueue, dask-kubernetes, ...); every worker must have this same geomix version installed
and see the shard files at the same paths (a shared file system): the workers read the shards,
the client receives each piece's results (an Arrow table, ~200 bytes a row) and writes the
Parquet dataset itself.

One task per piece, submitted with `retries`; a worker that dies is replaced and its task run
again by Dask. The results are the same as a single-process run: the same code computes the same
piece on any worker, and statistics merge exactly.
"""

from __future__ import annotations

import logging
import uuid

from geomix_cli.errors import UnavailableError
from geomix_cli.scale import memory

WORKER_WAIT_S = 60


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise UnavailableError("--scheduler needs dask.distributed: pip install "
                               "'geomix[dask]'") from None
    return distributed


def local_worker_count(budget: int, workers: int | None) -> int:
    """Workers of a LocalCluster: --workers, else one per CPU, as many as the budget gives at
    least 256 MiB each."""
    if workers is not None:
        return max(1, int(workers))
    return max(1, min(memory.cpu_count(), budget // (256 << 20)))


def open_client(scheduler: str, *, workers: int | None, budget: int):
    """(client, cluster or None, per-worker budget)."""
    distributed = _import_distributed()
    if scheduler == "local":
        n = local_worker_count(budget, workers)
        per_worker = budget // n
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            scheduler_port=0, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
        return client, cluster, per_worker
    try:
        client = distributed.Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UnavailableError(f"cannot reach the Dask scheduler at {scheduler}: "
                               f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        client.close()
        raise UnavailableError(f"the Dask scheduler at {scheduler} has no worker (waited "
                               f"{WORKER_WAIT_S} s)") from None
    return client, None, budget


def check_worker_versions(client) -> dict:
    """{worker: geomix version}; refuse (exit 5) when a worker lacks geomix or runs another
    version than this client."""
    from geomix_cli import __version__

    def probe():  # defined here so that it is sent by value: it must run where geomix is absent
        try:
            import geomix_cli

            return geomix_cli.__version__
        except Exception as exc:  # noqa: BLE001 - reported, whatever it is
            return f"not importable ({type(exc).__name__}: {exc})"

    versions = client.run(probe)
    wrong = {w: v for w, v in versions.items() if v != __version__}
    if wrong:
        worker, version = sorted(wrong.items())[0]
        raise UnavailableError(
            f"{len(wrong)} of {len(versions)} Dask worker(s) do not run geomix {__version__} "
            f"(e.g. {worker}: {version}); install the same version on every worker")
    return versions


def run_on_dask(plan, todo, *, scheduler: str, workers, budget: int, retries: int, fail_once,
                store, deliver, callbacks) -> int:
    """Submit one task per piece of `todo`; commit and deliver each result as it arrives.
    Returns the number of workers."""
    distributed = _import_distributed()
    from geomix_cli.scale.pieces import compute_piece
    from geomix_cli.scale.runner import check_budget, piece_failed

    client, cluster, per_worker = open_client(scheduler, workers=workers, budget=budget)
    try:
        versions = check_worker_versions(client)
        check_budget(plan, per_worker, resident=memory.resident_bytes())
        token = uuid.uuid4().hex[:8]
        futures = {}
        for piece in todo:
            future = client.submit(compute_piece, piece, plan.options, per_worker, fail_once,
                                   key=f"geomix-{token}-piece-{piece.index}", retries=retries,
                                   pure=False)
            futures[future] = piece
        for future in distributed.as_completed(list(futures)):
            piece = futures.pop(future)
            if future.status != "finished":
                exc = future.exception()
                for other in futures:
                    other.cancel()
                raise piece_failed(piece, exc, retries + 1) from None
            table, shard_error = future.result()
            future.release()
            if store is not None:
                writer = store.writer(piece, table.schema)
                try:
                    for batch in table.to_batches():
                        writer.write(batch)
                    writer.commit(shard_error=shard_error)
                except BaseException:
                    writer.discard()
                    raise
            deliver(piece, table, shard_error, False)
        return len(versions)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def describe_cluster(scheduler: str, workers: int) -> str:
    return (f"a local Dask cluster of {workers} worker process(es)" if scheduler == "local"
            else f"the Dask cluster at {scheduler} ({workers} worker(s))")

