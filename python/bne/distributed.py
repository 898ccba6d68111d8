"""Scale-out on Ray: sharded search and distributed index builds. Shard files and manifests
without Ray are :mod:`bne.shards` (their names are re-exported here).

* :class:`ShardedIndex` starts one Ray actor per shard file; each maps its file once. ``search``
  scatters the queries to every shard and merges the per-shard top-k under the single-node tie
  rule (distance, then global position), so results equal a search over the union of the shards.
  Dead actors are restarted and the call retried; a shard that stays down raises
  :class:`ShardUnavailableError` naming it, unless the caller asks for partial results.
* :func:`build_sharded` (``bne build --ray``) writes a folder's docstore and encodes the corpus
  with Ray Data ``map_batches``, one shard per task, skipping shards already written, so a failed
  build resumes where it stopped.

Needs ``pip install 'bne[ray]'`` and a running Ray (``ray.init()`` or ``ray.init(address=...)``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import index as bindex
from . import mapped, storage
from .codes import check_codes, check_k
from .corpus import Doc, doc_text
from .docstore import DocStore
from .errors import CollectionError, ShardUnavailableError
from .models import ModelRef, identify, same_model
from .shards import MANIFEST, docstore_key, read_manifest, shard_done, shard_index, shard_path, write_manifest

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

        def info(self) -> dict[str, Any]:
            return {
                "count": self.index.npositions,
                "bits": self.index.bits,
                "node": self.node,
                "pid": os.getpid(),
                "base": self.index.metadata.get("base"),
            }

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

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


# -- distributed build --------------------------------------------------------------------------


class _EncodeShard:
    """Ray Data UDF: each batch row is one shard (start, stop); encodes and writes it."""

    def __init__(
        self, texts_ref, out_dir: str, model: ModelRef, batch_size: int, n_shards: int, threads: int | None
    ) -> None:
        import ray

        from .models import load  # the encoder runs on the Ray workers only

        self.texts = ray.get(texts_ref) if isinstance(texts_ref, ray.ObjectRef) else texts_ref
        self.out_dir, self.bits, self.model = out_dir, model.bits, model
        self.batch_size, self.n_shards = batch_size, n_shards
        # each worker encodes about one shard: a small shard does not wait for an int8 quantisation
        per_shard = -(-len(self.texts) // max(n_shards, 1))
        self.encoder = load(model, threads=threads, purpose="bulk", quiet=True, docs=per_shard)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
            path = shard_path(self.out_dir, int(shard))
            if shard_done(path, int(stop - start), self.model):
                done.append(0)
                continue
            codes = self.encoder.encode(
                self.texts[int(start) : int(stop)], batch_size=self.batch_size, show_progress=False
            )
            ids = np.arange(int(start), int(stop), dtype=np.int64)
            header = storage.new_header(
                self.bits,
                metadata={
                    **self.model.to_metadata(),
                    "shard": int(shard),
                    "shards": self.n_shards,
                    "base": int(start),
                },
            )
            storage.save_atomic(path, header, [(codes, ids)], int(stop) - 1)
            done.append(int(stop - start))
        return {"shard": np.asarray(batch["shard"]), "encoded": np.asarray(done)}


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
) -> dict[str, Any]:
    """Encodes ``texts`` on the Ray cluster (Ray Data ``map_batches``, one shard per task) into
    ``n_shards`` shard files plus a manifest in ``out_dir``; ids are the texts' positions.
    Shards already written by an earlier (interrupted) run are kept, not re-encoded."""
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
        ),
    )
    result = ds.take_all()
    encoded = {int(r["shard"]): int(r["encoded"]) for r in result}
    paths = [shard_path(out_dir, i) for i in range(n_shards)]
    write_manifest(out_dir, paths, model.bits, model.to_metadata())
    return {
        "shards": paths,
        "encoded": encoded,
        "skipped": [i for i, c in encoded.items() if c == 0 and bounds[i + 1] > bounds[i]],
    }


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
    Returns :func:`encode_shards`' summary plus ``documents``."""
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
    start_ray(ray_address)
    os.makedirs(folder, exist_ok=True)
    store = DocStore(docstore_key(folder), create=True)
    try:
        if store.count() != len(docs):  # (re)write the docstore: ids are the documents' positions
            store.delete_above(-1)
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
    return result
