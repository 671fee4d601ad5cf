"""DICOMweb: studies pulled from a PACS into a folder ``manifest build`` reads, and the DICOM-SEG ``score --masks-out``
writes pushed back to it (dicomweb-client: QIDO-RS to list a study's series, WADO-RS to retrieve them, STOW-RS to
store). Orthanc, dcm4chee, the cloud healthcare APIs and the Imaging Data Commons all speak it.

The export is named by position, never by identifier: ``study0001/study0001_SE01`` (series in SeriesNumber order),
so case ids, logs and MLflow carry no UID. Which folder holds which study and series is kept in the export's own
``studies.csv``, beside the DICOM files that hold every tag anyway, and read by nothing else in medtl. A series is
written to a hidden folder and renamed when whole: a rerun after a crash or a refused study retrieves only what is
missing. A token is read from the environment variable ``--token-env`` names, never from the command line.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtl.errors import MedtlError
from medtl.files import write_atomically

logger = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.ERROR)  # its debug lines carry URLs (UIDs) and headers (tokens)

INDEX = "studies.csv"
PUSHED = ".medtl-pushed"


@dataclass
class PullSummary:
    """What a pull did: series retrieved now, series already there, and the studies that failed, with why."""

    retrieved: int = 0
    present: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def connect(url: str, token_env: str | None = None) -> Any:
    """A DICOMweb client for ``url``, with the bearer token held in ``$token_env`` when one is named."""
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError:
        raise MedtlError("medtl pacs needs dicomweb-client: pip install 'medtl[pacs]'") from None
    headers = {}
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise MedtlError(f"--token-env {token_env}: that environment variable is empty or unset; export the token "
                             "in it")
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith(("http://", "https://")):
        raise MedtlError(f"{url}: not a DICOMweb address; give its http:// or https:// root (…/dicom-web)")
    client = DICOMwebClient(url.rstrip("/"), headers=headers, timeout=60)
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
    return client


def server_failure(url: str, exc: Exception) -> str | None:
    """One line for a failure of the server as a whole (unreachable, access refused), or None for one of a study."""
    import requests

    from medtl.config import redact_uri

    url = redact_uri(url)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return (f"{url}: cannot reach the DICOMweb server ({type(exc).__name__}); check the address, the network and "
                "any proxy, then rerun")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"{url}: the server refused access (HTTP {status}); give a token with --token-env, or ask for access "
                "to these studies")
    return None


def read_study_list(path: Path) -> list[str]:
    """StudyInstanceUIDs, one a line (blank lines and # comments skipped), each once in the order given."""
    if not path.is_file():
        raise MedtlError(f"--studies {path}: file not found; give a text file of StudyInstanceUIDs, one a line")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").splitlines()]
    uids = list(dict.fromkeys(line for line in lines if line))
    bad = next((i for i, uid in enumerate(uids) if not all(part.isdigit() for part in uid.split("."))), None)
    if bad is not None:
        raise MedtlError(f"--studies {path}: entry {bad + 1} is not a DICOM UID (digits and dots); give one "
                         "StudyInstanceUID a line")
    if not uids:
        raise MedtlError(f"--studies {path}: no StudyInstanceUID in it")
    return uids


def _index(out: Path) -> list[dict[str, str]]:
    if not (out / INDEX).is_file():
        return []
    with open(out / INDEX, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_index(out: Path, rows: list[dict[str, str]]) -> None:
    columns = ["folder", "study_instance_uid", "series_instance_uid", "modality"]

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(out / INDEX, write)


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _study_labels(uids: list[str], rows: list[dict[str, str]]) -> dict[str, str]:
    """``study0001``... by the order of the list, keeping the label an earlier pull gave a study."""
    labels = {r["study_instance_uid"]: r["folder"].split("/", 1)[0] for r in rows}
    taken = {int(label.removeprefix("study")) for label in labels.values() if label.removeprefix("study").isdigit()}
    number = 0
    for uid in uids:
        if uid not in labels:
            number = next(n for n in range(number + 1, len(uids) + len(taken) + 2) if n not in taken)
            labels[uid] = f"study{number:04d}"
    return labels


def _why(exc: Exception) -> str:
    """A failure in a few words, without the server's text (it may quote the URL, and so the UIDs)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 404:
        return "not found on the server (HTTP 404)"
    return f"HTTP {status}" if status else type(exc).__name__


def _series_folder(label: str, out: Path, rows: list[dict[str, str]]) -> str:
    """The next ``LABEL/LABEL_SEnn`` of a study: numbers an earlier pull gave stay with their series."""
    used = {r["folder"] for r in rows if r["folder"].startswith(f"{label}/")}
    number = next(n for n in range(1, len(used) + 2) if f"{label}/{label}_SE{n:02d}" not in used)
    return f"{label}/{label}_SE{number:02d}"


def _retrieve(client: Any, study: str, series: str, folder: Path) -> None:
    """One series into ``folder``, through a hidden folder beside it renamed when whole: a failure leaves nothing."""
    import pydicom

    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for number, ds in enumerate(client.iter_series(study, series), start=1):
            pydicom.dcmwrite(partial / f"{number:05d}.dcm", ds, enforce_file_format=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def pull(url: str, studies: list[str], out: Path, modalities: list[str] | None = None, token_env: str | None = None,
         source: str = "--studies", progress: bool = False) -> PullSummary:
    """Retrieves every series of ``studies`` (of ``modalities`` where given: CT and RTSTRUCT, say, for a scan and its
    contours) into ``out``; see the module's docstring.
    A server that cannot be reached or refuses access stops the pull in one line; a study it cannot give is counted
    in the summary by its entry in ``source``, and the pull goes on."""
    from medtl.files import claim_folder
    from medtl.log import counted

    client = connect(url, token_env)
    claim_folder(out, "--out", "pacs")
    rows = _index(out)
    labels = _study_labels(studies, rows)
    known = {(r["study_instance_uid"], r["series_instance_uid"]): r["folder"] for r in rows}
    summary = PullSummary()
    for entry, study in enumerate(counted(studies, "studies", progress), start=1):
        label, where = labels[study], f"entry {entry} of {source}"
        try:
            found = [s for s in client.search_for_series(study_instance_uid=study, fields=["SeriesNumber", "Modality"])
                     if not modalities or _value(s, "00080060").upper() in modalities]
            if not found:
                summary.failed[where] = f"no {' or '.join(modalities or [])}{' ' if modalities else ''}series on the server"
            found.sort(key=lambda s: (int(_value(s, "00200011") or 0), _value(s, "0020000E")))
            for item in found:
                series = _value(item, "0020000E")
                if (study, series) in known and (out / known[(study, series)]).is_dir():
                    summary.present += 1
                    continue
                folder = known.get((study, series)) or _series_folder(label, out, rows)
                _retrieve(client, study, series, out / folder)
                if (study, series) not in known:
                    rows.append({"folder": folder, "study_instance_uid": study, "series_instance_uid": series,
                                 "modality": _value(item, "00080060")})
                    known[(study, series)] = folder
                _write_index(out, rows)  # after each series: what a crash leaves is indexed and whole
                summary.retrieved += 1
        except Exception as exc:  # noqa: BLE001 - requests, dicomweb-client and pydicom each raise their own
            whole = server_failure(url, exc)
            if whole:
                raise MedtlError(whole) from None
            summary.failed[where] = _why(exc)
    return summary


def push(url: str, folder: Path, token_env: str | None = None, progress: bool = False) -> tuple[int, int, dict[str, str]]:
    """Stores every DICOM-SEG under ``folder`` (``score --masks-out``) on the server; returns how many were stored now,
    how many an earlier push stored (listed in ``folder/.medtl-pushed``, so a rerun sends only the rest), and the
    files the server refused, with why."""
    import pydicom

    from medtl.data.dicom import is_dicom_file
    from medtl.log import counted

    if not folder.is_dir():
        raise MedtlError(f"{folder}: not a folder; give the --masks-out folder of a scoring of DICOM series")
    segs = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_dicom_file(p)
            and str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")) == "SEG"]
    if not segs:
        raise MedtlError(f"{folder}: holds no DICOM-SEG; give the --masks-out folder of a scoring of DICOM series")
    log = folder / PUSHED
    done = set(log.read_text().splitlines()) if log.is_file() else set()
    todo = [p for p in segs if str(p.relative_to(folder)) not in done]
    client = connect(url, token_env)
    failed: dict[str, str] = {}
    for path in counted(todo, "storing", progress):
        try:
            answer = client.store_instances([pydicom.dcmread(path)])
        except Exception as exc:  # noqa: BLE001 - requests, dicomweb-client and pydicom each raise their own
            whole = server_failure(url, exc)
            if whole:
                raise MedtlError(whole) from None
            failed[path.name] = _why(exc)
            continue
        if answer is not None and answer.get("FailedSOPSequence"):
            failed[path.name] = "refused by the server (FailedSOPSequence)"
            continue
        with open(log, "a") as fh:
            fh.write(f"{path.relative_to(folder)}\n")
    return len(todo) - len(failed), len(segs) - len(todo), failed
