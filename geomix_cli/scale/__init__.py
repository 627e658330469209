"""Sharded sources beyond memory and beyond one machine (the `dask` extra for clusters).

Layers, each importing only downwards:
- `shards`: which files a SOURCE names; header-only layouts; memory-mapped row-block readers;
- `memory`: the block and piece planner under --max-memory;
- `pieces`: a piece of work (rows of one shard) -> Arrow batches of per-row results;
- `stats`: mergeable statistics (exact counts, fixed-bin quantiles);
- `store`: the Parquet results dataset (per-part atomic commit, resume, the output swap);
- `runner`: single-process and Dask execution, summaries, JSON Lines;
- `report`: the aggregated `check` report.
Nothing here prints; the command layer (`commands/sharded.py`) renders and sets exit codes.
"""
