"""A collection: an index (one file, or a folder of shards), the docstore beside it, and the
model that made its codes. What ``bne build`` / ``bne search`` / ``bne info`` / ``bne verify``
and the demo do, as a library (the Ray build of a folder of shards is :func:`bne.distributed.build_sharded`,
re-exported here and as ``bne.build_sharded``):

    >>> c = bne.Collection.create("docs.bne")            # nothing is written before add()
    >>> c.add(bne.read_corpus("docs.txt"))               # encode, commit in batches
    >>> c.search(["a cat on a mat"], k=5).hits[0][0].text

The collection owns the two-store transaction: for every batch the texts are committed to the
docstore first, then the codes to the index, so every committed index id has its document, and
rows of a batch whose index commit never happened are dropped on the next ``add``. Reading the
input, encoding and committing run on three threads (:mod:`bne.ingest`), so neither the disk nor
the reader waits on the model (nor the model on them); Ctrl-C stops after the commit in flight.

A docstore lives at ``docstore.path_for(P)``: ``P.docs.sqlite`` beside an index file ``P``, and
``<folder>/corpus.docs.sqlite`` in a folder of shards. Its row ids are the index's ids. A new
index file and its docstore record one random tag (``docstore_tag``), checked at every open, so
another collection's docstore put beside an index is refused (see :mod:`bne.upkeep`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from . import _core, distributed, hybrid, lexical, mapped, storage, upkeep
from .codes import check_bits
from .corpus import Doc
from .distributed import build_sharded  # noqa: F401  (bne.build_sharded, collection.build_sharded)
from .docstore import TAG_KEY, DocStore, StoredDoc, path_for
from .encoder.backend import INT8_MIN_DOCS
from .errors import CollectionError, DocStoreError, DocStoreMismatchError, IndexLockedError
from .hybrid import Hit, SearchResult  # noqa: F401  (bne.collection.Hit, .SearchResult)
from .ingest import (
    AddResult,
    Committer,
    Progress,
    Reader,
    file_identity,
    legacy_present,
    remove_if_unused,
    run_pipeline,
)
from .models import ModelRef, identify, load, same_model
from .shards import MANIFEST, docstore_key, is_sharded


class Collection:
    """Use :meth:`create` or :meth:`open`; close it (or use ``with``) to release the writer lock."""

    def __init__(
        self,
        path: str | os.PathLike,
        model: ModelRef | None,
        *,
        writable: bool,
        index: Any = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.model = model  # None: an index written through the API without a model; it cannot encode
        self.bits = model.bits if model is not None else index.bits
        self.writable = writable
        self.index = index  # MappedIndex, ShardedIndex, or None for a new collection before add()
        self.device, self.threads = device, threads
        self._encoders: dict[str, Any] = {}
        self.last_add = AddResult()  # what the latest add() did, also when it raised
        self.last_missing: list[str] = []  # the ids the latest remove() did not find
        # (st_dev, st_ino) of each file this object created: a failed new build removes these
        # and nothing else (another process may have created the same path meanwhile)
        self._created: dict[str, tuple[int, int]] = {}
        self.lexical = hybrid.Lexical(docstore_key(self.path))  # opened at the first search that needs it
        # a Collection dropped without close() closes its docstore connection at once: sqlite3's
        # Connection sits in a reference cycle of its own and would wait for the cycle collector
        weakref.finalize(self, self.lexical.close)
        self._closed = False

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        model: str | os.PathLike | ModelRef = "default",
        bits: int | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> Collection:
        """A new collection at ``path`` (an index file). Everything is checked here, but no file is
        created before the first :meth:`add` commits: an add that commits nothing leaves nothing."""
        path = os.fspath(path)
        check_new_path(path)
        ref = model if isinstance(model, ModelRef) else identify(model, bits)
        if bits is not None and ref.bits != bits:
            raise CollectionError(f"model {ref.name} makes {ref.bits}-bit codes, not {bits}")
        return cls(path, ref, writable=True, device=device, threads=threads)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        mode: str = "r",
        model: str | os.PathLike | None = None,
        device: str = "cpu",
        threads: int | None = None,
        ray_address: str | None = None,
    ) -> Collection:
        """An existing collection: an index file (``mode`` 'r' or 'a') or a folder of shards (read
        only; needs Ray). ``model`` overrides the recorded model; it must be the same model."""
        path = os.fspath(path)
        if not path:
            raise CollectionError("the index path is empty")
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if is_sharded(path):
            if mode != "r":
                raise CollectionError(f"{path}: a folder of shards is read-only; rebuild it with --ray --append")
            paths, manifest = distributed.read_manifest(_manifest_path(path))
            recorded = ModelRef.from_metadata(manifest.get("metadata", {}), manifest["bits"])
            ref = _chosen_model(path, recorded, model, manifest["bits"])
            distributed.start_ray(ray_address)
            sharded = distributed.ShardedIndex(paths, threads=threads)
            return cls(path, ref, writable=False, index=sharded, device=device, threads=threads)
        idx = mapped.open(path, mode=mode)
        try:
            recorded = ModelRef.from_metadata(idx.metadata, idx.bits)
            ref = _chosen_model(path, recorded, model, idx.bits)
            upkeep.check_tag_at(path, idx.metadata)  # a docstore of another collection beside it
        except BaseException:
            idx.close()
            raise
        return cls(path, ref, writable=mode == "a", index=idx, device=device, threads=threads)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.lexical.close()
        if self.index is not None:
            self.index.close()

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def refresh(self) -> bool:
        """Follows a writer: maps the commits made since this read-only collection opened (or
        last refreshed) and returns True; False, quickly, when there is none. The documents are
        read from the docstore at each search, so they follow by themselves. A writer's own view
        and a folder of shards need no refresh (False). See :meth:`bne.MappedIndex.refresh`. The
        lexical side follows the index: it returns the ids the refreshed index holds."""
        self.lexical.refresh()  # a docstore replaced at its path is reopened
        if self.writable or not isinstance(self.index, mapped.MappedIndex):
            return False
        return self.index.refresh()

    def __repr__(self) -> str:
        name = None if self.model is None else self.model.name
        return f"bne.Collection({self.path!r}, model={name!r}, bits={self.bits}, codes={len(self)})"

    @property
    def sharded(self) -> bool:
        return is_sharded(self.path)

    @property
    def docstore_path(self) -> str:
        return path_for(docstore_key(self.path))

    def encoder(self, purpose: str = "query", docs: int | None = None) -> Any:
        """The model's encoder, loaded once per purpose ('query': low latency, 'bulk': throughput;
        ``docs``, when known, lets a small bulk job skip a one-time int8 quantisation)."""
        if self.model is None:
            raise CollectionError(f"{self.path} does not record the model that built it; pass a model")
        if purpose not in self._encoders:
            enc = load(
                self.model,
                device=self.device,
                threads=self.threads,
                purpose=purpose,
                search_dirs=self._near(),
                docs=docs,
            )
            if enc.bits != self.bits:
                raise CollectionError(
                    f"model {self.model.name} makes {enc.bits}-bit codes, but {self.path} holds {self.bits}"
                )
            self._encoders[purpose] = enc
        return self._encoders[purpose]

    def _near(self) -> list[str]:
        """Folders where a moved model may sit: the collection's own."""
        return [os.path.dirname(os.path.abspath(self.path))]

    # -- adding ------------------------------------------------------------------------------------

    def add(
        self,
        docs: Iterable[Doc],
        *,
        batch_size: int = 64,
        commit_every: int = 2048,
        progress: Callable[[Progress], None] | None = None,
        source: str = "the input",
        lexical_progress: upkeep.LexicalProgress | None = None,
    ) -> AddResult:
        """Encodes and commits the documents not already present (by ``Doc.ext_id``), in durable
        batches of ``commit_every``. A new collection given no documents raises, naming
        ``source``. Ctrl-C (KeyboardInterrupt) finishes the commit in flight and returns with
        ``interrupted=True``; every batch committed before stays. An older collection gets its
        lexical index first (:meth:`add_lexical_index`, reporting to ``lexical_progress``)."""
        if not self.writable:
            raise CollectionError(f"{self.path} is open read-only")
        if self.sharded:
            raise CollectionError(f"{self.path}: add to a folder of shards with build_sharded")
        if batch_size < 1 or commit_every < 1:
            raise ValueError("batch_size and commit_every must be >= 1")
        t0 = time.perf_counter()
        result = self.last_add = AddResult()
        reader = Reader(docs)  # starts reading now, while the model loads
        store: DocStore | None = None
        fresh = self.index is None
        try:
            if not fresh:
                store = self._writer_store()
                result.dropped = upkeep.drop_stale(store, self.index)
                if not upkeep.add_lexical(store, lexical_progress):  # Ctrl-C: its committed steps stay
                    result.interrupted = True
                    self._close_store(store)
                    return result
            encoder = self.encoder("bulk", docs=reader.count_up_to(INT8_MIN_DOCS))
            seen: set[str] = set()
            legacy: Callable[[list[Doc]], set[str]] = lambda todo: set()  # noqa: E731
            if store is not None:
                old = store
                seen = old.ext_ids()
                legacy = lambda todo: legacy_present(old, todo)  # noqa: E731
            committer = Committer(self, store)
            try:
                run_pipeline(reader, encoder, committer, seen, legacy, result, batch_size, commit_every, progress)
            except KeyboardInterrupt:
                result.interrupted = True
            finally:
                if reader.total is not None:  # the whole input, also when Ctrl-C stopped before its end
                    result.total = max(result.total, reader.total)
                committer.finish()  # the commit in flight completes; its error (if any) is raised
                result.added = committer.committed
                store = committer.store
        except BaseException:
            self._close_store(store)
            if fresh and result.added == 0:
                self._remove_new_files()
            raise
        finally:
            reader.stop()
        self._close_store(store)
        if fresh and result.added == 0:
            self._remove_new_files()
            if result.total == 0 and not result.interrupted:
                raise CollectionError(f"empty corpus: no documents in {source}")
        result.seconds = time.perf_counter() - t0
        return result

    def add_lexical_index(
        self, progress: upkeep.LexicalProgress | None = None, step: int = upkeep.LEXICAL_STEP
    ) -> bool:
        """Adds the lexical (BM25) index to a collection built by an older bne, ``step`` documents
        per commit, reporting (done, total) after each; True once complete. Resumable: Ctrl-C
        returns False and keeps the committed steps. A read-only docstore is refused, unwritten."""
        return upkeep.add_lexical_index(self, progress, step)

    def remove(self, ext_ids: Iterable[str]) -> int:
        """Removes the documents with these ids (``Doc.ext_id``) from the index, then from the
        docstore and its lexical index (see :mod:`bne.upkeep`); returns how many were removed.
        ``last_missing`` then lists the ids it did not find."""
        with upkeep.writer(self, "remove documents from") as store:
            removed, self.last_missing = upkeep.remove(store, self.index, ext_ids)
            return removed

    def compact(self) -> None:
        """Rewrites the index without its removed codes and the lexical index as one segment."""
        with upkeep.writer(self, "compact") as store:
            upkeep.compact(store, self.index)

    def _writer_store(self) -> DocStore:
        mode = stat.S_IMODE(os.stat(self.path).st_mode)  # the docstore holds the same corpus: same bits
        tag = None if self.index is None else upkeep.index_tag(self.index.metadata, self.path)
        return DocStore(self.path, create=True, file_mode=mode, threaded=True, tag=tag)

    def _start_index(self) -> DocStore:
        """Creates the index file (and its docstore) at the first commit of a new collection.

        Creation is exclusive: a complete empty index is linked to the path, which fails if
        anything is there (two builds of one new path: one wins, the other changes nothing).
        The file's identity is kept, so a failure later removes only this build's own files."""
        assert self.model is not None  # create() always has one
        metadata = {
            **self.model.to_metadata(),
            "max_length": self.encoder("bulk").max_length,
            "created_by": f"bne {_core.__version__}",
        }
        tag = _new_tag()
        if tag is not None:  # the docstore gets the same (in _writer_store): the two files are bound
            metadata[TAG_KEY] = tag
        header = storage.new_header(check_bits(self.bits), metadata=metadata)
        try:
            self._created[self.path] = storage.save_atomic(self.path, header, [], -1, overwrite=False)
        except FileExistsError:
            raise CollectionError(
                f"{self.path} already exists: another process created it while this build ran "
                f"(nothing of it was changed; add to it with bne build --append once that build is done)"
            ) from None
        except OSError as e:  # name the user's file, not the temporary one it was written through
            raise CollectionError(f"cannot create {self.path}: {e.strerror or e}") from None
        try:
            index = mapped.open(self.path, mode="a")
        except IndexLockedError:  # opened for appending in the moment between its creation and ours
            raise CollectionError(
                f"{self.path} was opened for writing by another process as this build created it"
            ) from None
        if file_identity(self.path) != self._created[self.path]:
            index.close()
            raise CollectionError(f"{self.path} was replaced by another process as this build created it")
        self.index = index
        ds = self.docstore_path
        if os.path.lexists(ds):  # not ours: refused, and kept
            raise CollectionError(f"{ds} already exists without its index; remove it first")
        try:
            return self._writer_store()
        finally:  # we hold the index's writer lock, so whatever is at ds now, we created
            made = file_identity(ds)
            if made is not None:
                self._created[ds] = made

    @staticmethod
    def _close_store(store: DocStore | None) -> None:
        if store is not None:
            with contextlib.suppress(Exception):  # may be unwinding from another error
                store.close()

    def _remove_new_files(self) -> None:
        """Removes the files this object created, and nothing else: a path that holds another
        file (another process's build of the same path) stays, and so does our index if another
        process has it open for writing. Runs while our writer lock is held, then closes."""
        created, self._created = self._created, {}
        ds = self.docstore_path
        try:
            if ds in created and file_identity(ds) == created[ds]:
                for p in (ds, ds + "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(p)
            if self.path in created:
                remove_if_unused(self.path, created[self.path], locked=self.index is not None)
        finally:
            if self.index is not None:
                with contextlib.suppress(Exception):
                    self.index.close()
                self.index = None

    # -- searching ---------------------------------------------------------------------------------

    def search(
        self,
        texts: Sequence[str],
        k: int = 10,
        *,
        mode: str | None = None,
        rescore: int | None = None,
        threads: int | None = None,
        allow: Iterable[int] | np.ndarray | None = None,
        rrf_k: float = lexical.RRF_K,
        depth: int = lexical.DEPTH,
        weights: tuple[float, float] | None = None,
        fusion: str = "rrf",
    ) -> SearchResult:
        """Top-``k`` documents per query text.

        ``mode``: 'dense' (the query's code, Hamming distance), 'lexical' (BM25 over the
        docstore's lexical index) or 'hybrid' (reciprocal rank fusion of the two:
        ``sum(weight / (rrf_k + rank))`` over each side's top ``depth``, at least ``k``; with
        ``fusion="linear"``, ``sum(weight * score)`` with each side's scores min-max normalised over
        its list, see :func:`bne.lexical.linear_fuse`). ``weights`` (dense, lexical), None: the
        fusion's defaults (``bne.lexical.WEIGHTS``, ``LINEAR_WEIGHTS``). ``mode`` None:
        hybrid where the docstore's lexical index is ready, else dense with ``SearchResult.note``
        saying why; an explicit hybrid or lexical mode there raises CollectionError.
        ``rescore=M`` re-ranks the top ``M`` Hamming candidates by the float query logits
        (single-file collections); in hybrid mode the dense list is the rescored one. ``allow``
        (ids) restricts both sides; removed documents never come back from either.
        See :class:`bne.hybrid.Hit` for what each hit holds."""
        if self._closed:  # before anything reopens the docstore
            raise ValueError(f"{self.path}: collection is closed")
        if self.index is None:
            raise CollectionError(f"{self.path} has no documents yet")
        return hybrid.search(
            self,
            texts,
            k,
            mode=mode,
            rescore=rescore,
            threads=threads or self.threads,
            allow=allow,
            rrf_k=rrf_k,
            depth=depth,
            weights=weights,
            documents=self._documents,
            fusion=fusion,
        )

    def _documents(self, ids: np.ndarray) -> tuple[dict[int, StoredDoc], str | None]:
        try:
            store = DocStore(docstore_key(self.path))
        except (FileNotFoundError, DocStoreError) as e:  # the index alone still answers: ids, no texts
            return {}, str(e)
        try:
            return store.get(np.unique(ids)), None
        except DocStoreError as e:
            return {}, str(e)
        finally:
            store.close()

    # -- describing --------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The index's description plus the document count and the model's identity."""
        if self.index is None:
            raise CollectionError(f"{self.path} has no documents yet")
        if self.sharded:
            info: dict[str, Any] = {
                "path": self.path,
                "bits": self.bits,
                "codes": len(self.index),
                "shards": len(self.index.paths),
            }
        else:
            info = self.index.info()
        m = self.model
        info["model_identity"] = None if m is None else {"name": m.name, "sha256": m.sha256, "kind": m.kind}
        info["documents"], warning = None, None
        try:
            store = DocStore(docstore_key(self.path))
        except FileNotFoundError:
            pass
        except DocStoreError as e:
            warning = str(e)
        else:
            try:
                info["documents"] = store.count()
                if not self.sharded:  # a folder's corpus.docs.sqlite has texts only (a lexical index per shard)
                    info["lexical"] = upkeep.lexical_info(store)
            except DocStoreError as e:
                warning = str(e)
            finally:
                store.close()
        if warning:
            info["warning"] = warning
        return info

    def verify(self) -> dict[str, Any]:
        """Checks every checksum of the index, the docstore's integrity, that it is this index's
        docstore (the tags, and a row for every live code: DocStoreMismatchError) and its lexical
        index against its rows; raises on damage. Returns what was checked."""
        if self.index is None or self.sharded:
            raise CollectionError(f"{self.path}: verify takes an index file")
        self.index.verify()
        info = self.index.info()
        out: dict[str, Any] = {
            "codes": info["codes"],
            "segments": info["segments"],
            "documents": None,
            "past_commit": 0,  # docstore rows past the index's last commit (dropped by the next add)
        }
        try:
            store = DocStore(self.path)
        except FileNotFoundError:
            if upkeep.index_tag(self.index.metadata, self.path) is not None:  # it was built with one
                raise DocStoreMismatchError(
                    f"{path_for(self.path)} is missing: {self.path} was built with it (restore it, or rebuild)"
                ) from None
            return out
        try:
            store.check_integrity()
            upkeep.check_tag(store, self.index.metadata, self.path)
            upkeep.verify_coverage(store, self.index, self.path)
            out["documents"] = store.count()
            out["past_commit"] = store.count_above(info["max_id"])
            out["lexical"] = upkeep.verify_lexical(store, self.index)  # raises on a mismatch
        finally:
            store.close()
        return out


# -- helpers ------------------------------------------------------------------------------------


def _new_tag() -> int | None:
    """The tag binding a new index file to its docstore (63 bits: SQLite's INTEGER is signed)."""
    return secrets.randbits(63)


def check_new_path(path: str) -> None:
    """A new index file can be created at ``path``: checked before anything is read or written."""
    if not path:
        raise CollectionError("the index path is empty: give the index file to write")
    if os.path.isdir(path):
        raise CollectionError(
            f"{path} is a folder: give the index file to write, e.g. {os.path.join(path, 'index.bne')} "
            f"(a folder of shards is built with build_sharded / bne build --ray)"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CollectionError(f"cannot create {path}: folder {os.path.dirname(path) or folder} does not exist")
    if os.path.lexists(path):
        raise CollectionError(f"{path} already exists: open it to add to it (bne build --append), or remove it first")
    if os.path.lexists(path_for(path)):
        raise CollectionError(f"{path_for(path)} already exists without its index; remove it first")
    if not os.access(folder, os.W_OK):
        raise CollectionError(f"cannot create {path}: folder {os.path.dirname(path) or folder} is not writable")


def open_to_append(
    path: str | os.PathLike,
    model: str | os.PathLike,
    bits: int | None = None,
    *,
    device: str = "cpu",
    threads: int | None = None,
) -> Collection:
    """An index file opened to add to with ``model`` (at ``bits``, default the index's). Stricter
    than ``Collection.open(model=)``: the model must be known to make the recorded codes, so an
    index that records no model, or one that cannot be compared, is refused (appending would mix
    codes of two models)."""
    coll = Collection.open(path, mode="a", device=device, threads=threads)
    try:
        asked = identify(model, bits or coll.bits)
        if not same_model(coll.model, asked):
            built = "an unrecorded model" if coll.model is None else f"model {coll.model.name!r}"
            raise CollectionError(
                f"{os.fspath(path)} was built with {built} at {coll.bits} bits; "
                f"asked for {asked.name!r} at {asked.bits} bits"
            )
    except BaseException:
        coll.close()
        raise
    return coll


def _manifest_path(path: str) -> str:
    manifest = os.path.join(path, MANIFEST) if os.path.isdir(path) else path
    if not os.path.isfile(manifest):
        hint = ""
        if os.path.isdir(path) and any(
            os.path.isfile(os.path.join(path, n)) for n in ("corpus.jsonl", "corpus.jsonl.gz")
        ):
            hint = f"; it looks like a BEIR dataset: build an index first (bne build {path} -o index.bne)"
        raise CollectionError(f"{path} is a folder without {MANIFEST}: give an index file or a folder of shards{hint}")
    return manifest


def _chosen_model(
    path: str, recorded: ModelRef | None, override: str | os.PathLike | None, bits: int
) -> ModelRef | None:
    """The recorded model, or ``override`` when given (which must be the recorded one, if any)."""
    if override is None:
        return recorded
    ref = identify(override, bits)
    if recorded is not None and same_model(recorded, ref) is False:  # None: cannot tell (old index)
        raise CollectionError(f"{path} was built with model {recorded.describe()}, not {ref.describe()}")
    return ref
