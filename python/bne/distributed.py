"""Scale-out on Ray: sharded search and distributed index builds. Shard files and manifests
without Ray are :mod:`bne.shards` (their names are re-exported here).

* :class:`ShardedIndex` starts one Ray actor per shard file; each maps its file once. ``search``
  scatters the queries to every shard and merges the per-shard top-k under the single-node tie
  rule (distance, then global position), so results equal a search over the union of the shards.
  Dead actors are restarted and the call retried; a shard that stays down raises
  :class:`ShardUnavailableError` naming it, unless the caller asks for partial results.
  ``lexical_search`` ranks by BM25 over each shard's lexical postings file with collection-wide
  statistics (round 1: each shard's document frequencies, merged; round 2: each shard's top
  ``depth`` scored with them, merged), so it equals one lexical index over the union.
* :func:`build_sharded` (``bne build --ray``) writes a folder's docstore and encodes the corpus
  with Ray Data ``map_batches``, one shard per task, skipping shards already written, so a failed
  build resumes where it stopped. The task that encodes a shard also writes its lexical postings
  file (:func:`bne.shards.write_lexical`); the folder's docstore keeps the texts only.

Needs ``pip install 'bne[ray]'`` and a running Ray (``ray.init()`` or ``ray.init(address=...)``).
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import index as bindex
from . import lexical, lexical_postings, mapped, storage
from .codes import check_codes, check_k
from .corpus import Doc, doc_text
from .docstore import LEXICAL_CHUNK, DocStore
from .errors import CollectionError, DocStoreError, ShardUnavailableError
from .models import ModelRef, identify, same_model
from .shards import (
    MANIFEST,
    docstore_key,
    lexical_base,
    lexical_done,
    lexical_ids,
    lexical_path,
    open_lexical,
    read_manifest,
    shard_done,
    shard_index,
    shard_path,
    write_lexical,
    write_manifest,
)

__all__ = [
    "MANIFEST",
    "ShardedIndex",
    "build_sharded",
    "read_manifest",
    "shard_index",
    "start_ray",
    "write_manifest",
]


def start_ray(address: str | None = None):
    """Connects to Ray (``address``, else ``$RAY_ADDRESS``, else a local Ray) unless already connected."""
    import logging

    try:
        import ray
    except ImportError:
        raise ImportError("Ray is needed for a folder of shards: pip install 'bne[ray]'") from None
    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or None,
            logging_level=logging.ERROR,
            configure_logging=False,
            include_dashboard=False if not address else None,
        )
    return ray


# -- serving --------------------------------------------------------------------------------------


def _server_class():
    import ray

    @ray.remote
    class ShardServer:
        """Maps one shard file once and answers searches with global positions."""

        def __init__(self, path: str) -> None:
            self.path = path
            self.index = mapped.open(path)
            self.node = ray.get_runtime_context().get_node_id()
            # the shard's lexical file: without it (or with one refused) dense search still works
            self.lex: lexical_postings.Searcher | None = None
            self.lex_problem: str | None = None
            self.lex_range = (-1, -1)
            self.lex_base = 0  # the file holds id - lex_base
            lex = lexical_path(path)
            try:
                conn = open_lexical(lex)
                held = lexical_ids(conn)
                own = np.delete(self.index.ids(), self.index.removed_positions())
                if not np.array_equal(held, np.sort(own)):  # e.g. left beside a shard of another split
                    conn.close()
                    raise DocStoreError(f"{lex} holds other documents than its shard; build the folder again")
                self.lex = lexical_postings.Searcher(conn)
                self.lex_base = lexical_base(conn)
                self.lex_range = (int(held[0]), int(held[-1])) if len(held) else (-1, -1)
            except FileNotFoundError:
                self.lex_problem = f"{lex} is missing (built without the lexical index)"
            except (DocStoreError, OSError) as e:
                self.lex_problem = " ".join(str(e).split())

        def info(self) -> dict[str, Any]:
            return {
                "count": self.index.npositions,
                "bits": self.index.bits,
                "node": self.node,
                "pid": os.getpid(),
                "base": self.index.metadata.get("base"),
                "lexical": self.lex_problem,
                "lex_range": self.lex_range,
            }

        def _searcher(self) -> lexical_postings.Searcher:
            if self.lex is None:
                raise DocStoreError(self.lex_problem or "no lexical index")
            return self.lex

        def lexical_stats(self, terms: list[str]) -> lexical.Stats:
            return self._searcher().local_stats(terms)

        def lexical_search(
            self,
            queries: list[list[str]],
            depth: int,
            stats: lexical.Stats,
            allowed: np.ndarray | None,
            threads: int | None,
        ) -> list[list[tuple[int, float]]]:
            searcher = self._searcher()
            lo, base = self.lex_range[0], self.lex_base
            return _search_shard(searcher, queries, depth, stats, allowed, lo, threads, base)

        def search(self, queries: np.ndarray, k: int, base: int, threads: int | None):
            if len(self.index) == 0:
                nq = len(queries)
                return (
                    np.full((nq, k), bindex.PAD_DISTANCE, np.int32),
                    np.full((nq, k), -1, np.int64),
                    np.full((nq, k), -1, np.int64),
                )
            D, P = self.index.search_positions(queries, k, threads=threads)
            ids = self.index.ids_at(P)
            return D, np.where(P >= 0, P + base, -1), ids

    return ShardServer


def _search_shard(
    searcher: lexical_postings.Searcher,
    queries: list[list[str]],
    depth: int,
    stats: lexical.Stats,
    allowed: np.ndarray | None,
    lo: int,
    threads: int | None = None,
    base: int = 0,
) -> list[list[tuple[int, float]]]:
    """One shard's round 2. ``allowed`` is the mask of the shard's ids from ``lo`` on (what the
    driver sent); it becomes a mask by the file's ids (global id - ``base``), or a predicate where
    the searcher takes none. The results are global ids."""
    full, at = None, max(lo - base, 0)
    if allowed is not None:
        full = np.zeros(at + len(allowed), np.bool_)
        full[at:] = allowed
    many = getattr(searcher, "search_many", None)
    if many is not None:  # a searcher that takes a bool mask by id, and many queries at once
        got = many(queries, depth, stats=stats, allowed=full, threads=threads)
    else:
        admit = None if full is None else (lambda i: i < len(full) and bool(full[i]))
        got = [searcher.search(q, depth, stats=stats, allowed=admit) for q in queries]
    return [[(i + base, sc) for i, sc in r] for r in got]


class ShardedIndex:
    """A search over shard files served by Ray actors; results equal one index over their union.

    ``paths``: shard files in position order (or a manifest / output folder of
    :func:`shard_index` / :func:`build_sharded`). ``resources``: one dict of Ray resources per
    shard (e.g. ``{"node_a": 1}``) to pin a shard to the machine that holds its file.
    ``max_retries``: restarts of a dead actor and retries of its call before the shard counts as
    unavailable. ``timeout``: seconds to wait for one shard's answer.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str],
        *,
        resources: Sequence[dict] | None = None,
        max_retries: int = 2,
        timeout: float = 60.0,
        threads: int | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not running in this process: call ray.init() or ray.init(address=...) first")
        if isinstance(paths, (str, os.PathLike)):
            paths, _ = read_manifest(paths)
        self.paths = [os.fspath(p) for p in paths]
        if resources is not None and len(resources) != len(self.paths):
            raise ValueError(f"resources needs one entry per shard ({len(self.paths)}), got {len(resources)}")
        self.max_retries, self.timeout, self.threads = int(max_retries), float(timeout), threads
        server = _server_class()
        self._server = server
        self._resources = list(resources) if resources is not None else [None] * len(self.paths)
        self.actors = [self._start(i) for i in range(len(self.paths))]
        infos = self._gather([a.info.remote() for a in self.actors], "info")
        bits = {i["bits"] for i in infos}
        if len(bits) != 1:
            raise ValueError(f"shards hold codes of different widths: {sorted(bits)}")
        self.bits = bits.pop()
        self.code_bytes = self.bits // 8
        self.counts = [i["count"] for i in infos]
        self.bases = list(np.cumsum([0] + self.counts[:-1]).tolist())
        self.nodes = [i["node"] for i in infos]
        self._lex_problems: list[str | None] = [i["lexical"] for i in infos]
        self._lex_ranges: list[tuple[int, int]] = [tuple(i["lex_range"]) for i in infos]

    def _start(self, i: int):
        opts: dict[str, Any] = {"max_restarts": self.max_retries, "max_task_retries": self.max_retries}
        resources = self._resources[i]
        if resources:
            opts["resources"] = dict(resources)
        return self._server.options(**opts).remote(self.paths[i])

    def _gather(self, futures, what: str, allow_partial: bool = False):
        """Results per shard. An actor that is dead (after its restarts and retries) or silent
        past the timeout makes its shard unavailable; an error raised *by* a shard (bad input)
        is re-raised as it is."""
        import ray

        out, missing = [], []
        for i, fut in enumerate(futures):
            try:
                out.append(ray.get(fut, timeout=self.timeout))
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                outage: Exception = e
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            if not allow_partial:
                first = str(outage).strip().splitlines()[0] if str(outage).strip() else ""
                raise ShardUnavailableError(
                    f"shard {i} ({self.paths[i]}) is unavailable for {what} after "
                    f"{self.max_retries} retries: {type(outage).__name__}: {first}"
                )
            out.append(None)
            missing.append(i)
        return (out, missing) if allow_partial else out

    def __len__(self) -> int:
        return int(sum(self.counts))

    def search(self, queries: np.ndarray, k: int, *, allow_partial: bool = False):
        """Top-k over every shard, merged under the tie rule.

        Returns ``(D, I)``; with ``allow_partial=True`` returns ``(D, I, missing)``, where
        ``missing`` lists the shards that did not answer (empty: the answer is complete).
        """
        q = check_codes(queries, "queries", self.code_bytes)
        k = check_k(k)
        bindex._check_result_size(len(q), k, len(self))  # before any shard allocates its (nq, k) part
        futures = [a.search.remote(q, k, base, self.threads) for a, base in zip(self.actors, self.bases, strict=True)]
        if allow_partial:
            parts, missing = self._gather(futures, "search", allow_partial=True)
        else:
            parts, missing = self._gather(futures, "search"), []
        D, _, ids = bindex.merge_topk([p for p in parts if p is not None], k, len(q))
        return (D, ids, missing) if allow_partial else (D, ids)

    @property
    def lexical_ready(self) -> bool:
        """Every shard has a complete lexical postings file (:meth:`lexical_search` may be used)."""
        return not any(self._lex_problems)

    @property
    def lexical_problem(self) -> str | None:
        """Why the lexical index is not ready (the first shard's problem, one line), or None."""
        return next((p for p in self._lex_problems if p), None)

    def lexical_search(
        self, terms_per_query: Sequence[Sequence[str]], depth: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        """The best ``depth`` (global id, BM25) per query (terms from ``bne.lexical.query_terms``),
        best first, ties by id, scored with the statistics of all the shards together: the ranking
        of one lexical index over the union. ``allowed``: None, or a 1-D numpy bool mask by global
        id (True: may be returned; ids past its end may not)."""
        import ray

        if self.lexical_problem:
            raise DocStoreError(f"no lexical index for this folder of shards: {self.lexical_problem}")
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be a whole number >= 1, got {depth!r}")
        if allowed is not None and (
            not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_ or allowed.ndim != 1
        ):
            raise ValueError("allowed must be None or a 1-D numpy bool mask indexed by id")
        queries = [[str(t) for t in terms] for terms in terms_per_query]
        if not queries:
            return []
        # round 1: every shard's statistics for all the queries' terms (a term's df is the same in
        # every query), merged into collection-wide ones
        terms = sorted({t for q in queries for t in q})
        parts = self._gather([a.lexical_stats.remote(terms) for a in self.actors], "lexical search")
        stats = ray.put(lexical.merge_stats(parts))
        # round 2: each shard's top depth with those statistics; a shard gets its ids' part of the mask
        futures = []
        for a, (lo, hi) in zip(self.actors, self._lex_ranges, strict=True):
            part = None
            if allowed is not None:
                part = np.zeros(max(hi - lo + 1, 0), np.bool_)
                got = allowed[max(lo, 0) : hi + 1]
                part[: len(got)] = got
            futures.append(a.lexical_search.remote(queries, int(depth), stats, part, self.threads))
        ranked = self._gather(futures, "lexical search")
        return [lexical.merge_ranked([r[q] for r in ranked], int(depth)) for q in range(len(queries))]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


# -- distributed build --------------------------------------------------------------------------


class _EncodeShard:
    """Ray Data UDF: each batch row is one shard (start, stop); encodes and writes it, and its
    lexical postings file (``lexical``), each unless a complete one is there already."""

    def __init__(
        self,
        texts_ref,
        out_dir: str,
        model: ModelRef,
        batch_size: int,
        n_shards: int,
        threads: int | None,
        lexical: bool = True,
    ) -> None:
        import ray

        from .models import load  # the encoder runs on the Ray workers only

        self.texts = ray.get(texts_ref) if isinstance(texts_ref, ray.ObjectRef) else texts_ref
        self.out_dir, self.bits, self.model = out_dir, model.bits, model
        self.batch_size, self.n_shards, self.lexical = batch_size, n_shards, lexical
        # each worker encodes about one shard: a small shard does not wait for an int8 quantisation
        per_shard = -(-len(self.texts) // max(n_shards, 1))
        self.encoder = load(model, threads=threads, purpose="bulk", quiet=True, docs=per_shard)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done, lexed = [], []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
            start, stop = int(start), int(stop)
            path = shard_path(self.out_dir, int(shard))
            done.append(0 if shard_done(path, stop - start, self.model) else self._encode(int(shard), start, stop))
            lex = lexical_path(path)
            if self.lexical and not lexical_done(lex, stop - start):
                chunks = (
                    (range(a, min(a + LEXICAL_CHUNK, stop)), self.texts[a : min(a + LEXICAL_CHUNK, stop)])
                    for a in range(start, stop, LEXICAL_CHUNK)
                )
                lexed.append(write_lexical(lex, chunks, mode=stat.S_IMODE(os.stat(path).st_mode), base=start))
            else:
                lexed.append(0)
        return {"shard": np.asarray(batch["shard"]), "encoded": np.asarray(done), "lexical": np.asarray(lexed)}

    def _encode(self, shard: int, start: int, stop: int) -> int:
        codes = self.encoder.encode(self.texts[start:stop], batch_size=self.batch_size, show_progress=False)
        ids = np.arange(start, stop, dtype=np.int64)
        header = storage.new_header(
            self.bits,
            metadata={**self.model.to_metadata(), "shard": shard, "shards": self.n_shards, "base": start},
        )
        storage.save_atomic(shard_path(self.out_dir, shard), header, [(codes, ids)], stop - 1)
        return stop - start


def encode_shards(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    n_shards: int,
    model: ModelRef | str | os.PathLike = "default",
    bits: int | None = None,
    batch_size: int = 64,
    concurrency: int | None = None,
    threads: int | None = 1,
    lexical: bool = True,
) -> dict[str, Any]:
    """Encodes ``texts`` on the Ray cluster (Ray Data ``map_batches``, one shard per task) into
    ``n_shards`` shard files plus a manifest in ``out_dir``; ids are the texts' positions.
    ``lexical``: each shard also gets its lexical postings file of the texts (as
    :func:`bne.corpus.doc_text` makes them). Shards and lexical files already written by an
    earlier (interrupted) run are kept, not written again."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not running in this process: call ray.init() or ray.init(address=...) first")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if not isinstance(model, ModelRef):
        model = identify(model, bits)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    n = len(texts)
    bounds = [n * i // n_shards for i in range(n_shards + 1)]
    rows = [{"shard": i, "start": bounds[i], "stop": bounds[i + 1]} for i in range(n_shards)]
    texts_ref = ray.put(list(texts))
    ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=n_shards)
    pool = ray.data.ActorPoolStrategy(size=concurrency or min(n_shards, 2))
    ds = ds.map_batches(
        _EncodeShard,
        batch_size=1,
        compute=pool,
        num_cpus=1,
        fn_constructor_kwargs=dict(
            texts_ref=texts_ref,
            out_dir=out_dir,
            model=model,
            batch_size=batch_size,
            n_shards=n_shards,
            threads=threads,
            lexical=lexical,
        ),
    )
    result = ds.take_all()
    encoded = {int(r["shard"]): int(r["encoded"]) for r in result}
    lexed = {int(r["shard"]): int(r["lexical"]) for r in result}
    paths = [shard_path(out_dir, i) for i in range(n_shards)]
    write_manifest(out_dir, paths, model.bits, model.to_metadata())
    return {
        "shards": paths,
        "encoded": encoded,
        "skipped": [i for i, c in encoded.items() if c == 0 and bounds[i + 1] > bounds[i]],
        "lexical": lexed,  # documents written to each shard's lexical file by this run
    }


def _same_documents(store: DocStore, docs: Sequence[Doc]) -> bool:
    """The docstore holds exactly ``docs``, each under its position (what build_sharded writes)."""
    if store.count() != len(docs):
        return False
    rows = store.db.execute("SELECT id, ext_id, title, text, meta FROM docs ORDER BY id")
    for (i, ext, title, text, meta), (n, d) in zip(rows, enumerate(docs), strict=True):
        if (i, str(ext), title or "", text, meta or "") != (n, d.ext_id, d.title or "", d.text, d.meta or ""):
            return False
    return True


def _built_shards(folder: str) -> int | None:
    """The shard count a folder was (being) built with: its manifest's, else that recorded in its
    shard files (an interrupted build); None when it holds neither, 0 when they do not say."""
    if os.path.exists(os.path.join(folder, MANIFEST)):
        return len(read_manifest(folder)[0])
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "shard-*.bne")))
    for path in found:
        try:
            with mapped.open(path) as idx:
                n = idx.metadata.get("shards")
        except (ValueError, OSError):  # a shard the resumed build writes again
            continue
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return 0 if found else None  # 0: shard files, none saying how many


def _check_same_build(folder: str, docs: Sequence[Doc], shards: int) -> None:
    """A rerun over a folder that holds a collection must be the same build resumed: the same
    documents (its docstore, written at the start, records them) and the same shard count;
    anything else would replace the collection, so it is refused in one line."""
    if not os.path.isdir(folder):
        return
    built = _built_shards(folder)
    try:
        store = DocStore(docstore_key(folder))
    except FileNotFoundError:
        store = None
    held = 0
    try:
        if store is not None:
            held = store.count()
            if held and not _same_documents(store, docs):
                raise CollectionError(
                    f"{folder} holds a collection of other documents ({held}, not these {len(docs)}); "
                    f"remove it first, or build into another folder"
                )
    finally:
        if store is not None:
            store.close()
    if built is not None and not held:
        raise CollectionError(f"{folder} holds shards without their documents; remove it first")
    if built and built != shards:
        raise CollectionError(
            f"{folder} was built with {built} shards, not {shards}; remove it first to split it differently"
        )


def build_sharded(
    folder: str | os.PathLike,
    docs: Iterable[Doc],
    *,
    shards: int,
    model: str | os.PathLike | ModelRef = "default",
    bits: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    ray_address: str | None = None,
    source: str = "the input",
) -> dict[str, Any]:
    """Encodes ``docs`` on a Ray cluster into ``shards`` shard files, a manifest and the folder's
    docstore (ids are the documents' positions). Shards written by an interrupted run are kept.
    A document whose id came earlier in ``docs`` is skipped. A folder that holds a collection is
    only resumed: other documents or another shard count there raise CollectionError (remove it
    first). Returns :func:`encode_shards`' summary
    plus ``documents`` and ``repeated`` (the skipped)."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CollectionError(f"{folder} exists and is not a folder (a sharded build writes a folder of shards)")
    ref = model if isinstance(model, ModelRef) else identify(model, bits)
    if os.path.exists(os.path.join(folder, MANIFEST)):
        _, m = read_manifest(folder)
        if not same_model(ModelRef.from_metadata(m.get("metadata", {}), m.get("bits")), ref):
            raise CollectionError(f"{folder} holds shards of another model or bit count; remove it first")
    docs = list(docs)
    if not docs:
        raise CollectionError(f"empty corpus: no documents in {source}")
    n_read = len(docs)
    firsts: dict[str, Doc] = {}
    for d in docs:  # one document per id, the first, as Collection.add keeps
        firsts.setdefault(d.ext_id, d)
    docs = list(firsts.values())
    _check_same_build(folder, docs, shards)
    start_ray(ray_address)
    os.makedirs(folder, exist_ok=True)
    store = DocStore(docstore_key(folder), create=True, lexical=False)  # the shards hold the lexical index
    try:
        if store.count() == 0:  # written first, in one transaction: it records what the folder is built from
            store.insert(range(len(docs)), docs)
            store.commit()
    finally:
        store.close()
    result = encode_shards(
        [doc_text(d.title, d.text) for d in docs],
        folder,
        n_shards=shards,
        model=ref,
        batch_size=batch_size,
        threads=threads,
    )
    if result["shards"]:  # the docstore gets the shards' permission bits, as beside an index file
        os.chmod(store.path, stat.S_IMODE(os.stat(result["shards"][0]).st_mode))
    result["documents"] = len(docs)
    result["repeated"] = n_read - len(docs)  # skipped: their id came earlier in the input
    return result
