"""The cleaned corpus as N parts processed by separate jobs (config ``corpus.parts.n``).

Part ``i`` of ``n`` is the ``i``-th of ``n`` contiguous, near-equal row ranges of
``clean.parquet``: rows ``[i * rows // n, (i + 1) * rows // n)``. Every row
belongs to exactly one part, and concatenating the parts in index order gives the
file's rows in file order, so whatever is computed per row (an embedding, a
score) does not depend on ``n``. Parts are named ``"<i>-of-<n>"`` with three
digits (``000-of-002``), so changing ``n`` never reuses a part file of another split.
"""

from __future__ import annotations

import re

from domainllm.errors import PipelineError

PART_RE = re.compile(r"^(\d+)-of-(\d+)$")


def part_names(n_parts: int) -> list[str]:
    """The names of the ``n_parts`` parts, in order."""
    if n_parts < 1:
        raise PipelineError(f"config key 'corpus.parts.n' must be >= 1, got {n_parts}")
    return [f"{i:03d}-of-{n_parts:03d}" for i in range(n_parts)]


def parse_part(name: str) -> tuple[int, int]:
    """``"001-of-003"`` -> ``(1, 3)``.

    Raises:
        PipelineError: a name that is not ``<i>-of-<n>`` with ``0 <= i < n``.
    """
    m = PART_RE.match(str(name))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise PipelineError(f"'{name}' is not a corpus part name like 000-of-002")
    return int(m.group(1)), int(m.group(2))


def part_range(n_rows: int, index: int, n_parts: int) -> tuple[int, int]:
    """Row range ``[lo, hi)`` of part ``index`` of ``n_parts`` over ``n_rows`` rows."""
    if not 0 <= index < n_parts:
        raise PipelineError(f"part {index} of {n_parts} does not exist")
    return index * n_rows // n_parts, (index + 1) * n_rows // n_parts
