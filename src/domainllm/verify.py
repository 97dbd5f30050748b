"""Check every artifact of a run folder against what was recorded when it was written.

Usage:
    domainllm verify [RESULTS]      # exit 1 and one line per bad file if anything is corrupt

Three kinds of evidence, strongest first:

1. **Write-time checksums.** Every atomic write (:func:`domainllm.io.atomic_path`)
   under a folder that holds a ``.checksums/`` folder records the artifact's sha256
   there before renaming it into place: ``RESULTS/.checksums/<path>.json`` is
   ``{"format": 1, "path", "kind": "file", "bytes", "sha256"}`` for a file and
   ``{"format": 1, "path", "kind": "directory", "files": {relpath: {"bytes", "sha256"}}}``
   for a folder (a model, an evaluator, a shard folder). The workflow creates
   ``RESULTS/.checksums/`` (rules/common.smk); files written outside such a folder
   (unit tests, ad-hoc calls) get no record. A record whose artifact is missing,
   smaller, changed or has files added or removed is a problem.
2. **Shard manifests.** Each shard listed in a ``manifest.json`` of
   :mod:`domainllm.corpus.shards` must exist with the listed size and sha256, and each
   split's ``documents.parquet`` must hold ``total_docs`` rows.
3. **Formats**, for files no record vouches for: Parquet footers parse and every row
   group decodes to the footer's row count; JSON and JSON Lines parse; safetensors
   headers parse and their tensors fill the file exactly; a sharded checkpoint's index
   names existing files; ``.npy`` sizes match their header; ``.npz`` and PNG CRCs hold;
   text files are UTF-8.

Left-over temporaries of interrupted writes (``.<name>.tmp-<pid>``) are reported as
warnings: nothing reads them, and they are safe to delete. ``RESULTS/checkpoints/``
(training state written by the Trainer, resumed only when complete) is not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from domainllm.errors import PipelineError
from domainllm.io import sha256_file

CHECKSUMS = ".checksums"
RECORD_FORMAT = 1
# Temporary siblings of atomic writes: .<name>.tmp-<pid> (or -train under a launcher).
TMP_NAME = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]+$")
SKIP_DIRS = ("checkpoints",)
# Snakemake marks a directory() output's completion time with this empty file.
IGNORED_FILES = (".snakemake_timestamp",)
TEXT_SUFFIXES = (".md", ".html", ".txt", ".rst", ".jinja", ".csv", ".tsv", ".yaml", ".yml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


# --------------------------------------------------------------------------- recording


def checksum_root(path: str | os.PathLike) -> Path | None:
    """The nearest folder above ``path`` that holds a ``.checksums/`` folder, or None."""
    p = Path(os.path.abspath(path))
    for d in p.parents:
        if (d / CHECKSUMS).is_dir():
            return d
    return None


def describe(path: str | os.PathLike, known: dict[str, str] | None = None) -> dict:
    """The checksum record of a file or folder (sizes and sha256 of every file).

    Args:
        known: sha256 of files of the folder already computed from the same bytes
            (relative path -> digest), used instead of reading them again.
    """
    p = Path(path)
    known = known or {}
    if p.is_dir():
        files = {}
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            rel = f.relative_to(p).as_posix()
            files[rel] = {
                "bytes": f.stat().st_size,
                "sha256": known.get(rel) or sha256_file(f),
            }
        return {"format": RECORD_FORMAT, "kind": "directory", "files": files}
    return {
        "format": RECORD_FORMAT,
        "kind": "file",
        "bytes": p.stat().st_size,
        "sha256": sha256_file(p),
    }


def shard_digests(folder: str | os.PathLike) -> dict[str, str]:
    """The sha256 a shard folder's manifest lists for each shard (relative path -> digest).

    :func:`domainllm.corpus.shards.write_shards` hashes every shard as it writes it;
    recording the folder reuses those digests instead of reading the shards again.
    Only for recording a folder just written: :func:`verify` always reads the bytes.
    """
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return {
            s["file"]: s["sha256"]
            for entry in manifest_splits(data).values()
            for s in entry.get("shards", [])
            if s.get("sha256")
        }
    except (ValueError, AttributeError, KeyError, TypeError):
        return {}


def manifest_splits(data: dict) -> dict:
    """A shard manifest's splits; a format-1 manifest is one split, ``train``."""
    return data.get("splits") or {"train": data}


