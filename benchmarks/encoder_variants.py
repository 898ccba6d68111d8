"""Encoder variants on real passages, interleaved rounds: texts/s (median and best of the rounds),
CPU milliseconds per text (all threads; steadier than wall time on a shared machine) and the share
of code bits equal to the torch fp32 codes.

    HF_HUB_OFFLINE=1 python benchmarks/encoder_variants.py --n 256 --threads 2 --rounds 3 \\
        --variants torch-fp32,torch-bf16,onnx-fp32,openvino-fp32,openvino-bf16,sentence-transformers

Texts: the first N SciFact corpus passages (as `bne build` encodes them) from --data or $BNE_DATA.
A variant may name its own batch size after "@" (openvino-bf16@16); sentence-transformers keeps
--batch-size (its default 32).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--variants", default="torch-fp32,onnx-fp32,openvino-fp32,openvino-bf16,torch-bf16,sentence-transformers"
    )
    p.add_argument("--data", default=None)
    args = p.parse_args()

    import torch

    from bne.encoder.base import default_head, minilm_dir
    from bne.encoder.runtime import load
    from bne.training.data import load_beir

    torch.set_num_threads(args.threads)
    corpus, _, _ = load_beir("scifact", "test", args.data)  # texts as bne build encodes them
    texts = list(corpus.values())[: args.n]
    fns = {}
    for v in args.variants.split(","):
        name, _, bs = v.partition("@")
        batch_size = int(bs or args.batch_size)
        if name == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(minilm_dir()), device="cpu")
            st.max_seq_length = args.max_length
            fns[v] = lambda t, st=st: (None, st.encode(t, batch_size=args.batch_size, show_progress_bar=False))
            continue
        backend, precision, *hint = name.split("-")
        if hint:  # openvino-bf16-latency: the single-stream setting for comparison
            from bne.encoder.runtime import OpenVinoEncoder

            enc = OpenVinoEncoder.from_head(
                default_head(1024), threads=args.threads, precision=precision, hint=hint[0], quiet=True
            )
        else:
            enc = load(default_head(1024), backend=backend, precision=precision, threads=args.threads, quiet=True)
        enc.max_length = args.max_length
        fns[v] = lambda t, enc=enc, bs=batch_size: enc.encode(t, batch_size=bs, return_logits=True, show_progress=False)
    wall: dict[str, list[float]] = {v: [] for v in fns}
    cpu: dict[str, list[float]] = {v: [] for v in fns}
    out = {}
    for fn in fns.values():  # warm-up
        fn(texts[: args.batch_size])
    for _ in range(args.rounds):
        for v, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            out[v] = fn(texts)
            wall[v].append(time.perf_counter() - t)
            cpu[v].append(time.process_time() - c)
    ref = out["torch-fp32"][1] >= 0 if "torch-fp32" in out else None
    print(
        f"load average {os.getloadavg()[0]:.1f}; {len(texts)} SciFact passages, max_length {args.max_length}, "
        f"{args.threads} threads, {args.rounds} rounds"
    )
    print(f"{'variant':24s} {'median/s':>9s} {'best/s':>8s} {'cpu ms/text':>12s} {'bits = torch fp32':>18s}")
    for v in fns:
        eq = "-" if ref is None or out[v][0] is None else f"{np.mean((out[v][1] >= 0) == ref) * 100:.3f} %"
        print(
            f"{v:24s} {len(texts) / np.median(wall[v]):9.1f} {len(texts) / min(wall[v]):8.1f} "
            f"{np.median(cpu[v]) / len(texts) * 1e3:12.1f} {eq:>18s}"
        )


if __name__ == "__main__":
    main()
