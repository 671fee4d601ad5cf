"""The two ways a PACS is spoken to, behind one interface for ``medtl pacs``: DICOMweb (dicomweb-client: QIDO-RS lists
a study's series, WADO-RS retrieves one, STOW-RS stores) and DIMSE (pynetdicom: C-FIND, C-GET, C-STORE), the
protocol every hospital archive speaks. An address says which: ``https://host/dicom-web`` or
``dicom://CALLED_AE@host:port``.

A failure of the archive as a whole (unreachable, access refused, no association) is an ``ArchiveUnavailable``, which
stops a pull or push in one line; any other failure belongs to one study or file, and the work goes on. No message
quotes the archive's own text, which may carry UIDs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from medtl.errors import MedtlError
from medtl.host import untrusted_certificate

logging.getLogger("dicomweb_client").setLevel(logging.ERROR)  # its debug lines carry URLs (UIDs) and headers (tokens)
logging.getLogger("pynetdicom").setLevel(logging.ERROR)  # its info lines print each identifier it sends

MISSING = "medtl pacs needs its extra: pip install 'medtl[pacs]'"


class ArchiveUnavailable(MedtlError):
    """The archive cannot be used at all: nothing more can be asked of it in this run."""


def open_archive(address: str, token_env: str | None = None, calling_ae: str = "MEDTL",
                 move_port: int | None = None) -> DicomWeb | Dimse:
    """The archive at ``address``; a DICOMweb token is read from ``$token_env``; a DIMSE archive moves series to
    ``move_port`` where one is given (C-MOVE), else gives them over the association (C-GET)."""
    if address.startswith("dicom://"):
        return Dimse(address, calling_ae, move_port)
    if address.startswith(("http://", "https://")):
        return DicomWeb(address, token_env)
    raise MedtlError(f"{address}: not an archive address; give a DICOMweb root (https://host/dicom-web) or a DIMSE "
                     "node (dicom://CALLED_AE@host:port)")


class DicomWeb:
    """A DICOMweb server, with the bearer token held in ``$token_env`` when one is named."""

    def __init__(self, url: str, token_env: str | None = None) -> None:
        try:
            from dicomweb_client import DICOMwebClient
        except ImportError:
            raise MedtlError(MISSING) from None
        from medtl.config import names_a_server, redact_uri

        headers = {}
        if token_env:
            token = os.environ.get(token_env, "").strip()
            if not token:
                raise MedtlError(f"--token-env {token_env}: that environment variable is empty or unset; export the "
                                 "token in it")
            headers["Authorization"] = f"Bearer {token}"
        self.name = redact_uri(url)
        try:
            if not names_a_server(url):
                raise ValueError(url)
            self.client = DICOMwebClient(url.rstrip("/"), headers=headers, timeout=60)
        except ValueError:  # no host, a port that is no number, or dicomweb_client's own "Malformed URL"
            raise MedtlError(f"{self.name}: not a DICOMweb address; give the server's root, e.g. "
                             "https://pacs.example.org/dicom-web") from None
        self.client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)

    def _call(self, ask: Callable[[], Any]) -> Any:
        import requests

        try:
            return ask()
        except requests.exceptions.SSLError as exc:
            raise ArchiveUnavailable(f"{self.name}: {untrusted_certificate(exc)}; give the certificate of the CA that "
                                     "signed it in REQUESTS_CA_BUNDLE (a .pem file), then rerun") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ArchiveUnavailable(f"{self.name}: cannot reach the DICOMweb server ({type(exc).__name__}); check the "
                                     "address, the network and any proxy, then rerun") from None
        except requests.HTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in (401, 403):
                raise ArchiveUnavailable(f"{self.name}: the server refused access (HTTP {status}); give a token with "
                                         "--token-env, or ask for access to these studies") from None
            raise RuntimeError("not found on the server (HTTP 404)" if status == 404 else f"HTTP {status}") from None

    def echo(self) -> str:
        """How the server answered a search for one study (QIDO-RS), the way to ask a DICOMweb server if it is there."""
        try:
            self._call(lambda: self.client.search_for_studies(limit=1))
        except RuntimeError as exc:
            raise ArchiveUnavailable(f"{self.name}: a study search (QIDO-RS) got {exc}; check that this is the "
                                     "server's DICOMweb root") from None
        return "answers a study search (QIDO-RS)"

    def find(self, filters: dict[str, str]) -> list[str]:
        """The StudyInstanceUIDs of every study matching ``filters`` (DICOM keywords: StudyDate as a range,
        ModalitiesInStudy), page after page until one brings nothing new: a server may cap a page below the limit
        asked for, and one that ignores the offset would otherwise be asked forever."""
        uids: list[str] = []
        while True:
            page = self._call(lambda: self.client.search_for_studies(
                search_filters=filters, fields=["StudyInstanceUID"], offset=len(uids), limit=1000))
            new = [u for u in dict.fromkeys(_json(s, "0020000D") for s in page) if u and u not in set(uids)]
            if not new:
                return uids
            uids += new

    def studies(self, accession: str) -> list[str]:
        """The StudyInstanceUIDs filed under an accession number."""
        return self.find({"AccessionNumber": accession})

    def series(self, study: str) -> list[dict[str, str]]:
        """The study's series: uid, modality and number."""
        found = self._call(lambda: self.client.search_for_series(study_instance_uid=study,
                                                                 fields=["SeriesNumber", "Modality"]))
        return [{"uid": _json(s, "0020000E"), "modality": _json(s, "00080060"), "number": _json(s, "00200011")}
                for s in found]

    def retrieve(self, study: str, series: str, folder: Path) -> None:
        """Every instance of the series, written into ``folder``."""
        import pydicom

        def write() -> None:
            for number, ds in enumerate(self.client.iter_series(study, series), start=1):
                pydicom.dcmwrite(folder / f"{number:05d}.dcm", ds, enforce_file_format=True)

        self._call(write)

    def store(self, ds: Any) -> str | None:
        """None once the server holds ``ds``, else why it did not take it."""
        answer = self._call(lambda: self.client.store_instances([ds]))
        return "refused by the server (FailedSOPSequence)" if answer is not None and answer.get("FailedSOPSequence") else None


