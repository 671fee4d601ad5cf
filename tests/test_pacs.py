"""medtl pacs against a DICOMweb server on this machine (QIDO-RS, WADO-RS, STOW-RS over HTTP on a port the OS
chooses): studies pulled into a folder the manifest is built from, resumed after a failure, no UID in a name or a
line, and DICOM-SEG pushed back once."""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import pytest

from medtl.data.synthetic import write_ct_series
from medtl.errors import MedtlError
from medtl.archives import DicomWeb
from medtl.pacs import pull, push, read_study_list
from tests.conftest import run_cli


class Archive:
    """What the server holds (study -> series -> files), what it was sent, and the faults to stage."""

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, list[Path]]] = {}
        self.stored: list[pydicom.Dataset] = []
        self.token: str | None = None
        self.broken: set[str] = set()  # series whose retrieval fails with HTTP 500
        self.refuse_store = False
        self.requests: list[str] = []
        self.nodes: dict[str, tuple[str, int]] = {}  # AE titles a C-MOVE may send to
        self.ignore_offset = False  # a server that answers every page with the first


def matching_studies(archive: Archive, keys: dict[str, str]) -> list[str]:
    """The studies a study-level query matches, as an archive reads its keys: AccessionNumber exactly, StudyDate as a
    range (either end open), ModalitiesInStudy by any series' modality."""
    found = []
    for uid, series in archive.studies.items():
        first = [pydicom.dcmread(files[0], stop_before_pixels=True) for files in series.values()]
        date, (since, _, until) = str(first[0].StudyDate), keys.get("StudyDate", "-").partition("-")
        if (keys.get("AccessionNumber") in (None, first[0].AccessionNumber)
                and (not since or date >= since) and (not until or date <= until)
                and keys.get("ModalitiesInStudy") in (None, *(ds.Modality for ds in first))):
            found.append(uid)
    return found


def handler(archive: Archive) -> type[BaseHTTPRequestHandler]:
    class DICOMweb(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _allowed(self) -> bool:
            if archive.token and self.headers.get("Authorization") != f"Bearer {archive.token}":
                self.send_response(401)
                self.end_headers()
                return False
            return True

        def _send(self, status: int, body: bytes = b"", content_type: str = "application/dicom+json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            archive.requests.append(self.path)
            if not self._allowed():
                return
            parts = urlsplit(self.path)
            if parts.path == "/dicom-web/studies":  # QIDO-RS: the studies a query's keys match
                asked = {k: v[0] for k, v in parse_qs(parts.query).items()}
                keys = {k: v for k, v in asked.items() if k not in ("includefield", "limit", "offset")}
                found = [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in matching_studies(archive, keys)]
                if not archive.ignore_offset:
                    found = found[int(asked.get("offset", 0)):][:min(1, int(asked.get("limit", 10**6)))]  # capped pages
                return self._send(200, json.dumps(found).encode()) if found else self._send(204)
            match = re.fullmatch(r"/dicom-web/studies/([\d.]+)/series(?:/([\d.]+))?", parts.path)
            if not match or match.group(1) not in archive.studies:
                return self._send(404)
            study, series = archive.studies[match.group(1)], match.group(2)
            if series is None:  # QIDO-RS: the study's series
                wanted = parse_qs(parts.query).get("Modality", [None])[0]
                found = []
                for uid, files in study.items():
                    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
                    if wanted in (None, ds.Modality):
                        found.append({"0020000E": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": [ds.Modality]},
                                      "00200011": {"vr": "IS", "Value": [int(ds.get("SeriesNumber", 1))]}})
                return self._send(200, json.dumps(found).encode()) if found else self._send(204)
            if series not in study or series in archive.broken:  # WADO-RS: the series' instances
                return self._send(404 if series not in study else 500)
            boundary = uuid.uuid4().hex
            body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), f.read_bytes())
                            for f in study[series]) + b"--%s--" % boundary.encode()
            self._send(200, body, f'multipart/related; type="application/dicom"; boundary={boundary}')

        def do_POST(self) -> None:  # noqa: N802 - STOW-RS
            if not self._allowed():
                return
            if self.headers.get("Transfer-Encoding") == "chunked":
                raw = bytearray()
                while (size := int(self.rfile.readline().strip(), 16)):
                    raw += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
            boundary = re.search(r'boundary="?([^";]+)', self.headers["Content-Type"]).group(1).encode()
            for part in bytes(raw).split(b"--" + boundary)[1:-1]:
                archive.stored.append(pydicom.dcmread(io.BytesIO(part.split(b"\r\n\r\n", 1)[1][:-2])))
            answer = {"00081198": {"vr": "SQ", "Value": [{}]}} if archive.refuse_store else {}
            self._send(200, json.dumps(answer).encode())

    return DICOMweb


