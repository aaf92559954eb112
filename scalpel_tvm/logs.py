"""Tuning logs: meta_schedule JSON databases, read line by line so damage is reported, not hidden.

A log is a directory with TVM's `database_workload.json` and `database_tuning_record.json`
(exactly what `tvm.s_tir.meta_schedule.database.JSONDatabase` reads and writes). TVM's own reader
stops at the first bad line with a bare "Unexpected end of string"; `TuningLog` parses every line
itself and names the file and line of a truncated or corrupted one. With `skip_corrupt=True` it
leaves such lines out and says how many, in a warning — it never drops records silently.

Records are grouped by the scalpel workload each module stands for (`workloads.workload_of`);
workloads written by other tools are kept in the database but have no key.
"""
from __future__ import annotations

import json
import lzma
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from .errors import ScalpelError
from .workloads import (FORMS, Workload, canonical_module, template_kernel, template_knobs,
                        workload_of)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
FAILED_SECONDS = 1e9  # meta_schedule stores 1e10 for a candidate that failed to build or run

SHIPPED = Path(__file__).parent / "data" / "logs"


@dataclass(frozen=True)
class Measured:
    """One record of a workload: median seconds, and either template knobs or an ms trace."""

    seconds: float
    knobs: dict | None
    record: ms.database.TuningRecord


class LogError(ScalpelError):
    pass


_SHIPPED_CACHE: dict = {}


class TuningLog:
    """The records of one log directory, by workload key, ready for the cost model and the Pass."""

    def __init__(self, path, *, skip_corrupt: bool = False):
        self.path = Path(path)
        if not is_log(self.path):
            raise LogError(f"{self.path} is not a tuning log: it has no {WORKLOAD_FILE} "
                           "(make one with `scalpel tune`)")
        self.skipped: list[str] = []
        self.records: dict[str, list[Measured]] = {}  # successful measurements by workload key
        self.attempts: dict[str, list[dict | None]] = {}  # knobs (None: meta_schedule) of every record
        workloads = [self._read_workload(line, number, skip_corrupt)
                     for number, line in self._lines(WORKLOAD_FILE)]
        # The scalpel workload key of each workload line, in the order records index them
        # (None: corrupt, or written by another tool).
        self.keys: list[str | None] = [_key(w) for w in workloads]
        for number, line in self._lines(RECORD_FILE):
            self._read_record(line, number, workloads, skip_corrupt)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} corrupt line(s) of {self.path}: "
                          + "; ".join(self.skipped[:5]), stacklevel=2)

    @classmethod
    def shipped(cls, spec) -> TuningLog | None:
        """The log shipped in the package for `spec`'s preset, if there is one. `host` uses
        the log of its vector class (x86-avx2 for 8 fp32 lanes), measured on this machine kind;
        a CUDA target the log of its arch (`cuda-sm_90`, measured on an H100)."""
        name = spec.name
        if spec.parallelism == "high":
            name = f"cuda-{spec.target.attrs.get('arch', '')}"
        if name == "host":
            name = {8: "x86-avx2", 16: "x86-avx512"}.get(spec.lanes("float32"), name)
        path = SHIPPED / name
        if not is_log(path):
            return None
        if path not in _SHIPPED_CACHE:
            _SHIPPED_CACHE[path] = cls(path)
        return _SHIPPED_CACHE[path]

    def _lines(self, name: str):
        file = self.path / name
        if file.is_file():
            text = file.read_text()
        elif file.with_name(name + ".xz").is_file():  # the shipped logs (27 MB -> 360 KB)
            text = lzma.decompress(file.with_name(name + ".xz").read_bytes()).decode()
        else:
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield number, line

    def _corrupt(self, name: str, number: int, why: str, skip: bool):
        where = f"{self.path / name}:{number}"
        if not skip:
            raise LogError(f"corrupt tuning log line {where}: {why}. Delete or repair that line, "
                           "or read the log with skip_corrupt=True (`--skip-corrupt`) to leave it out")
        self.skipped.append(f"{where} ({why})")

    def _read_workload(self, line: str, number: int, skip: bool):
        try:
            return ms.database.Workload.from_json(json.loads(line))
        except Exception as error:  # json, base64 or IR errors all mean the same to the user
            self._corrupt(WORKLOAD_FILE, number, _short(error), skip)
            return None

    def _read_record(self, line: str, number: int, workloads: list, skip: bool):
        try:
            index, body = json.loads(line)
            if not isinstance(index, int) or not 0 <= index < len(workloads):
                raise ValueError(f"workload index {index!r} out of range (the workload file has "
                                 f"{len(workloads)} lines)")
            workload = workloads[index]
            if workload is None:
                raise ValueError(f"its workload (line {index + 1} of {WORKLOAD_FILE}) is corrupt")
            record = ms.database.TuningRecord.from_json(body, workload)
        except Exception as error:
            self._corrupt(RECORD_FILE, number, _short(error), skip)
            return
        key = self.keys[index]
        if key is None:
            return
        knobs = template_knobs(record.trace)
        self.attempts.setdefault(key, []).append(knobs)  # failed ones too: not retried
        seconds = _median([float(s) for s in record.run_secs or []])
        if math.isfinite(seconds) and seconds < FAILED_SECONDS:
            self.records.setdefault(key, []).append(Measured(seconds, knobs, record))

    def best(self, workload: Workload) -> Measured | None:
        """The fastest record of exactly this workload (epilogue included)."""
        records = self.records.get(workload.key)
        return min(records, key=lambda m: m.seconds) if records else None

    def best_knobs(self, workload: Workload) -> dict | None:
        """Template knobs for `workload`: its own best template record, else the best template
        record of the same kernel with another epilogue (the knobs do not depend on it)."""
        own = [m for m in self.records.get(workload.key, []) if m.knobs is not None]
        if not own:
            kernel = _without_epilogue(workload.key)
            own = [m for key, records in self.records.items() for m in records
                   if m.knobs is not None and _without_epilogue(key) == kernel]
        return min(own, key=lambda m: m.seconds).knobs if own else None

    def seconds_by_query(self) -> dict:
        """Best measured seconds per planner query (forms are priced without their epilogue)."""
        best: dict = {}
        for key, records in self.records.items():
            query = Workload.from_key(key).query
            seconds = min(m.seconds for m in records)
            best[query] = min(seconds, best.get(query, math.inf))
        return best

    def has_candidate(self, workload: Workload, knobs: dict) -> bool:
        """Whether this template setting was measured, successfully or not."""
        return knobs in self.attempts.get(workload.key, [])

    def search_trials(self, workload: Workload) -> int:
        """meta_schedule trials recorded for `workload`, failed builds and runs included."""
        return sum(knobs is None for knobs in self.attempts.get(workload.key, []))

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