def record_path(root: Path, artifact: Path) -> Path:
    return root / CHECKSUMS / (artifact.relative_to(root).as_posix() + ".json")


def record_checksum(written: str | os.PathLike, final: str | os.PathLike) -> Path | None:
    """Record the checksums of ``written`` (a finished temporary) as those of ``final``.

    Called by :func:`domainllm.io.atomic_path` just before the rename, so a record
    never vouches for bytes that were not completely written. Nothing is recorded
    when no folder above ``final`` holds ``.checksums/``, or when ``final`` lies
    inside another atomic write's temporary folder (that folder's record covers it).

    Returns:
        The record's path, or None when nothing was recorded.
    """
    final = Path(os.path.abspath(final))
    root = checksum_root(final)
    if root is None:
        return None
    rel = final.relative_to(root).parts
    if rel[0] == CHECKSUMS or any(TMP_NAME.match(part) for part in rel[:-1]):
        return None
    record = {"path": "/".join(rel), **describe(written, known=shard_digests(written))}
    out = record_path(root, final)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- checking


@dataclass
class Report:
    """What ``verify`` found: problems (corruption) and warnings (harmless leftovers)."""

    root: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    by_record: int = 0
    by_manifest: int = 0
    by_format: int = 0
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, path: Path | str, why: str) -> None:
        self.problems.append((self._name(path), why))

    def warn(self, path: Path | str, why: str) -> None:
        self.warnings.append((self._name(path), why))

    def _name(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return str(self.root / p.relative_to(self.root)) if p.is_absolute() else str(p)
        except ValueError:
            return str(p)

    def summary(self) -> str:
        lines = [f"BAD  {p}: {why}" for p, why in self.problems]
        lines += [f"WARN {p}: {why}" for p, why in self.warnings]
        lines.append(
            f"{self.root}: {len(self.problems)} problem(s); files checked: "
            f"{self.by_record} by write-time checksum, {self.by_manifest} by shard manifest, "
            f"{self.by_format} by format; {len(self.unchecked)} of unknown format"
        )
        return "\n".join(lines)


def verify(results: str | os.PathLike = "results") -> Report:
    """Check every artifact under ``results``; see the module docstring for how.

    Raises:
        PipelineError: ``results`` is not a folder.
    """
    root = Path(results)
    if not root.is_dir():
        raise PipelineError(f"{root}: no such results folder")
    report = Report(root)
    vouched: set[Path] = set()
    _check_records(root, report, vouched)
    files, dirs = _walk(root, report)
    for manifest in (f for f in files if f.name == "manifest.json"):
        _check_shard_manifest(manifest, report, vouched)
    for d in dirs:
        index = sorted(d.glob("*.safetensors.index.json"))
        for i in index:
            _check_weight_index(i, report)
    for f in files:
        if f in vouched:
            continue
        checker = _format_checker(f)
        if checker is None:
            report.unchecked.append(str(f))
            continue
        report.by_format += 1
        try:
            why = checker(f)
        except Exception as e:  # any failure to read is the finding
            why = f"unreadable: {type(e).__name__}: {e}"
        if why:
            report.bad(f, why)
    return report


def _walk(root: Path, report: Report) -> tuple[list[Path], list[Path]]:
    """Files and folders under ``root``, less .checksums/, checkpoints/ and temporaries."""
    files, dirs = [], []
    for here, subdirs, names in os.walk(root):
        here_p = Path(here)
        keep = []
        for s in sorted(subdirs):
            if here_p == root and (s == CHECKSUMS or s in SKIP_DIRS):
                continue
            if TMP_NAME.match(s):
                report.warn(here_p / s, "left-over temporary folder of an interrupted write")
                continue
            keep.append(s)
            dirs.append(here_p / s)
        subdirs[:] = keep
        for n in sorted(names):
            if TMP_NAME.match(n):
                report.warn(here_p / n, "left-over temporary file of an interrupted write")
            elif n not in IGNORED_FILES:
                files.append(here_p / n)
    return files, dirs


def _check_records(root: Path, report: Report, vouched: set[Path]) -> None:
    base = root / CHECKSUMS
    if not base.is_dir():
        return
    for rec_file in sorted(base.rglob("*.json")):
        if TMP_NAME.match(rec_file.name):
            continue
        rel = rec_file.relative_to(base).as_posix()[: -len(".json")]
        artifact = root / rel
        try:
            record = json.loads(rec_file.read_text(encoding="utf-8"))
            kind = record["kind"]
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            report.bad(rec_file, f"unreadable checksum record ({e})")
            continue
        if not artifact.exists():
            report.bad(artifact, f"missing (its checksum record {rec_file} says it was written)")
            continue
        if kind == "file":
            if not artifact.is_file():
                report.bad(artifact, "recorded as a file, but is not one")
                continue
            why = _compare(artifact, record)
            if why:
                report.bad(artifact, why)
            vouched.add(artifact)
            report.by_record += 1
            continue
        if not artifact.is_dir():
            report.bad(artifact, "recorded as a folder, but is not one")
            continue
        listed = record.get("files", {})
        present = {
            f.relative_to(artifact).as_posix(): f
            for f in artifact.rglob("*")
            if f.is_file() and f.name not in IGNORED_FILES
        }
        for name, entry in sorted(listed.items()):
            f = artifact / name
            if name not in present:
                report.bad(f, "missing from its folder (recorded at write time)")
                continue
            why = _compare(f, entry)
            if why:
                report.bad(f, why)
            vouched.add(f)
            report.by_record += 1
        for name in sorted(set(present) - set(listed)):
            report.bad(present[name], "not part of the folder as written (added afterwards)")
            vouched.add(present[name])


def _compare(path: Path, entry: dict) -> str | None:
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return f"{size} bytes, {entry.get('bytes')} when written (truncated or extended)"
    if sha256_file(path) != entry.get("sha256"):
        return "sha256 differs from the one recorded when it was written (corrupted)"
    return None


def _check_shard_manifest(manifest: Path, report: Report, vouched: set[Path]) -> None:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        report.bad(manifest, f"invalid JSON ({e})")
        return
    if not isinstance(data, dict) or "shards" not in data or "dtype" not in data:
        return  # some other manifest
    folder = manifest.parent
    try:
        itemsize = {"uint16": 2, "uint32": 4}[data["dtype"]]
    except KeyError:
        report.bad(manifest, f"unsupported dtype {data['dtype']!r}")
        return
    for entry in manifest_splits(data).values():
        for shard in entry.get("shards", []):
            f = folder / shard["file"]
            if not f.is_file():
                report.bad(f, f"shard listed in {manifest} is missing")
                continue
            vouched.add(f)
            report.by_manifest += 1
            expected = int(shard["tokens"]) * itemsize
            size = f.stat().st_size
            if size != expected:
                report.bad(
                    f, f"{size} bytes, but {manifest.name} lists {shard['tokens']} tokens "
                    f"({expected} bytes)"
                )  # fmt: skip
            elif shard.get("sha256") and sha256_file(f) != shard["sha256"]:
                report.bad(f, f"sha256 does not match {manifest.name}")
        docs = entry.get("documents")
        if docs:
            f = folder / docs
            if not f.is_file():
                report.bad(f, f"documents table listed in {manifest} is missing")
                continue
            why = _check_parquet(f, expected_rows=entry.get("total_docs"))
            if why:
                report.bad(f, why)
            vouched.add(f)
            report.by_manifest += 1


def _check_weight_index(index: Path, report: Report) -> None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        report.bad(index, f"unreadable weight index ({type(e).__name__}: {e})")
        return
    for name in sorted(set(weight_map.values())):
        if not (index.parent / name).is_file():
            report.bad(index.parent / name, f"weight file listed in {index.name} is missing")


# --------------------------------------------------------------------------- formats


def _format_checker(path: Path):
    checkers = {
        ".parquet": _check_parquet,
        ".safetensors": _check_safetensors,
        ".jsonl": _check_jsonl,
        ".json": _check_json,
        ".npy": _check_npy,
        ".npz": _check_zip,
        ".png": _check_png,
        **dict.fromkeys(TEXT_SUFFIXES, _check_text),
    }
    return next((c for s, c in checkers.items() if path.name.endswith(s)), None)


def _check_parquet(path: Path, expected_rows: int | None = None) -> str | None:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        return f"not a readable Parquet file ({type(e).__name__}: {e})"
    declared = pf.metadata.num_rows
    rows = 0
    try:
        for i in range(pf.num_row_groups):
            rows += pf.read_row_group(i).num_rows
    except Exception as e:
        return f"Parquet data does not decode ({type(e).__name__}: {e})"
    if rows != declared:
        return f"{rows} rows decode, the footer says {declared}"
    if expected_rows is not None and rows != int(expected_rows):
        return f"{rows} rows, the manifest says {expected_rows}"
    return None


def _check_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 at byte {e.start}"
    except json.JSONDecodeError as e:
        return f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    return None


def _check_jsonl(path: Path) -> str | None:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                return f"line {lineno}: not valid UTF-8"
            except json.JSONDecodeError as e:
                return f"line {lineno}: invalid JSON: {e.msg}"
    return None


def _check_text(path: Path) -> str | None:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 at byte {e.start}"
    return None


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header length {n} exceeds the file ({size} bytes): truncated"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            return f"safetensors header is not valid JSON ({e})"
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in meta["data_offsets"])
            count = 1
            for d in meta["shape"]:
                count *= int(d)
            itemsize = SAFETENSORS_DTYPES[meta["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            return f"tensor {name!r}: malformed header entry ({type(e).__name__}: {e})"
        if end - begin != count * itemsize:
            return f"tensor {name!r}: offsets {begin}..{end} disagree with its shape and dtype"
        spans.append((begin, end))
    data = size - 8 - n
    expected = max((e for _, e in spans), default=0)
    if expected != data:
        what = "truncated" if data < expected else "trailing bytes"
        return f"tensors need {expected} data bytes, the file has {data} ({what})"
    spans.sort()
    for (_, e1), (b2, _) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            return "tensors overlap in the data section"
    return None


def _check_npy(path: Path) -> str | None:
    import numpy as np

    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            return f"not a valid .npy header ({e})"
        offset = f.tell()
    count = 1
    for d in shape:
        count *= d
    expected = offset + count * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        return f"{size} bytes, the .npy header needs {expected}"
    return None


def _check_zip(path: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a readable zip archive ({e})"
    return f"member {bad} fails its CRC" if bad else None


def _check_png(path: Path) -> str | None:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG file (bad signature)"
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            return "truncated PNG chunk header"
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return f"truncated PNG chunk {kind!r}"
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != crc:
            return f"PNG chunk {kind!r} fails its CRC"
        pos = end + 4
        if kind == b"IEND":
            return None if pos == len(data) else "bytes after the PNG end"
    return "PNG has no end chunk (truncated)"


def tree_sha256(path: str | os.PathLike) -> str:
    """One sha256 over a file, or over a folder's relative paths and file contents."""
    record = describe(path)
    if record["kind"] == "file":
        return record["sha256"]
    h = hashlib.sha256()
    for name, entry in record["files"].items():
        h.update(f"{name}\0{entry['sha256']}\n".encode())
    return h.hexdigest()
