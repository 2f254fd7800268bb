"""File imports over HTTP: the same importer as `wangge import`, one transaction per file."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import ActorDep, SessionmakerDep
from api.errors import UploadTooLarge
from api.schemas import ImportReportOut, error_responses
from gis.cases import Actor
from gis.db import audit_repo
from gis.errors import NotFound

router = APIRouter(prefix="/imports", tags=["imports"])

#: Largest upload accepted over HTTP; bigger files go through the command line.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# Room for the multipart envelope and the small form fields around the file.
_ENVELOPE_BYTES = 64 * 1024
_COPY_CHUNK = 1024 * 1024


def _describe_size(n_bytes: int) -> str:
    mib = 1024 * 1024
    return f"{n_bytes // mib} MB" if n_bytes >= mib else f"{n_bytes} bytes"


def too_large() -> UploadTooLarge:
    return UploadTooLarge(
        f"upload is larger than {_describe_size(MAX_UPLOAD_BYTES)}; "
        "split the file or import it with the command line (wangge import)",
        max_bytes=MAX_UPLOAD_BYTES,
    )


class UploadSizeLimit:
    """Refuse an import whose declared Content-Length is over the limit, before the
    multipart parser spools it to disk. Bodies without a length are counted by the
    handler instead."""

    def __init__(self, app: ASGIApp, path_prefix: str = "/api/v1/imports") -> None:
        self.app = app
        self.path_prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.path_prefix):
            length = dict(scope["headers"]).get(b"content-length")
            if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + _ENVELOPE_BYTES:
                response = JSONResponse(too_large().to_dict(), status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _safe_name(filename: str | None) -> str:
    """The upload's base name, kept (with its suffixes) so the importer can tell the
    format; anything outside a plain file name is replaced."""
    name = Path((filename or "").replace("\\", "/")).name
    name = re.sub(r"[^\w.\-]", "_", name).lstrip(".")
    return name or "upload"


def audited_sessions(
    sessions: sessionmaker[Session], actor: Actor, action: str, detail: dict
) -> sessionmaker[Session]:
    """Sessions that add an audit row just before they commit: the importer owns its
    transaction, and this puts the row in that same transaction (nothing is recorded
    for an import that is refused and rolled back)."""

    def make() -> Session:
        session = sessions()

        @event.listens_for(session, "before_commit")
        def _record(s: Session) -> None:
            audit_repo.record(s, actor, action, "layer", detail.get("layer"), detail)

        return session

    return make  # type: ignore[return-value]


def _save_upload(upload: UploadFile, folder: Path) -> Path:
    path = folder / _safe_name(upload.filename)
    written = 0
    with path.open("wb") as out:
        while chunk := upload.file.read(_COPY_CHUNK):
            written += len(chunk)
            if written > MAX_UPLOAD_BYTES:
                raise too_large()
            out.write(chunk)
    return path


@router.post(
    "/{layer}",
    summary="Import a file into a layer",
    status_code=201,
    response_model=ImportReportOut,
    responses=error_responses(400, 404, 409, 413),
)
def import_layer(
    layer: Annotated[
        str, PathParam(description="areas, buildings, stations or cases", examples=["stations"])
    ],
    sessions: SessionmakerDep,
    actor: ActorDep,
    file: Annotated[
        UploadFile,
        File(description="GeoJSON, GeoPackage, zipped Shapefile or CSV (lon/lat columns)"),
    ],
    crs_form: Annotated[
        str | None,
        Form(
            alias="crs",
            description="coordinate system of the file when it does not say: "
            "wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>",
        ),
    ] = None,
    generation_form: Annotated[
        str | None,
        Form(alias="generation", description="areas: name of the generation to stage"),
    ] = None,
    activate_form: Annotated[
        bool | None, Form(alias="activate", description="areas: switch the new generation on")
    ] = None,
    crs_query: Annotated[str | None, Query(alias="crs", include_in_schema=False)] = None,
    generation_query: Annotated[
        str | None, Query(alias="generation", include_in_schema=False)
    ] = None,
    activate_query: Annotated[bool | None, Query(alias="activate", include_in_schema=False)] = None,
) -> ImportReportOut:
    """Import one file into `areas`, `buildings`, `stations` or `cases` and report
    what was written.

    The file is read whole and written in one transaction: a file with one bad
    feature is refused (400) with `problems` naming each feature, field and
    problem, and nothing is stored. Areas are staged as a boundary generation
    and switched on with `activate` (the store's first areas are switched on
    unless `activate` is false). `crs`, `generation` and
    `activate` may be sent as form fields or in the query string. Uploads are
    limited to 50 MB (413).
    """
    # Imported here, not at module level: the importers are the heavy, optional
    # part, and the rest of the API must not depend on them to start.
    from data import importers

    if layer not in importers.LAYERS:
        raise NotFound(
            f"no layer {layer!r} to import into; use one of {', '.join(importers.LAYERS)}",
            layer=layer,
            layers=list(importers.LAYERS),
        )
    crs = crs_form if crs_form is not None else crs_query
    generation = generation_form if generation_form is not None else generation_query
    detail = {"layer": layer, "file": file.filename, "crs": crs, "generation": generation}
    with tempfile.TemporaryDirectory(prefix="wangge-upload-") as folder:
        path = _save_upload(file, Path(folder))
        report = importers.import_file(
            audited_sessions(sessions, actor, f"import.{layer}", detail),
            layer,
            path,
            crs=crs,
            generation=generation,
            activate=activate_form if activate_form is not None else activate_query,
            source_name=file.filename or path.name,
        )
    return ImportReportOut.model_validate(report.to_dict())
