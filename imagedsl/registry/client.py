"""The distribution operations: resolve, pull, push, mount, tags; every byte verified.

:class:`RegistryClient` speaks the distribution spec through a
:class:`~imagedsl.registry.transport.Transport` (connections, retries, TLS, probing, and auth
through :mod:`imagedsl.registry.auth`):

- **Pull**: manifests and indexes (an index's platform chosen with
  :class:`~imagedsl.oci.platform.Platform`), blobs into the store. A blob is hashed while it
  streams into a partial file beside its final name (:meth:`~imagedsl.oci.blobs.BlobStore.
  resumable`) and renamed only once its sha256 and size match; an interrupted download keeps
  its partial file and the next attempt (or the next process) resumes it with ``Range``.
- **Push**: blobs the registry already has are skipped after a ``HEAD``; blobs from another
  repository of the same registry are mounted; small blobs go in one ``PUT``, large ones in
  ``PATCH`` chunks whose upload is resumed from what the registry reports after a failure.
  Then child manifests, then the top manifest under every tag.

Blob transfers run in a small thread pool; progress goes to a
:class:`~imagedsl.registry.transport.TransferProgress`.
Credentials never appear in a log line, an error, a ``repr`` or a file.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.client
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from imagedsl.oci.blobs import BlobSource, BlobStore, PartialBlob
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.digest import is_sha256
from imagedsl.oci.manifest import MAX_INDEX_DEPTH, Manifest
from imagedsl.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from imagedsl.oci.platform import Platform
from imagedsl.oci.reference import ImageReference, parse_reference
from imagedsl.registry.errors import (
    BlobSourceError,
    NotFoundError,
    PlatformNotFoundError,
    PushSourceError,
    RegistryDigestError,
    RegistryError,
)
from imagedsl.registry.transport import (
    IO_CHUNK,
    MAX_DOCUMENT,
    TRANSIENT_ERRORS,
    FilePart,
    NoProgress,
    Reply,
    Repository,
    RetryPolicy,
    TransferProgress,
    Transient,
    Transport,
    Url,
    error_codes,
)

if TYPE_CHECKING:
    import ssl
    from pathlib import Path
    from types import TracebackType

    from imagedsl.registry.auth import Credentials, DockerConfig
    from imagedsl.store import Store

_log = logging.getLogger(__name__)

_ACCEPT: Final = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class PulledImage:
    """What :meth:`RegistryClient.pull` put in the store, all of it verified."""

    reference: ImageReference
    #: The index the platform was chosen from, when the reference named one.
    index: Descriptor | None
    manifest: Manifest
    config: Descriptor
    layers: tuple[Descriptor, ...]
    bytes_downloaded: int = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class ResolvedImage:
    """What :meth:`RegistryClient.resolve_image` found: the manifest (or index) the reference
    names now, and the config of the image in it for the platform asked for."""

    manifest: Descriptor
    config: Descriptor


@attrs.frozen(kw_only=True)
class PushResult:
    """What :meth:`RegistryClient.push` did: the pushed manifest and each blob's outcome."""

    reference: ImageReference
    digest: str
    media_type: str
    size: int
    tags: tuple[str, ...]
    #: Blob digest -> ``pushed``, ``exists`` or ``mounted``.
    blobs: Mapping[str, str] = attrs.field(hash=False)
    bytes_uploaded: int = attrs.field(eq=False)


# -- the client ----------------------------------------------------------------------------------


