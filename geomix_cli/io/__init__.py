"""The only layer that reads or writes files.

- `readers`: pair files (.npz, .json, .csv, .parquet, .safetensors, .pt) -> `RawPair`, and small
  text files; regular files only, declared sizes checked against the memory available.
- `writers`: atomic file writes honouring the umask, JSON (also row by row), figures, pair files.
- `pairs_file`: `[B, T, V]` pair files streamed to disk row by row (`geomix pairs`).
- `outputs`: what an output path may replace (report folders with a `.geomix-report` marker,
  files only with --force, never an input), the report-folder swap and its crash recovery, and
  the locked working folder of a report built over several runs (`--resume`).
- `blocks`: .safetensors / .npz pair files read by row blocks (memory-mapped or streamed), on
  the same header checks as `readers`.
- `datasets`: Parquet datasets written part by part (atomic parts, metadata in the footer).
- `machine`: memory available to this process, resident set, CPU model.

Turning a *source* (a file or a generator spec `gen:NAME:...`) into validated rows is one layer
up, in `geomix_cli.sources` (it needs both this layer and the generators of `geomix_cli.cases`).
"""

from geomix_cli.io.machine import (available_memory_bytes, check_memory, cpu_model_name,
                                   format_bytes, resident_set_bytes)
from geomix_cli.io.outputs import (FILE_RULE, REPORT_MARKER, REPORT_RULE, atomic_directory,
                                   check_output_file, check_report_dir, prepare_report_dir,
                                   read_report_marker, recover_interrupted)
from geomix_cli.io.pairs_file import (PAIRS_DTYPES, PAIRS_FORMATS, PairsFileWriter,
                                      bfloat16_bits, check_pairs_output)
from geomix_cli.io.readers import (FILE_FORMATS, GENERATOR_PREFIX, KEY_PAIRS, MASK_KEYS,
                                   WORKING_BYTES_PER_VALUE, RawPair, file_kind, loads_json,
                                   open_regular_file, os_error_text, read_pair_file, read_text)
from geomix_cli.io.writers import (dumps_json, file_mode, folder_mode, json_rows,
                                   save_figure_atomic, to_jsonable, write_bytes_atomic,
                                   write_csv_atomic, write_json_atomic, write_json_document,
                                   write_pairs_npz, write_text_atomic)

# Names that moved up to geomix_cli.sources (loading a source needs the generators, which sit
# above this layer). Kept importable from here for existing code; resolved only when used, so
# importing geomix_cli.io never imports the layers above it.
_MOVED_TO_SOURCES = ("load_source", "PairSource", "parse_row_selection")


def __getattr__(name):
    if name in _MOVED_TO_SOURCES:
        from geomix_cli import sources

        return getattr(sources, name)
    raise AttributeError(f"module 'geomix_cli.io' has no attribute '{name}'")