def drop_records(directory, forms) -> list:
    """Remove every record of a workload whose form is in `forms` (the FC forms, or "conv")
    from the uncompressed log in `directory`, and return those workloads, to be measured again
    after their kernel changed (`tune` then treats them as never tuned). The workload lines stay,
    so the other records' indices stay valid; the record file is replaced in one step, so an
    interruption leaves the old file or the new one."""
    directory = Path(directory)
    forms = set(forms)
    unknown = forms - {*FORMS, "conv"}
    if unknown:
        raise ValueError(f"unknown form(s) {sorted(unknown)}: choose from {[*FORMS, 'conv']}")
    keys = TuningLog(directory).keys  # also names a corrupt line or a record past the workloads
    dropped = {key for key in keys if key is not None and _form(Workload.from_key(key)) in forms}
    records = [line for line in (directory / RECORD_FILE).read_text().splitlines() if line.strip()]
    kept = [line for line in records if keys[json.loads(line)[0]] not in dropped]
    partial = directory / (RECORD_FILE + ".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, directory / RECORD_FILE)
    return [Workload.from_key(key) for key in sorted(dropped)]


def _key(workload) -> str | None:
    found = workload_of(workload.mod) if workload is not None else None
    return found.key if found is not None else None


def _form(workload) -> str:
    return workload.form if isinstance(workload, Workload) else "conv"


def is_log(path) -> bool:
    """A log directory: TVM's files, plain or xz-compressed (`xz -dk` them for JSONDatabase)."""
    path = Path(path)
    return (path / WORKLOAD_FILE).is_file() or (path / (WORKLOAD_FILE + ".xz")).is_file()


def resolve_log(spec, logs) -> TuningLog | None:
    """`logs` as the Pass and the planner take it: None for the log shipped for the target (if
    any), False for none, a directory, or a TuningLog."""
    if logs is None:
        return TuningLog.shipped(spec)
    if logs is False:
        return None
    return logs if isinstance(logs, TuningLog) else TuningLog(logs)


def tuned_kernel(log: TuningLog | None, workload, name: str):
    """The fastest logged kernel for `workload` — a meta_schedule schedule or the template with
    its best knobs — or None when the log has nothing for it."""
    if log is None:
        return None
    best = log.best(workload)
    if best is not None and best.knobs is None:
        return scheduled_kernel(best, workload, name)
    knobs = log.best_knobs(workload)
    return template_kernel(workload, knobs, name) if knobs is not None else None


def scheduled_kernel(measured: Measured, workload: Workload, name: str):
    """The PrimFunc a meta_schedule record stands for: its trace replayed on the canonical
    function (postprocessing steps included, as `MetaScheduleApplyDatabase` does)."""
    sch = s_tir.Schedule(canonical_module(workload))
    measured.record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"].with_attr("global_symbol", name)


def _without_epilogue(key: str) -> str:
    """A workload key less its last two fields, the bias and the activation."""
    return key.rsplit(":", 2)[0]


def _median(values: list[float]) -> float:
    if not values:
        return math.inf
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:200]
