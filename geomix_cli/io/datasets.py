"""Parquet datasets written part by part (the results of a sharded run).

A dataset is a folder of part files (`pandas.read_parquet(folder)` reads it whole; pyarrow and
pandas skip names beginning with '.' or '_', so markers and manifests may sit beside the parts).
Each part is written in row groups as its rows are computed, to a temporary file (an
`AtomicFile`: umask, fsync, rename), so a part that exists is complete. Its footer carries
geomix's key-value metadata (what the part was made from), read back without reading the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from geomix_cli.io.writers import AtomicFile

METADATA_KEY = b"geomix"


class PartWriter:
    """One part file, written row group by row group; `commit(**info)` adds `info` to the
    footer's geomix metadata and makes the part visible, `discard` removes it."""

    def __init__(self, path, schema, info: dict, *, dictionary_columns=()):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.info = dict(info)
        self.rows = 0
        self._file = AtomicFile(self.path, clean=False)
        try:
            self._writer = pq.ParquetWriter(self._file.handle, schema, compression="zstd",
                                            use_dictionary=list(dictionary_columns) or False)
        except BaseException:
            self._file.discard()
            raise

    def write(self, batch) -> None:
        import pyarrow as pa

        self._writer.write_table(pa.Table.from_batches([batch]))
        self.rows += batch.num_rows

    def commit(self, **info) -> Path:
        try:
            self._writer.add_key_value_metadata(
                {METADATA_KEY.decode(): json.dumps({**self.info, "rows": self.rows, **info})})
            self._writer.close()
        except BaseException:
            self._file.discard()
            raise
        return self._file.commit()

    def discard(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - already broken; the file goes anyway
            pass
        self._file.discard()


def read_part_info(path) -> dict | None:
    """The geomix metadata in a part's footer (None: not a readable part, or none there)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path).metadata or {}
        info = json.loads(metadata.get(METADATA_KEY, b"null"))
    except Exception:  # noqa: BLE001 - a damaged part is simply not a usable one
        return None
    return info if isinstance(info, dict) else None


def read_part(path):
    """A part's rows as an Arrow table (None when it cannot be read whole)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception:  # noqa: BLE001 - a damaged part is computed again, never trusted
        return None