def _json(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class Dimse:
    """A DICOM node (``dicom://CALLED_AE@host:port``), asked as ``calling_ae``: C-FIND lists series, C-STORE stores.
    A series comes by C-GET over the same association, so the archive need not know medtl's address; or, with
    ``move_port``, by C-MOVE to medtl listening there as ``calling_ae``, for the many archives that allow only C-MOVE
    to the nodes their administrator has entered."""

    def __init__(self, address: str, calling_ae: str = "MEDTL", move_port: int | None = None) -> None:
        match = re.fullmatch(r"dicom://([^@/]{1,16})@([^:/]+):(\d{1,5})/?", address)
        if not match or not 0 < int(match.group(3)) < 65536:
            raise MedtlError(f"{address}: not a DIMSE address; give dicom://CALLED_AE@host:port (an AE title of up to "
                             "16 characters, a port from 1 to 65535)")
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            raise MedtlError(MISSING) from None
        self.called, self.host, self.port = match.group(1), match.group(2), int(match.group(3))
        self.calling, self.name, self.move_port = calling_ae, address, move_port

    def _associate(self, contexts: list[str], roles: list[Any] | None = None, handlers: list[Any] | None = None) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        storage = set(retrievable())
        for context in contexts:  # storage classes, which instances come back in, in any syntax medtl decodes
            ae.add_requested_context(context, syntaxes() if context in storage else None)
        assoc = ae.associate(self.host, self.port, ae_title=self.called, ext_neg=roles, evt_handlers=handlers)
        if not assoc.is_established:
            raise ArchiveUnavailable(f"{self.name}: no association (refused, aborted or no answer); check the AE title, "
                                     f"host and port, and that the archive accepts calling AE title {self.calling}")
        return assoc

    def _responses(self, assoc: Any, answers: Any, service: str) -> list[Any]:
        """The identifiers of pending responses; a failure status, or no answer, is the study's error."""
        found = []
        try:
            for status, identifier in answers:
                if not status:
                    raise RuntimeError(f"{service}: no answer (the association ended)")
                if status.Status in (0xFF00, 0xFF01):
                    found.append(identifier)
                elif status.Status == 0xA801:  # move destination unknown: true of every study
                    raise ArchiveUnavailable(f"{self.name}: the archive does not know medtl's node (C-MOVE status "
                                             f"0xA801); ask its administrator to enter AE title {self.calling} with "
                                             f"this host and port {self.move_port}")
                elif status.Status != 0x0000:
                    raise RuntimeError(f"{service} status 0x{status.Status:04X}")
        finally:
            assoc.release()
        return found

    def echo(self) -> str:
        """C-ECHO: the association, and the node's answer to it."""
        from pynetdicom.sop_class import Verification

        assoc = self._associate([Verification])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            raise ArchiveUnavailable(f"{self.name}: the association opened, but C-ECHO got "
                                     f"{'no answer' if not status else f'status 0x{status.Status:04X}'}")
        return f"answers C-ECHO from calling AE title {self.calling}"

    def studies(self, accession: str) -> list[str]:
        return self.find({"AccessionNumber": accession})

    def find(self, filters: dict[str, str]) -> list[str]:
        """C-FIND at study level: the StudyInstanceUIDs of every study matching ``filters`` (DICOM keywords)."""
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
        for keyword, value in filters.items():
            setattr(query, keyword, value)
        assoc = self._associate([Find])
        found = self._responses(assoc, assoc.send_c_find(query, Find), "C-FIND")
        return [str(s.StudyInstanceUID) for s in found if s is not None and s.get("StudyInstanceUID")]

    def series(self, study: str) -> list[dict[str, str]]:
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "SERIES", study
        query.SeriesInstanceUID = query.Modality = query.SeriesNumber = ""
        assoc = self._associate([Find])
        found = self._responses(assoc, assoc.send_c_find(query, Find), "C-FIND")
        return [{"uid": str(s.get("SeriesInstanceUID", "")), "modality": str(s.get("Modality", "")),
                 "number": str(s.get("SeriesNumber", "") or "")} for s in found if s is not None]

    def retrieve(self, study: str, series: str, folder: Path) -> None:
        from pydicom.dataset import Dataset
        from pynetdicom import build_role, evt

        written: list[Path] = []

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            written.append(folder / f"{len(written) + 1:05d}.dcm")
            ds.save_as(written[-1], enforce_file_format=True)
            return 0x0000

        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.SeriesInstanceUID = "SERIES", study, series
        storage = retrievable()
        if self.move_port is None:
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

            assoc = self._associate([Get, *storage], [build_role(c, scp_role=True) for c in storage],
                                    [(evt.EVT_C_STORE, on_store)])
            self._responses(assoc, assoc.send_c_get(query, Get), "C-GET")
        else:
            self._move(query, storage, on_store)
        if not written:
            raise RuntimeError("the archive sent no instance")

    def _move(self, query: Any, storage: list[str], on_store: Callable[[Any], int]) -> None:
        """C-MOVE to medtl itself, listening on ``move_port`` for the archive's C-STOREs while the move runs."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

        listener = AE(ae_title=self.calling)
        for context in storage:
            listener.add_supported_context(context, syntaxes())
        try:
            server = listener.start_server(("", self.move_port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            raise ArchiveUnavailable(f"--move-port {self.move_port}: medtl cannot listen there ({exc.strerror}); give "
                                     "the port the archive sends to, free on this machine") from None
        try:
            assoc = self._associate([Move])
            self._responses(assoc, assoc.send_c_move(query, self.calling, Move), "C-MOVE")
        finally:
            server.shutdown()

    def store(self, ds: Any) -> str | None:
        assoc = self._associate([ds.SOPClassUID])
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        if not status:
            return "no answer to C-STORE (the association ended)"
        return None if status.Status in (0x0000, 0xB000, 0xB006, 0xB007) else f"C-STORE status 0x{status.Status:04X}"


def syntaxes() -> list[str]:
    """The transfer syntaxes medtl takes an instance in: uncompressed first, then the compressions its readers decode
    (GDCM and pydicom), so an archive that stores JPEG Lossless need not transcode for it."""
    from pydicom import uid

    return [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.JPEGLosslessSV1, uid.JPEGLossless,
            uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEGBaseline8Bit, uid.RLELossless]


def retrievable() -> list[str]:
    """The storage SOP classes a C-GET takes back: the scans medtl reads and the delineations it reads or writes
    (a handful, far below the 128 presentation contexts an association may hold)."""
    from pynetdicom import sop_class as sop

    return [sop.CTImageStorage, sop.EnhancedCTImageStorage, sop.MRImageStorage, sop.EnhancedMRImageStorage,
            sop.ComputedRadiographyImageStorage, sop.DigitalXRayImageStorageForPresentation,
            sop.DigitalXRayImageStorageForProcessing, sop.DigitalMammographyXRayImageStorageForPresentation,
            sop.UltrasoundImageStorage, sop.UltrasoundMultiFrameImageStorage, sop.SecondaryCaptureImageStorage,
            sop.PositronEmissionTomographyImageStorage, sop.NuclearMedicineImageStorage,
            sop.XRayAngiographicImageStorage, sop.RTStructureSetStorage, sop.SegmentationStorage]