@pytest.fixture
def server():
    archive = Archive()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(archive))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield archive, f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    httpd.shutdown()
    httpd.server_close()


def study_on(archive: Archive, root: Path, name: str, n_series: int = 2, seed: int = 0, date: str = "20260101") -> str:
    """A study of ``n_series`` small CT series, the last one numbered first, on ``date``; returns its
    StudyInstanceUID."""
    study = pydicom.uid.generate_uid()
    archive.studies[study] = {}
    for s in range(n_series):
        folder = root / f"{name}_{s}"
        volume = np.random.default_rng(seed + s).normal(0, 50, (8, 8, 3)).astype(np.float32)
        uid = write_ct_series(folder, volume, patient_tag=name.upper(), seed=seed + s)
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesNumber, ds.StudyDate = study, n_series - s, date
            ds.save_as(path, enforce_file_format=True)
        archive.studies[study][uid] = sorted(folder.iterdir())
    return study


def test_studies_are_pulled_by_position_and_a_rerun_fetches_only_what_is_missing(server, tmp_path, caplog):
    archive, url = server
    first, second = study_on(archive, tmp_path / "pacs", "alice"), study_on(archive, tmp_path / "pacs", "bob", 1, seed=5)
    (tmp_path / "studies.txt").write_text(f"# from the registry\n{first}\n\n{pydicom.uid.generate_uid()}\n{second}\n")
    broken = next(iter(archive.studies[second]))
    archive.broken.add(broken)
    summary = pull(DicomWeb(url), read_study_list(tmp_path / "studies.txt"), tmp_path / "export",
                   source="studies.txt")
    assert (summary.retrieved, summary.present) == (2, 0)
    assert summary.failed == {"entry 2 of studies.txt": "not found on the server (HTTP 404)",
                              "entry 3 of studies.txt": "HTTP 500"}
    export = tmp_path / "export"
    names = sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_dir())
    assert names == ["study0001", "study0001/study0001_SE01", "study0001/study0001_SE02", "study0003"]
    series_number_one = [uid for uid, files in archive.studies[first].items()
                         if pydicom.dcmread(files[0]).SeriesNumber == 1]
    assert {pydicom.dcmread(p).SeriesInstanceUID for p in (export / "study0001" / "study0001_SE01").iterdir()} == set(
        series_number_one)  # series in SeriesNumber order, each whole
    assert not any(p.name.startswith(".partial") for p in export.rglob("*"))  # the failed series left nothing half
    archive.broken.clear()
    again = pull(DicomWeb(url), read_study_list(tmp_path / "studies.txt"), export, source="studies.txt")
    assert (again.retrieved, again.present) == (1, 2)
    index = (export / "studies.csv").read_text()
    assert first in index and second in index and "study0003/study0003_SE01" in index
    done = run_cli("manifest", "build", export, "--out", tmp_path / "m.csv")
    assert done.returncode == 0, done.stderr
    manifest = (tmp_path / "m.csv").read_text()
    assert "study0001_SE02" in manifest and "study0003_SE01" in manifest
    for uid in (first, second, broken):  # identifiers stay in the export's own index
        assert uid not in manifest and uid not in caplog.text and uid not in done.stdout + done.stderr