class RegistryClient:
    """Talks to registries. Thread safe; one per process is plenty (it pools connections).

    ``credentials``, ``docker_config``, ``insecure``, ``ssl_context``, ``timeout``,
    ``deadline`` and ``retry`` configure its :class:`~imagedsl.registry.transport.Transport`
    (credentials by host, else Docker's own configuration; plain HTTP and unverified TLS only
    when ``insecure``, or plain HTTP for loopback registries). ``timeout`` is the seconds one
    request has to be answered (default ``$IMAGEDSL_REGISTRY_TIMEOUT``, else 60) and
    ``deadline`` the seconds one operation has with all its retries (default
    ``$IMAGEDSL_REGISTRY_DEADLINE``, else 600). ``workers`` blobs move at once; blobs up to
    ``chunk_size`` are uploaded in one request.
    """

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        docker_config: DockerConfig | None = None,
        insecure: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        workers: int = 4,
        chunk_size: int = 32 << 20,
        progress: TransferProgress | None = None,
    ) -> None:
        self._transport = Transport(
            credentials=credentials,
            docker_config=docker_config,
            insecure=insecure,
            ssl_context=ssl_context,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            progress=progress or NoProgress(),
        )
        self.workers = max(1, workers)
        #: Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
        self.chunk_size = max(1 << 16, chunk_size)

    @property
    def transport(self) -> Transport:
        """How requests reach registries (shared by every operation of this client)."""
        return self._transport

    @property
    def progress(self) -> TransferProgress:
        """Where blob transfers report progress."""
        return self._transport.progress

    @progress.setter
    def progress(self, progress: TransferProgress) -> None:
        self._transport.progress = progress

    def __repr__(self) -> str:
        return f"RegistryClient(insecure={self._transport.insecure}, workers={self.workers})"

    def close(self) -> None:
        """Close pooled connections."""
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- manifests ---------------------------------------------------------------------------

    def resolve(self, reference: str | ImageReference) -> Descriptor:
        """The manifest a reference names now (one ``HEAD``): its digest, type and size."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        url = self._transport.url(repo, f"/v2/{repo.path}/manifests/{ref.digest or ref.tag}")
        action = f"resolving {ref}"
        reply = self._transport.call(
            "HEAD", url, repo, action, scopes=[repo.scope("pull")], headers={"Accept": _ACCEPT}
        )
        if reply.status == 404:
            raise NotFoundError(repo.host, action, status=404, codes=("MANIFEST_UNKNOWN",))
        self._transport.expect(reply, (200,), repo, action)
        digest = reply.headers.get("docker-content-digest")
        media_type = reply.headers.get("content-type", "").split(";")[0].strip()
        length = reply.headers.get("content-length", "")
        if is_sha256(digest) and media_type and length.isdigit():
            assert digest is not None
            if ref.digest is not None and digest != ref.digest:
                raise RegistryDigestError(repo.host, f"manifest {ref}", ref.digest, digest)
            return Descriptor(media_type=media_type, digest=digest, size=int(length))
        return self.get_manifest(ref).descriptor  # a registry that does not say: read it

    def resolve_image(
        self, reference: str | ImageReference, platform: Platform | None = None
    ) -> ResolvedImage:
        """The manifest a reference names now and its image's config for ``platform`` (default:
        this machine's): the config digest is the image's content identity (what a plan keys
        a base by), the manifest digest pulls exactly that image later."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        top = self.get_manifest(ref)
        manifest = top
        if top.is_index:
            wanted = platform or Platform.host()
            chosen = _choose_platform(top, wanted)
            if chosen is None:
                available = [str(d.platform) for d in top.manifests if d.platform is not None]
                raise PlatformNotFoundError(repo.host, str(ref), str(wanted), available)
            manifest = self._fetch_manifest(repo, chosen.digest, f"{repo}@{chosen.digest}")
        if manifest.config is None:
            raise RegistryError(repo.host, f"resolving {ref}", detail="a manifest without config")
        return ResolvedImage(manifest=top.descriptor, config=manifest.config)

    def get_manifest(
        self, reference: str | ImageReference, *, store: Store | None = None
    ) -> Manifest:
        """Fetch and verify a manifest or index (kept in ``store`` when given)."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        manifest = self._fetch_manifest(repo, ref.digest or ref.tag or "latest", str(ref))
        if ref.digest is not None and manifest.digest != ref.digest:
            raise RegistryDigestError(repo.host, f"manifest {ref}", ref.digest, manifest.digest)
        if store is not None:
            BlobStore(store).put(manifest.raw)
        return manifest

    def _fetch_manifest(self, repo: Repository, reference: str, label: str) -> Manifest:
        url = self._transport.url(repo, f"/v2/{repo.path}/manifests/{reference}")
        action = f"fetching manifest {label}"
        reply = self._transport.call(
            "GET", url, repo, action, scopes=[repo.scope("pull")], headers={"Accept": _ACCEPT}
        )
        if reply.status == 404:
            raise NotFoundError(repo.host, action, status=404, codes=("MANIFEST_UNKNOWN",))
        self._transport.expect(reply, (200,), repo, action)
        try:
            manifest = Manifest.parse(
                reply.body, media_type=reply.headers.get("content-type"), where=label
            )
        except ValueError as error:
            raise RegistryError(repo.host, action, detail=str(error)) from None
        announced = reply.headers.get("docker-content-digest")
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryDigestError(repo.host, f"manifest {label}", reference, manifest.digest)
        if is_sha256(announced) and announced != manifest.digest:
            assert announced is not None
            raise RegistryDigestError(repo.host, f"manifest {label}", announced, manifest.digest)
        return manifest

    def put_manifest(
        self, reference: str | ImageReference, raw: bytes, media_type: str | None = None
    ) -> str:
        """Upload manifest bytes under the reference's tag (or digest); return the digest."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        manifest = Manifest.parse(raw, media_type=media_type, where=str(ref))
        if ref.digest is not None and ref.digest != manifest.digest:
            raise RegistryDigestError(repo.host, f"manifest for {ref}", ref.digest, manifest.digest)
        self._put_manifest(repo, manifest, ref.digest or ref.tag or manifest.digest)
        return manifest.digest

    def _put_manifest(self, repo: Repository, manifest: Manifest, reference: str) -> None:
        url = self._transport.url(repo, f"/v2/{repo.path}/manifests/{reference}")
        action = f"pushing manifest {repo}:{reference}"
        reply = self._transport.call(
            "PUT",
            url,
            repo,
            action,
            scopes=[repo.scope("pull", "push")],
            headers={"Content-Type": manifest.media_type},
            body=manifest.raw,
        )
        self._transport.expect(reply, (200, 201), repo, action)
        stored = reply.headers.get("docker-content-digest")
        if stored and stored != manifest.digest:
            raise RegistryDigestError(
                repo.host, f"manifest {repo}:{reference}", manifest.digest, stored
            )

    def manifest_exists(self, repository: Repository, digest: str) -> bool:
        """Whether the repository has the manifest ``digest`` (one ``HEAD``)."""
        action = f"checking manifest {repository}@{digest}"
        return self._exists(repository, "manifests", digest, action, headers={"Accept": _ACCEPT})

    # -- pull ----------------------------------------------------------------------------------

    def pull(
        self,
        reference: str | ImageReference,
        store: Store,
        *,
        platform: Platform | None = None,
        check: Callable[[Manifest], None] | None = None,
    ) -> PulledImage:
        """Bring one image into ``store``: its manifest, config and layers, verified.

        When the reference names an index, the manifest for ``platform`` (default: this
        machine's) is chosen. Blobs already in the store are not fetched again. ``check`` sees
        the image manifest before any blob is fetched, and raises to refuse the image (a
        layer type the caller cannot read is refused without downloading a layer).
        """
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        top = self.get_manifest(ref, store=store)
        index: Descriptor | None = None
        manifest = top
        if top.is_index:
            wanted = platform or Platform.host()
            chosen = _choose_platform(top, wanted)
            if chosen is None:
                available = [str(d.platform) for d in top.manifests if d.platform is not None]
                raise PlatformNotFoundError(repo.host, str(ref), str(wanted), available)
            index = top.descriptor
            manifest = self._fetch_manifest(repo, chosen.digest, f"{repo}@{chosen.digest}")
            if manifest.is_index:
                raise RegistryError(repo.host, f"pulling {ref}", detail="an index inside an index")
            BlobStore(store).put(manifest.raw)
        if manifest.config is None:
            raise RegistryError(repo.host, f"pulling {ref}", detail="a manifest without config")
        if check is not None:
            check(manifest)
        downloaded = self.fetch_blobs(repo, manifest.blobs, store)
        pinned = ImageReference(transport="registry", name=ref.name, tag=ref.tag, digest=top.digest)
        return PulledImage(
            reference=pinned,
            index=index,
            manifest=manifest,
            config=manifest.config,
            layers=manifest.layers,
            bytes_downloaded=downloaded,
        )

    def pull_all(self, reference: str | ImageReference, store: Store) -> Manifest:
        """Bring a manifest or index into ``store`` with everything it reaches (all platforms).

        Each manifest is fetched once however many indexes list it, and no deeper than
        :data:`~imagedsl.oci.manifest.MAX_INDEX_DEPTH` manifests from the top.
        """
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        top = self.get_manifest(ref, store=store)

        def fetch(child: Descriptor) -> Manifest:
            fetched = self._fetch_manifest(repo, child.digest, f"{repo}@{child.digest}")
            BlobStore(store).put(fetched.raw)
            return fetched

        def too_deep(child: Descriptor) -> Exception:
            detail = f"indexes nest more than {MAX_INDEX_DEPTH} manifests deep (at {child.digest})"
            return RegistryError(repo.host, f"pulling {ref}", detail=detail)

        _children, blobs = _walk(top, fetch, too_deep)
        self.fetch_blobs(repo, list(blobs.values()), store)
        return top

    def fetch_blobs(self, repository: Repository, blobs: Iterable[Descriptor], store: Store) -> int:
        """Fetch blobs into ``store`` in parallel; return the bytes downloaded."""
        unique = {blob.digest: blob for blob in blobs}
        sizes = self._parallel(
            lambda blob: self.fetch_blob(repository, blob, store), list(unique.values())
        )
        return sum(sizes)

    def fetch_blob(self, repository: Repository, blob: Descriptor, store: Store) -> int:
        """Fetch one blob into ``store``, resuming a partial download; return bytes fetched."""
        blobs = BlobStore(store)
        with blobs.resumable(blob.digest, blob.size) as partial:
            if partial is None:
                self.progress.transfer_finished(blob.digest, "present")
                return 0
            self.progress.transfer_started(blob.digest, blob.size, "pull")
            download = _Download(partial)
            action = f"fetching blob {repository}@{blob.digest}"
            attempt = functools.partial(self._fetch_attempt, repository, download, action)
            resumed = partial.have > 0
            self._transport.retrying(repository.host, action, attempt)
            if resumed and (partial.have != blob.size or partial.actual != blob.digest):
                # What an earlier download left (from another registry, perhaps) was not this
                # blob's start: fetch it whole once before blaming this registry.
                partial.restart()
                self._transport.retrying(repository.host, action, attempt)
            actual = partial.actual
            if partial.have != blob.size or actual != blob.digest:
                partial.discard()
                got = actual if actual != blob.digest else f"{partial.have} bytes"
                raise RegistryDigestError(
                    repository.host, f"blob {repository}@{blob.digest}", blob.digest, got
                )
            blobs.commit(partial.handle, blob.digest)
        self.progress.transfer_finished(blob.digest, "pulled")
        return download.fetched

    def _fetch_attempt(self, repo: Repository, download: _Download, action: str) -> None:
        partial = download.partial
        partial.rewind()
        if partial.have >= partial.size:
            return
        headers = {"Range": f"bytes={partial.have}-"} if partial.have else {}
        url = self._transport.url(repo, f"/v2/{repo.path}/blobs/{partial.digest}")
        reply = self._transport.call_once(
            "GET", url, repo, action, scopes=[repo.scope("pull")], headers=headers, stream=True
        )
        try:
            if reply.status == 404:
                raise NotFoundError(repo.host, action, status=404, codes=("BLOB_UNKNOWN",))
            if reply.status == 416 or (reply.status == 200 and partial.have):
                partial.restart()  # the registry will not resume: take it from the start
                if reply.status == 416:
                    raise Transient("the registry refused the range; starting over")
            elif reply.status == 206:
                start = reply.headers.get("content-range", "").removeprefix("bytes ")
                if not start.startswith(f"{partial.have}-"):
                    partial.restart()
                    raise Transient("the registry answered another range; starting over")
            elif reply.status != 200:
                reply.body = reply.response.read(MAX_DOCUMENT) if reply.response else b""
                self._transport.expect(reply, (200,), repo, action)
            assert reply.response is not None
            download.stream_from(reply.response, self.progress)
            reply.close(reusable=True)
        finally:
            reply.close()

    # -- push ------------------------------------------------------------------------------------

    def push(
        self,
        source: BlobSource,
        manifest: str | Descriptor,
        reference: str | ImageReference,
        *,
        tags: Sequence[str] = (),
        mount_from: Sequence[str] = (),
    ) -> PushResult:
        """Push a manifest (or index) and everything it reaches from ``source``.

        ``manifest`` is the digest (or descriptor) of the manifest bytes in ``source``. The
        top manifest is put under ``tags`` (default: the reference's tag, else by digest).
        ``mount_from`` names other repositories of the same registry to mount blobs from.
        """
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        digest = manifest.digest if isinstance(manifest, Descriptor) else manifest
        hint = manifest.media_type if isinstance(manifest, Descriptor) else None
        top = _read_manifest(source, digest, hint)
        if ref.digest is not None and ref.digest != top.digest:
            raise RegistryDigestError(repo.host, f"manifest for {ref}", ref.digest, top.digest)

        def too_deep(child: Descriptor) -> Exception:
            where = str(source.blob_path(top.digest))
            problem = (
                f"its indexes nest more than {MAX_INDEX_DEPTH} manifests deep (at {child.digest})"
            )
            return PushSourceError(where, problem)

        children, blobs = _walk(
            top, lambda child: _read_manifest(source, child.digest, child.media_type), too_deep
        )
        outcomes = self._parallel(
            lambda blob: self.push_blob(repo, blob, source, mount_from=mount_from),
            list(blobs.values()),
        )
        pushed_bytes = sum(size for _outcome, size in outcomes)
        for child in children:
            if not self.manifest_exists(repo, child.digest):
                self._put_manifest(repo, child, child.digest)
        names = tuple(tags) or ((ref.tag,) if ref.tag else ())
        for name in names or (top.digest,):
            self._put_manifest(repo, top, name)
        pinned = ImageReference(
            transport="registry", name=ref.name, tag=names[0] if names else None, digest=top.digest
        )
        return PushResult(
            reference=pinned,
            digest=top.digest,
            media_type=top.media_type,
            size=len(top.raw),
            tags=names,
            blobs={d: outcome for d, (outcome, _size) in zip(blobs, outcomes, strict=True)},
            bytes_uploaded=pushed_bytes,
        )

    def blob_exists(self, repository: Repository, digest: str) -> bool:
        """Whether the repository has blob ``digest`` (one ``HEAD``)."""
        return self._exists(repository, "blobs", digest, f"checking blob {repository}@{digest}")

    def _exists(
        self,
        repository: Repository,
        kind: str,
        digest: str,
        action: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """One ``HEAD`` on ``/v2/<repo>/<kind>/<digest>``: 200 is yes, 404 is no."""
        url = self._transport.url(repository, f"/v2/{repository.path}/{kind}/{digest}")
        scopes = [repository.scope("pull")]
        reply = self._transport.call(
            "HEAD", url, repository, action, scopes=scopes, headers=headers
        )
        if reply.status == 404:
            return False
        self._transport.expect(reply, (200,), repository, action)
        return True

    def push_blob(
        self,
        repository: Repository,
        blob: Descriptor,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
    ) -> tuple[str, int]:
        """Make sure the repository has ``blob``; return (outcome, bytes uploaded).

        The outcome is ``exists`` (nothing sent), ``mounted`` (from a ``mount_from``
        repository) or ``pushed``. A failed chunked upload continues from the offset the
        registry reports; when the registry lost the upload it starts over.
        """
        path = source.blob_path(blob.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobSourceError(blob.digest, str(path), "it does not exist") from None
        if size != blob.size:
            raise BlobSourceError(blob.digest, str(path), f"{size} bytes, not {blob.size}")
        scopes = [repository.scope("pull", "push")]
        scopes += [Repository(repository.host, name).scope("pull") for name in mount_from]
        upload = _Upload(blob=blob, path=path, scopes=tuple(scopes), mount_from=tuple(mount_from))
        action = f"pushing blob {repository}@{blob.digest}"
        self.progress.transfer_started(blob.digest, blob.size, "push")
        outcome = self._transport.retrying(
            repository.host, action, lambda: self._upload_attempt(repository, upload, action)
        )
        self.progress.transfer_finished(blob.digest, outcome)
        return outcome, upload.sent

    def _upload_attempt(self, repo: Repository, upload: _Upload, action: str) -> str:
        blob = upload.blob
        if upload.location is not None and not self._resume_upload(repo, upload, action):
            upload.location = None
        if upload.location is None:
            if self._blob_exists_once(repo, blob.digest, upload.scopes, action):
                return "exists"
            if self._start_upload(repo, upload, action):
                return "mounted"
        assert upload.location is not None
        if blob.size <= self.chunk_size and upload.offset == 0:
            body = FilePart(upload.path, 0, blob.size, blob.digest)
            target = upload.location.with_query(digest=blob.digest)
            # A failed monolithic PUT may have left part of the body in the upload: it is not
            # resumed, the next attempt starts over.
            upload.location = None
            reply = self._transport.call_once(
                "PUT", target, repo, action, scopes=upload.scopes, body=body,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            self._expect_upload(reply, (201, 204), repo, upload, action)
            upload.sent += blob.size
        else:
            while upload.offset < blob.size:
                end = min(upload.offset + self.chunk_size, blob.size)
                part = FilePart(upload.path, upload.offset, end - upload.offset, blob.digest)
                reply = self._transport.call_once(
                    "PATCH", upload.location, repo, action, scopes=upload.scopes, body=part,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{upload.offset}-{end - 1}",
                    },
                )  # fmt: skip
                self._expect_upload(reply, (202,), repo, upload, action)
                upload.location = upload.location.join(reply.headers.get("location", ""))
                upload.sent += end - upload.offset
                upload.offset = end
            target = upload.location.with_query(digest=blob.digest)
            reply = self._transport.call_once("PUT", target, repo, action, scopes=upload.scopes)
            self._expect_upload(reply, (201, 204), repo, upload, action)
            upload.location = None
        stored = reply.headers.get("docker-content-digest")
        if stored and stored != blob.digest:
            raise RegistryDigestError(repo.host, f"blob {repo}@{blob.digest}", blob.digest, stored)
        return "pushed"

    def _blob_exists_once(
        self, repo: Repository, digest: str, scopes: Sequence[str], action: str
    ) -> bool:
        url = self._transport.url(repo, f"/v2/{repo.path}/blobs/{digest}")
        reply = self._transport.call_once("HEAD", url, repo, action, scopes=scopes)
        if reply.status == 404:
            return False
        self._transport.expect(reply, (200,), repo, action)
        return True

    def _expect_upload(
        self,
        reply: Reply,
        statuses: Collection[int],
        repo: Repository,
        upload: _Upload,
        action: str,
    ) -> None:
        """Like :meth:`_expect`, but an upload the registry lost is started again."""
        if reply.status not in statuses and reply.status == 404:
            codes, _message = error_codes(reply.body)
            if any(code.startswith("BLOB_UPLOAD_") for code in codes):
                upload.location = None
                raise Transient(f"the registry lost the upload ({', '.join(codes)})")
        self._transport.expect(reply, statuses, repo, action)

    def _start_upload(self, repo: Repository, upload: _Upload, action: str) -> bool:
        """POST a new upload (trying mounts first); True when a mount made the blob."""
        base = self._transport.url(repo, f"/v2/{repo.path}/blobs/uploads/")
        mounts = [
            base.with_query(mount=upload.blob.digest, **{"from": m}) for m in upload.mount_from
        ]
        for url in [*mounts, base]:
            reply = self._transport.call_once("POST", url, repo, action, scopes=upload.scopes)
            if reply.status == 201 and url is not base:
                return True
            self._transport.expect(reply, (202,), repo, action)
            location = reply.headers.get("location")
            if not location:  # registries always send one: the answer's head was cut
                raise Transient(f"POST {url.path}: an upload without a Location")
            upload.location = url.join(location)
            upload.offset = 0
            return False  # a refused mount answers 202 with an upload to use instead
        raise AssertionError("unreachable")

    def _resume_upload(self, repo: Repository, upload: _Upload, action: str) -> bool:
        """Ask where an interrupted upload stands; False when the registry lost it."""
        assert upload.location is not None
        reply = self._transport.call_once(
            "GET", upload.location, repo, action, scopes=upload.scopes
        )
        if reply.status in (400, 404, 416):
            return False  # unknown or invalid now (2.x cancels uploads at a wrong offset)
        self._transport.expect(reply, (204,), repo, action)
        stated = reply.headers.get("range", "")
        low, _, high = stated.removeprefix("bytes=").partition("-")
        offset = int(high) + 1 if low.isdigit() and high.isdigit() else 0
        if stated in ("0-0", "bytes=0-0") and upload.offset == 0:
            offset = 0  # distribution writes "0-0" for an empty upload too
        if offset > upload.blob.size:
            return False
        upload.location = upload.location.join(reply.headers.get("location", ""))
        upload.offset = offset
        _log.info("resuming upload of %s at %d bytes", upload.blob.digest, offset)
        return True

    # -- the worker pool -----------------------------------------------------------------------

    def _parallel(self, work: Callable[[Descriptor], T], items: Sequence[Descriptor]) -> list[T]:
        """Run ``work`` over ``items`` in the thread pool; the first failure is raised."""
        if len(items) <= 1 or self.workers == 1:
            return [work(item) for item in items]
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.workers, len(items)), thread_name_prefix="imagedsl-registry"
        ) as pool:
            futures = [pool.submit(work, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


@attrs.define
class _Upload:
    """The state of one blob upload across attempts."""

    blob: Descriptor
    path: Path
    scopes: tuple[str, ...]
    mount_from: tuple[str, ...]
    location: Url | None = None
    offset: int = 0
    sent: int = 0


class _Download:
    """A blob streaming from a response into its partial file (which hashes it)."""

    def __init__(self, partial: PartialBlob) -> None:
        self.partial = partial
        self.fetched = 0

    def stream_from(self, response: http.client.HTTPResponse, progress: TransferProgress) -> None:
        partial = self.partial
        buffer = bytearray(IO_CHUNK)
        view = memoryview(buffer)
        try:
            while partial.have < partial.size:
                n = response.readinto(view[: min(IO_CHUNK, partial.size - partial.have)])
                if not n:
                    raise Transient(f"blob {partial.digest}: the download ended early")
                partial.write(view[:n])
                self.fetched += n
                progress.transfer_advanced(partial.digest, partial.have)
        except TRANSIENT_ERRORS as error:
            raise Transient(f"blob {partial.digest}: {type(error).__name__}: {error}") from error
        finally:
            partial.handle.flush()
        if response.read(1):
            raise Transient(f"blob {partial.digest}: more bytes than its size")


def _registry_reference(reference: str | ImageReference) -> ImageReference:
    ref = parse_reference(reference, step="registry") if isinstance(reference, str) else reference
    if ref.transport != "registry":
        raise ValueError(f"not a registry reference: {ref}")
    return ref


def _choose_platform(index: Manifest, wanted: Platform) -> Descriptor | None:
    for child in index.manifests:
        if child.platform is not None and wanted.matches(child.platform):
            return child
    return None


def _walk(
    top: Manifest,
    load: Callable[[Descriptor], Manifest],
    too_deep: Callable[[Descriptor], Exception],
) -> tuple[list[Manifest], dict[str, Descriptor]]:
    """Everything a manifest or index reaches: the child manifests (each before the index
    that lists it, each once) and the blobs (by digest, in the order first met).

    ``load`` reads a child manifest; a child more than
    :data:`~imagedsl.oci.manifest.MAX_INDEX_DEPTH` manifests from the top raises
    ``too_deep(child)``. Iterative, with the manifests met kept by digest: indexes that list
    the next one twice cost one read each, not two to the power of their depth.
    """
    children: list[Manifest] = []
    blobs: dict[str, Descriptor] = {blob.digest: blob for blob in top.blobs}
    seen = {top.digest}
    # (manifest, its depth, the children of it not yet walked)
    stack: list[tuple[Manifest, int, Iterator[Descriptor]]] = [(top, 1, iter(top.manifests))]
    while stack:
        node, depth, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            if node is not top:
                children.append(node)
        elif child.media_type not in INDEX_TYPES | MANIFEST_TYPES:
            blobs.setdefault(child.digest, child)
        elif child.digest not in seen:
            if depth >= MAX_INDEX_DEPTH:
                raise too_deep(child)
            seen.add(child.digest)
            loaded = load(child)
            for blob in loaded.blobs:
                blobs.setdefault(blob.digest, blob)
            stack.append((loaded, depth + 1, iter(loaded.manifests)))
    return children, blobs


def _read_manifest(source: BlobSource, digest: str, media_type: str | None) -> Manifest:
    path = source.blob_path(digest)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BlobSourceError(digest, str(path), "the manifest does not exist") from None
    try:
        manifest = Manifest.parse(raw, media_type=media_type, where=str(path))
    except ValueError as error:
        raise BlobSourceError(digest, str(path), str(error)) from None
    if manifest.digest != digest:
        raise BlobSourceError(digest, str(path), f"its bytes hash to {manifest.digest}")
    return manifest
