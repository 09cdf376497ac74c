"""Load on the real Triton server (`lio serve`'s, PyPI's bundled tritonserver) from tritonclient's gRPC
client, beside the in-process throughput of the same graph and runtime, in one run on this machine's CPU
(perf_analyzer's wheel needs glibc 2.38, so this is the load generator here).

    dvc repro && python benchmarks/serve.py [--requests 1000] [--json reports/serving.json]
    python benchmarks/serve.py --soak 20000 --processes 2 --concurrency 16

Two paths, batch-1 requests at concurrency 1, 2, 4, 8 and 16: the classifier alone (`lio_cpu`, the
model's float32 input in) and the ensemble (`lio`, PNG bytes in: decoding and preprocessing run in the
server). Every answer is checked against its own request's image (offline top-1 of the same graph and
runtime): errors, lost and swapped answers are counted. Scope: bytes in, labels out, the client on the
same 2 cores as the server. Goal: the classifier alone at concurrency 8 >= 0.8x in-process at batch 8.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.artifacts.runtime import LoadLevel, ServingLoad  # noqa: E402
from pipeline.core import markdown, paths  # noqa: E402
from pipeline.core.machine import cpu, threads  # noqa: E402
from pipeline.evaluate.serving import COLUMNS  # noqa: E402  (the report's table, printed here first)

LEVELS = (1, 2, 4, 8, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(repository: Path, images: int) -> tuple[list[bytes], np.ndarray, np.ndarray, str]:
    """Test images as PNG bytes, their preprocessed tensors, their offline top-1 (same graph, same runtime)."""
    from pipeline.data.manifest import read_manifest
    from pipeline.deploy.onnx_runtime import read_meta
    from pipeline.deploy.preprocess import preprocess
    from pipeline.serve.candidates import candidate
    from pipeline.serve.repository import CLASSIFIER, read_repository

    served = read_repository(repository)
    graph = repository / CLASSIFIER / "1" / "model.onnx"
    meta = read_meta(graph)
    rows = [r for r in read_manifest(paths.PREPARED)[0] if r.split == "test"][:images]
    raw = [Path(r.path).read_bytes() for r in rows]
    pixels = np.concatenate([preprocess(b, meta.preprocess) for b in raw])
    run = candidate(served.candidate).open(graph).run
    top1 = np.concatenate([run(pixels[i : i + 8]) for i in range(0, len(pixels), 8)]).argmax(1)
    return raw, pixels, top1, served.candidate


def in_process(repository: Path, pixels: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    from pipeline.serve.candidates import candidate
    from pipeline.serve.repository import CLASSIFIER, read_repository

    run = candidate(read_repository(repository).candidate).open(repository / CLASSIFIER / "1" / "model.onnx").run
    x = np.resize(pixels, (batch, *pixels.shape[1:]))
    run(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(x)
        done += batch
    return done / (time.perf_counter() - start)


def request(client, model: str, item, tensor_name: str):
    """One batch-1 inference; returns the top-1 index."""
    import tritonclient.grpc as grpc

    if model == "lio":
        inp = grpc.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[item]], dtype=object))
        out = grpc.InferRequestedOutput("LOGITS", class_count=1)
        result = client.infer(model, [inp], outputs=[out], client_timeout=30)
        return int(result.as_numpy("LOGITS").reshape(-1)[0].decode().split(":")[1])
    inp = grpc.InferInput(tensor_name, list(item[None].shape), "FP32")
    inp.set_data_from_numpy(item[None])
    result = client.infer(model, [inp], client_timeout=30)
    return int(result.as_numpy(result.get_response().outputs[0].name).argmax())


def level(url: str, model: str, items: list, expected: np.ndarray, concurrency: int, n: int, tensor: str) -> dict:
    """`n` requests from `concurrency` threads, each with its own client; every answer checked."""
    import tritonclient.grpc as grpc

    clients = [grpc.InferenceServerClient(url) for _ in range(concurrency)]
    latencies: list[float] = []
    errors, swapped = [], 0

    def worker(k: int) -> None:
        nonlocal swapped
        for i in range(k, n, concurrency):
            start = time.perf_counter()
            try:
                got = request(clients[k], model, items[i % len(items)], tensor)
            except Exception as e:  # counted, named below
                errors.append(str(e).splitlines()[0][:120])
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            swapped += int(got != expected[i % len(items)])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - start
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if latencies else (float("nan"),) * 3
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": n,
        "answered": len(latencies),
        "errors": len(errors),
        "lost": n - len(latencies) - len(errors),
        "swapped": swapped,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "req_s": len(latencies) / wall,
        "first_error": errors[0] if errors else None,
    }


def server_memory_mib(server) -> float:
    """Resident memory of tritonserver and its stub processes."""
    pids = [server.process.pid, *server.stubs()]
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        if status.exists():
            line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmRSS"))
            total += int(line.split()[1])
    return total / 1024


def soak_worker(args) -> dict:
    url, raw, expected, concurrency, n = args
    return level(url, "lio", raw, expected, concurrency, n, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=paths.TRITON_CPU)
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the rows here (the report renders reports/serving.json)")
    parser.add_argument("--soak", type=int, default=0, help="instead: this many bytes-in requests")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    from pipeline.serve.repository import CLASSIFIER
    from pipeline.serve.server import Ports, Server

    raw, pixels, expected, name = workload(args.repository, args.images)
    tensor = _input_name(args.repository)
    machine, flags = cpu()
    print(f"{machine} ({', '.join(flags)}), {threads()} threads; {args.repository} serving {name}", flush=True)
    server = Server(args.repository, Ports("127.0.0.1", free_port(), free_port(), free_port()))
    server.start()
    try:
        url = server.ports.grpc_url
        if args.soak:
            return soak(server, url, raw, expected, args)
        local = in_process(args.repository, pixels, 8)
        rows = []
        for model, items in ((CLASSIFIER, list(pixels)), ("lio", raw)):
            for c in LEVELS:
                rows.append(level(url, model, items, expected, c, args.requests, tensor))
                print(_line(rows[-1], local), flush=True)
    finally:
        server.close()
    print(f"\nin process, {name}, batch 8: {local:.0f} img/s\n")
    print(markdown.table([{**r, "vs": f"{r['req_s'] / local:.2f}x"} for r in rows], COLUMNS))
    if args.json:
        levels = [LoadLevel(**r) for r in rows]
        ServingLoad(f"{machine} ({', '.join(flags)})", name, local, levels).save(args.json)


def soak(server, url: str, raw: list[bytes], expected: np.ndarray, args) -> None:
    before = server_memory_mib(server)
    per = args.soak // args.processes
    jobs = [(url, raw, expected, args.concurrency // args.processes, per) for _ in range(args.processes)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        parts = pool.map(soak_worker, jobs)
    wall = time.perf_counter() - start
    after = server_memory_mib(server)
    total = {k: sum(p[k] for p in parts) for k in ("requests", "answered", "errors", "lost", "swapped")}
    p99 = statistics.median(p["p99_ms"] for p in parts)
    print(
        f"soak: {total['requests']} requests from {args.processes} processes at concurrency {args.concurrency} in "
        f"{wall:.0f} s: answered {total['answered']}, errors {total['errors']}, lost {total['lost']}, swapped "
        f"{total['swapped']}; p99 {p99:.1f} ms; server memory {before:.0f} -> {after:.0f} MiB "
        f"({100 * (after / before - 1):+.1f}%)"
    )


def _line(r: dict, local: float) -> str:
    return (
        f"{r['model']} c={r['concurrency']}: {r['req_s']:.0f} req/s ({r['req_s'] / local:.2f}x in-process), p50 "
        f"{r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms, errors {r['errors']}, swapped {r['swapped']}"
        + (f" ({r['first_error']})" if r["first_error"] else "")
    )


def _input_name(repository: Path) -> str:
    from pipeline.serve.repository import CLASSIFIER

    text = (repository / CLASSIFIER / "config.pbtxt").read_text()
    return text.split("input [", 1)[1].split('name: "', 1)[1].split('"', 1)[0]


if __name__ == "__main__":
    main()