def test_a_pull_interrupted_keeps_each_series_whole_and_its_rerun_retrieves_the_rest(server, tmp_path, monkeypatch):
    archive, url = server
    (tmp_path / "studies.txt").write_text(study_on(archive, tmp_path / "pacs", "alice") + "\n")
    real, calls = DicomWeb.retrieve, []

    def interrupted_on_the_second(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(DicomWeb, "retrieve", interrupted_on_the_second)
    export = tmp_path / "export"
    res = run_cli("pacs", "pull", url, "--studies", tmp_path / "studies.txt", "--out", export)
    assert res.returncode == 130, res.stderr
    assert "interrupted: every series retrieved so far is kept whole; rerun the same command" in res.stderr
    assert not any(p.name.startswith(".partial") for p in export.rglob("*"))
    monkeypatch.undo()
    res = run_cli("pacs", "pull", url, "--studies", tmp_path / "studies.txt", "--out", export)
    assert res.returncode == 0 and "1 series retrieved now, 1 already there" in res.stdout, res.stdout + res.stderr


def test_a_server_that_cannot_be_reached_or_refuses_stops_in_one_line(server, tmp_path, monkeypatch):
    archive, url = server
    study = study_on(archive, tmp_path / "pacs", "carol", 1)
    (tmp_path / "s.txt").write_text(study + "\n")
    assert "answers a study search (QIDO-RS)" in run_cli("pacs", "echo", url).stdout
    archive.token = "s3cret"
    assert "refused access (HTTP 401)" in run_cli("pacs", "echo", url).stderr
    refused = run_cli("pacs", "pull", url, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e1")
    assert refused.returncode != 0 and "refused access (HTTP 401); give a token with --token-env" in refused.stderr
    assert refused.stderr.count("\n") == 1 and study not in refused.stderr
    monkeypatch.setenv("PACS_TOKEN", "s3cret")
    done = run_cli("pacs", "pull", url, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e2", "--token-env",
                   "PACS_TOKEN", "--modality", "ct")
    assert done.returncode == 0, done.stderr
    assert "1 series retrieved now" in done.stdout and "s3cret" not in done.stdout + done.stderr
    gone = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing listens
    lost = run_cli("pacs", "pull", gone, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e3")
    assert lost.returncode != 0 and "cannot reach the DICOMweb server" in lost.stderr
    assert run_cli("pacs", "pull", url, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e4", "--token-env",
                   "UNSET_VAR").stderr.startswith("error: --token-env UNSET_VAR: that environment variable is empty")
    (tmp_path / "bad.txt").write_text("alice\n")
    with pytest.raises(MedtlError, match="entry 1 is not a DICOM UID"):
        read_study_list(tmp_path / "bad.txt")


def test_a_server_whose_certificate_is_not_trusted_says_so_and_is_used_once_its_ca_is_given(tmp_path, monkeypatch):
    """A hospital's DICOMweb server signed by the hospital's own CA was reported as not reached ("check the address,
    the network and any proxy"), though it answered."""
    import ssl

    from tests.conftest import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    archive = Archive()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(archive))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    try:
        (tmp_path / "s.txt").write_text(study_on(archive, tmp_path / "pacs", "dave", 1) + "\n")
        res = run_cli("pacs", "echo", url)
        assert res.returncode != 0 and res.stderr.strip() == (
            f"error: {url}: its TLS certificate is not trusted here (self-signed certificate); give the certificate of "
            "the CA that signed it in REQUESTS_CA_BUNDLE (a .pem file), then rerun")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert "answers a study search (QIDO-RS)" in run_cli("pacs", "echo", url).stdout
        done = run_cli("pacs", "pull", url, "--studies", tmp_path / "s.txt", "--out", tmp_path / "export")
        assert done.returncode == 0 and "1 series retrieved now" in done.stdout, done.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("address", ["https://", "http://pacs:abc/dicom-web", "http:///dicom-web",
                                     "https://reader:pw@:443/dicom-web"])
def test_a_malformed_dicomweb_address_is_one_line_that_shows_the_form(address):
    """``https://`` (a paste cut short) was dicomweb_client's ValueError, printed as an unexpected error."""
    res = run_cli("pacs", "echo", address)
    assert res.returncode == 2 and "not a DICOMweb address; give the server's root, e.g. https://" in res.stderr
    assert res.stderr.count("\n") == 1 and "pw@" not in res.stderr, res.stderr  # credentials in a URL stay out


@pytest.mark.parametrize("address", ["dicom://PACS@127.0.0.1:99999", "dicom://PACS@127.0.0.1:0", "dicom://@pacs:104",
                                     "dicom://PACS@:104"])
def test_a_malformed_dimse_address_is_refused_before_any_association(address):
    res = run_cli("pacs", "echo", address)
    assert res.returncode == 2 and "not a DIMSE address; give dicom://CALLED_AE@host:port" in res.stderr, res.stderr


def test_segmentations_are_pushed_once(server, tmp_path):
    """Only the DICOM-SEG and SR of a scoring's folder go; a rerun sends none again; a refusal is said per file."""
    from medtl.data import dicom
    from medtl.data.readers import dicom_headers
    from medtl.dicom_seg import write_dicom_seg

    archive, url = server
    study_on(archive, tmp_path / "pacs", "dave", 1)
    source = next(iter(next(iter(archive.studies.values())).values()))[0].parent
    _, affine = dicom.load_series(dicom_headers(source))
    labels = np.zeros((8, 8, 3), np.uint8)
    labels[2:5, 2:6, 1] = 1
    out = tmp_path / "masks"
    write_dicom_seg(str(source), labels, affine, ["background", "lesion"], out / "dave_0.dcm", "medtl", "1")
    (out / "dave_0.nii.gz").write_bytes(b"a NIfTI mask is not sent")
    from medtl.dicom_sr import write_dicom_sr

    write_dicom_sr(str(source), {"prob_normal": 0.2, "prob_lesion": 0.8, "predicted": "lesion"}, ["normal", "lesion"],
                   out / "dave_0.sr.dcm", "medtl", "1")
    assert push(DicomWeb(url), out) == (2, 0, {})
    assert [ds.Modality for ds in archive.stored] == ["SEG", "SR"]
    assert push(DicomWeb(url), out) == (0, 2, {})
    archive.refuse_store = True
    (out / ".medtl-pushed").unlink()
    assert push(DicomWeb(url), out) == (0, 0, {"dave_0.dcm": "refused by the server (FailedSOPSequence)",
                                                "dave_0.sr.dcm": "refused by the server (FailedSOPSequence)"})
    with pytest.raises(MedtlError, match="holds no DICOM-SEG or SR"):
        push(DicomWeb(url), source)


def test_a_study_and_its_contours_pulled_together_build_a_segmentation_manifest(server, tmp_path):
    """--modality CT --modality RTSTRUCT brings a scan with its structure set and leaves the rest on the server;
    manifest build --structures then draws the structure on the scan pulled beside it."""
    from tests.data.test_structures import AXIAL, patient, square

    archive, url = server
    patient(tmp_path / "pacs", "erin", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3)]})
    files = sorted((tmp_path / "pacs" / "erin").iterdir())
    study = pydicom.uid.generate_uid()
    archive.studies[study] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesNumber = study, 2 if ds.Modality == "RTSTRUCT" else 1
        ds.save_as(path, enforce_file_format=True)
        archive.studies[study].setdefault(ds.SeriesInstanceUID, []).append(path)
    other = study_on(archive, tmp_path / "pacs", "frank", 1, seed=9)
    archive.studies[study].update(archive.studies.pop(other))  # a series of another modality in the same study
    dx = list(archive.studies[study])[-1]
    for path in archive.studies[study][dx]:
        ds = pydicom.dcmread(path)
        ds.Modality = "DX"
        ds.save_as(path, enforce_file_format=True)
    (tmp_path / "s.txt").write_text(study + "\n")
    done = run_cli("pacs", "pull", url, "--studies", tmp_path / "s.txt", "--out", tmp_path / "export", "--modality",
                   "ct", "--modality", "RTSTRUCT")
    assert done.returncode == 0, done.stderr
    assert "2 series retrieved now" in done.stdout
    built = run_cli("manifest", "build", tmp_path / "export", "--out", tmp_path / "m.csv", "--structures", "gtv")
    assert built.returncode == 0, built.stderr
    assert "1 cases" in built.stdout and "masks from structures 1" in built.stdout


@pytest.fixture
def dimse_node():
    """A DICOM node (pynetdicom) answering C-FIND and C-GET from an ``Archive`` and taking C-STOREs, on a port the OS
    chooses; it accepts only the calling AE title MEDTL_TEST."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import (Comprehensive3DSRStorage, SegmentationStorage,
                                      StudyRootQueryRetrieveInformationModelFind,
                                      StudyRootQueryRetrieveInformationModelGet,
                                      StudyRootQueryRetrieveInformationModelMove, Verification)

    from medtl.archives import retrievable

    archive = Archive()

    def on_find(event):
        query = event.identifier
        if query.QueryRetrieveLevel == "STUDY":
            keys = {k: str(query.get(k)) for k in ("AccessionNumber", "StudyDate", "ModalitiesInStudy") if k in query}
            for uid in matching_studies(archive, keys):
                answer = pydicom.Dataset()
                answer.QueryRetrieveLevel, answer.StudyInstanceUID = "STUDY", uid
                yield 0xFF00, answer
            return
        for uid, files in archive.studies.get(str(query.StudyInstanceUID), {}).items():
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel, answer.StudyInstanceUID, answer.SeriesInstanceUID = "SERIES", query.StudyInstanceUID, uid
            answer.Modality, answer.SeriesNumber = ds.Modality, ds.get("SeriesNumber", 1)
            yield 0xFF00, answer

    def on_get(event):
        query = event.identifier
        files = archive.studies.get(str(query.StudyInstanceUID), {}).get(str(query.SeriesInstanceUID), [])
        yield len(files)
        for path in files:
            yield 0xFF00, pydicom.dcmread(path)

    def on_move(event):
        query = event.identifier
        yield archive.nodes.get(event.move_destination.strip(), (None, None))
        files = archive.studies.get(str(query.StudyInstanceUID), {}).get(str(query.SeriesInstanceUID), [])
        yield len(files)
        for path in files:
            yield 0xFF00, pydicom.dcmread(path)

    def on_store(event):
        archive.stored.append(event.dataset)
        return 0xA700 if archive.refuse_store else 0x0000

    ae = AE(ae_title="ARCHIVE")
    ae.require_calling_aet = ["MEDTL_TEST"]
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    for context in retrievable():
        ae.add_supported_context(context, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
        ae.add_requested_context(context)  # a C-MOVE's sub-operations go out as C-STOREs
    ae.add_supported_context(SegmentationStorage, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Comprehensive3DSRStorage, ALL_TRANSFER_SYNTAXES)
    node = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get),
                                                                          (evt.EVT_C_MOVE, on_move),
                                                                          (evt.EVT_C_STORE, on_store)])
    yield archive, f"dicom://ARCHIVE@127.0.0.1:{node.server_address[1]}"
    node.shutdown()


def test_a_dimse_archive_gives_the_same_export_and_takes_the_segmentations(dimse_node, tmp_path):
    """C-FIND lists the series, C-GET brings each whole; an unknown calling AE title gets no association, said in one
    line; C-STORE takes the DICOM-SEG back, and a refusal is said per file."""
    from medtl.archives import Dimse
    from medtl.data import dicom
    from medtl.data.readers import dicom_headers
    from medtl.dicom_seg import write_dicom_seg

    archive, address = dimse_node
    assert "answers C-ECHO from calling AE title MEDTL_TEST" in run_cli("pacs", "echo", address, "--calling-ae",
                                                                        "MEDTL_TEST").stdout
    study = study_on(archive, tmp_path / "pacs", "gina", 2)
    (tmp_path / "s.txt").write_text(study + "\n")
    refused = run_cli("pacs", "pull", address, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e1")
    assert refused.returncode != 0 and "no association" in refused.stderr and "calling AE title MEDTL" in refused.stderr
    done = run_cli("pacs", "pull", address, "--studies", tmp_path / "s.txt", "--out", tmp_path / "export",
                   "--calling-ae", "MEDTL_TEST")
    assert done.returncode == 0, done.stderr
    assert "2 series retrieved now" in done.stdout
    for number in (1, 2):
        pulled = sorted((tmp_path / "export" / "study0001" / f"study0001_SE0{number}").iterdir())
        uid = next(u for u, files in archive.studies[study].items() if pydicom.dcmread(files[0]).SeriesNumber == number)
        assert sorted(pydicom.dcmread(p).SOPInstanceUID for p in pulled) == sorted(
            pydicom.dcmread(p).SOPInstanceUID for p in archive.studies[study][uid])
    source = next(iter(archive.studies[study].values()))[0].parent
    _, affine = dicom.load_series(dicom_headers(source))
    labels = np.zeros((8, 8, 3), np.uint8)
    labels[2:5, 2:6, 1] = 1
    write_dicom_seg(str(source), labels, affine, ["background", "lesion"], tmp_path / "masks" / "gina.dcm", "medtl", "1")
    from medtl.dicom_sr import write_dicom_sr

    write_dicom_sr(str(source), {"prob_normal": 0.9, "prob_lesion": 0.1, "predicted": "normal"}, ["normal", "lesion"],
                   tmp_path / "masks" / "gina.sr.dcm", "medtl", "1")
    node = Dimse(address, "MEDTL_TEST")
    assert push(node, tmp_path / "masks") == (2, 0, {})
    assert [ds.Modality for ds in archive.stored] == ["SEG", "SR"]
    archive.refuse_store = True
    (tmp_path / "masks" / ".medtl-pushed").unlink()
    assert push(node, tmp_path / "masks") == (0, 0, {"gina.dcm": "C-STORE status 0xA700",
                                                     "gina.sr.dcm": "C-STORE status 0xA700"})


def test_a_dimse_archive_that_allows_only_c_move_sends_to_medtl_listening(dimse_node, tmp_path):
    """--move-port: medtl listens as its calling AE title while the archive moves each series to it; an archive
    that does not know medtl's node says so, and the pull stops in one line that says what to ask for."""
    from tests.conftest import free_port

    archive, address = dimse_node
    study = study_on(archive, tmp_path / "pacs", "hana", 2)
    (tmp_path / "s.txt").write_text(study + "\n")
    port = free_port()
    unknown = run_cli("pacs", "pull", address, "--studies", tmp_path / "s.txt", "--out", tmp_path / "e1",
                      "--calling-ae", "MEDTL_TEST", "--move-port", str(port))
    assert unknown.returncode != 0 and "does not know medtl's node (C-MOVE status 0xA801)" in unknown.stderr
    archive.nodes["MEDTL_TEST"] = ("127.0.0.1", port)
    done = run_cli("pacs", "pull", address, "--studies", tmp_path / "s.txt", "--out", tmp_path / "export",
                   "--calling-ae", "MEDTL_TEST", "--move-port", str(port))
    assert done.returncode == 0, done.stderr
    assert "2 series retrieved now" in done.stdout
    pulled = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "export").rglob("*.dcm")}
    assert pulled == {pydicom.dcmread(p).SOPInstanceUID for files in archive.studies[study].values() for p in files}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_studies_are_found_by_their_accession_numbers(request, tmp_path, kind):
    """A report registry keys studies by accession number: --accessions finds each one's studies (QIDO-RS, or C-FIND at
    study level) and pulls them; one the archive does not know is named by its entry, never shown."""
    archive, address = request.getfixturevalue("server" if kind == "dicomweb" else "dimse_node")
    study = study_on(archive, tmp_path / "pacs", "ines", 2)
    (tmp_path / "acc.txt").write_text("INES-ACC\nNOBODY-ACC\n")
    done = run_cli("pacs", "pull", address, "--accessions", tmp_path / "acc.txt", "--out", tmp_path / "export",
                   "--calling-ae", "MEDTL_TEST")
    assert done.returncode == 1, done.stderr
    assert "2 series retrieved now" in done.stdout
    assert "entry 2 of" in done.stderr and "no study with that accession number in the archive" in done.stderr
    assert "NOBODY" not in done.stdout + done.stderr and "INES" not in done.stdout + done.stderr
    assert study in (tmp_path / "export" / "studies.csv").read_text()
    both = run_cli("pacs", "pull", address, "--out", tmp_path / "e2")
    assert both.returncode != 0 and "give --studies (StudyInstanceUIDs) or --accessions" in both.stderr


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_a_cohort_is_found_by_modality_and_dates_and_only_counted(request, tmp_path, kind):
    """pacs find: the studies of a modality between two dates go to a list pacs pull reads; the output counts them and
    shows no UID; a search with no key, or a date that is no date, is refused in one line."""
    archive, address = request.getfixturevalue("server" if kind == "dicomweb" else "dimse_node")
    early = study_on(archive, tmp_path / "pacs", "jan", 1, date="20230115")
    late = study_on(archive, tmp_path / "pacs", "kim", 1, seed=3, date="20240301")
    found = run_cli("pacs", "find", address, "--modality", "ct", "--since", "2023-01-01", "--until", "2023-12-31",
                    "--out", tmp_path / "cohort.txt", "--calling-ae", "MEDTL_TEST")
    assert found.returncode == 0, found.stderr
    assert (tmp_path / "cohort.txt").read_text().split() == [early]
    assert "1 studies" in found.stdout and early not in found.stdout + found.stderr
    mr = run_cli("pacs", "find", address, "--modality", "MR", "--out", tmp_path / "none.txt", "--calling-ae", "MEDTL_TEST")
    assert mr.returncode == 0 and "0 studies" in mr.stdout and (tmp_path / "none.txt").read_text() == ""
    since = run_cli("pacs", "find", address, "--since", "2024-01-01", "--out", tmp_path / "late.txt", "--calling-ae",
                    "MEDTL_TEST")
    assert since.returncode == 0 and (tmp_path / "late.txt").read_text().split() == [late]
    archive.ignore_offset = True  # DICOMweb: pages of one study each, or the same page again and again
    every = run_cli("pacs", "find", address, "--modality", "CT", "--out", tmp_path / "all.txt", "--calling-ae", "MEDTL_TEST")
    assert every.returncode == 0 and sorted((tmp_path / "all.txt").read_text().split()) == sorted([early, late])
    bare = run_cli("pacs", "find", address, "--out", tmp_path / "all.txt")
    assert bare.returncode != 0 and "give --modality, --since or --until" in bare.stderr
    bad = run_cli("pacs", "find", address, "--since", "2023-13-01", "--out", tmp_path / "x.txt")
    assert bad.returncode != 0 and "--since 2023-13-01: not a date; give it as YYYY-MM-DD" in bad.stderr
