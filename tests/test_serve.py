"""`lio serve` for real: PyPI's bundled tritonserver on free loopback ports, raw image bytes in, checked
against the pipeline's offline answers; load with dynamic batching, hostile requests, a killed worker,
SIGTERM with requests in flight, a changed model file, the doc's client snippet and the deployer's path
through a DVC remote. Skipped, with the reason, where the bundled server cannot run."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import paths
from pipeline.data.manifest import read_manifest
from pipeline.deploy.onnx_runtime import read_meta
from pipeline.deploy.preprocess import preprocess
from pipeline.serve.candidates import candidate
from pipeline.serve.repository import CLASSIFIER, write_cpu_repository
from pipeline.serve.server import ServerUnavailable, bundle

http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")

try:
    bundle()
except ServerUnavailable as e:
    pytest.skip(f"the bundled Triton server cannot run here: {e}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
CANDIDATE = "onnxruntime-int8_cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Serving:
    process: subprocess.Popen
    http: str
    grpc: str
    output: list[str]
    repository: Path


def served_graph(serving: Serving) -> Path:
    return serving.repository / CLASSIFIER / "1" / "model.onnx"


def launch(repository: Path, cwd: Path = ROOT, timeout: float = 90) -> Serving:
    """`lio serve` in a subprocess, returned once it printed that it is ready."""
    ports = [free_port() for _ in range(3)]
    args = ["--repository", str(repository), "--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    process = subprocess.Popen(
        [sys.executable, "-m", "stages", "serve", *args, "--metrics-port", str(ports[2]), "--exit-timeout", "5"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("models:"):
            os.set_blocking(process.stdout.fileno(), False)
            return Serving(process, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", output, repository)
    process.kill()
    raise AssertionError("lio serve did not become ready:\n" + "".join(output))


def stop(serving: Serving, timeout: float = 30) -> int:
    serving.process.send_signal(signal.SIGTERM)
    return serving.process.wait(timeout)


def printed(serving: Serving) -> str:
    assert serving.process.stdout is not None
    serving.output += serving.process.stdout.readlines()
    return "".join(serving.output)


@pytest.fixture(scope="session")
def repository(exported, tmp_path_factory) -> Path:
    graph = exported / paths.ONNX["int8_cpu"]
    meta = read_meta(graph)
    out = tmp_path_factory.mktemp("serve") / "triton_cpu"
    write_cpu_repository(out, graph, CANDIDATE, meta.preprocess, meta.classes, 8)
    return out


@pytest.fixture(scope="session")
def images(exported) -> list[Path]:
    rows, _ = read_manifest(exported / paths.PREPARED)
    return [Path(r.path) for r in rows if r.split in ("test", "gate")]


@pytest.fixture(scope="session")
def offline(repository, images) -> np.ndarray:
    """The pipeline's own answer for each image: its preprocessing, the same graph on the same runtime."""
    graph = repository / CLASSIFIER / "1" / "model.onnx"
    meta = read_meta(graph)
    run = candidate(CANDIDATE).open(graph).run
    return np.concatenate([run(preprocess(p, meta.preprocess)) for p in images])


@pytest.fixture(scope="session")
def served(repository):
    """One `lio serve` per pytest-xdist worker that runs these tests (a session fixture)."""
    serving = launch(repository)
    yield serving
    stop(serving)


def ask_http(url: str, raw: bytes, k: int = 1):
    client = http.InferenceServerClient(url, network_timeout=30)
    inp = http.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[raw]], dtype=object))
    result = client.infer("lio", [inp], outputs=[http.InferRequestedOutput("LOGITS", class_count=k)])
    return [s.decode().split(":") for s in result.as_numpy("LOGITS").reshape(-1)]


def test_every_image_gets_the_offline_top1_over_http_and_grpc(served, images, offline):
    client = grpc.InferenceServerClient(served.grpc)
    for path, logits in zip(images, offline):
        raw = path.read_bytes()
        score, index, label = ask_http(served.http, raw)[0]
        inp = grpc.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[raw]], dtype=object))
        out = grpc.InferRequestedOutput("LOGITS", class_count=1)
        over_grpc = client.infer("lio", [inp], outputs=[out]).as_numpy("LOGITS").reshape(-1)[0].decode().split(":")
        assert int(index) == int(over_grpc[1]) == int(logits.argmax()), path
        assert abs(float(score) - float(logits.max())) < 1e-4


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(served, images, offline, repository):
    """16 threads of tensor-in requests (dynamic batching merges them): every answer is its own request's."""
    meta = read_meta(repository / CLASSIFIER / "1" / "model.onnx")
    pixels = [preprocess(p, meta.preprocess) for p in images]

    def worker(k: int) -> list[tuple[int, np.ndarray]]:
        client = grpc.InferenceServerClient(served.grpc)
        got = []
        for i in range(k, len(pixels) * 2, 16):
            inp = grpc.InferInput("input", [1, *pixels[i % len(pixels)].shape[1:]], "FP32")
            inp.set_data_from_numpy(pixels[i % len(pixels)])
            got.append((i % len(pixels), client.infer(CLASSIFIER, [inp]).as_numpy("logits")[0]))
        return got

    with ThreadPoolExecutor(16) as pool:
        answers = [a for part in pool.map(worker, range(16)) for a in part]
    assert len(answers) == len(pixels) * 2  # none lost
    for i, logits in answers:  # none swapped: each equals its own image's offline logits
        np.testing.assert_allclose(logits, offline[i], atol=1e-4)
    stats = http.InferenceServerClient(served.http).get_inference_statistics(CLASSIFIER)["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"], "dynamic batching ran some requests together"


def png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def hostile(raw: bytes) -> dict[str, tuple[str, str, object, str, str]]:
    """name -> (model, input name, array, datatype, what the error message must say)"""

    def image(b: bytes) -> np.ndarray:
        return np.array([[b]], dtype=object)

    return {
        "wrong dtype": ("lio", "IMAGE", np.zeros((1, 1), np.float32), "FP32", "data-type is 'FP32'"),
        "wrong shape": ("lio", "IMAGE", np.array([[raw, raw]], dtype=object), "BYTES", "unexpected shape"),
        "empty bytes": ("lio", "IMAGE", image(b""), "BYTES", "empty: 0 bytes"),
        "not an image": ("lio", "IMAGE", image(b"GET / HTTP/1.1"), "BYTES", "cannot decode image"),
        "truncated PNG": ("lio", "IMAGE", image(raw[: len(raw) // 2]), "BYTES", "truncated image data"),
        "30000 x 30000 PNG": ("lio", "IMAGE", image(png(30000, 30000)), "BYTES", "over the limit of 89,478,485"),
        "64 MB body": ("lio", "IMAGE", image(b"\0" * (64 << 20)), "BYTES", "bytes, over the limit"),
        "batch over max": ("lio", "IMAGE", np.array([[raw]] * 9, dtype=object), "BYTES", "batch-size must be <= 8"),
        "unknown model": ("lio_nope", "IMAGE", image(raw), "BYTES", "unknown model"),
        "unknown input": ("lio", "PICTURE", image(raw), "BYTES", "unexpected inference input 'PICTURE'"),
    }


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def server_memory_mib(serving: Serving) -> float:
    """Resident memory of `lio serve`'s tritonserver and its stubs."""
    total = 0
    for server in children(serving.process.pid):
        for pid in (server, *children(server)):
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
            total += int(line.split()[1])
    return total / 1024


def post(url: str, model: str, inputs) -> tuple[int, str, float]:
    """One inference over HTTP with the body built beforehand by tritonclient's own encoder and sent by
    its own connection, so that the seconds are the server's answer, not the client's encoding:
    (status, message, seconds)."""
    import json

    client = http.InferenceServerClient(url, network_timeout=30)
    body, json_size = client.generate_request_body(inputs)
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    start = time.perf_counter()
    response = client._post(f"v2/models/{model}/infer", body, headers, None)  # what client.infer sends
    seconds = time.perf_counter() - start
    text = response.read().decode()
    return response.status_code, json.loads(text).get("error", "") if text else "", seconds


def test_hostile_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_answering(served, images, offline):
    raw = images[0].read_bytes()
    before = server_memory_mib(served)
    for name, (model, tensor, array, dtype, says) in hostile(raw).items():
        inp = http.InferInput(tensor, list(array.shape), dtype)
        inp.set_data_from_numpy(array, binary_data=True)
        status, message, seconds = post(served.http, model, [inp])
        assert status in (400, 404), (name, status, message)
        assert says in message, (name, message)
        # answered, never hung; how fast is a benchmark's question (docs/measured.md: under 0.6 s for 64 MB, the
        # others under 30 ms on an idle 2-core Xeon), not a timed test's beside the rest of the suite
        assert seconds < 5.0, (name, seconds)
        assert int(ask_http(served.http, raw)[0][1]) == int(offline[0].argmax()), name
    after = server_memory_mib(served)
    print(f"server memory across the hostile set: {before:.0f} -> {after:.0f} MiB")
    assert after < before * 1.5


def test_a_killed_worker_is_replaced_and_requests_in_the_gap_fail_fast(served, images, offline):
    raw, want = images[0].read_bytes(), int(offline[0].argmax())
    (server,) = children(served.process.pid)
    worker = next(p for p in children(server) if f"/{CLASSIFIER}/" in Path(f"/proc/{p}/cmdline").read_text())
    os.kill(worker, signal.SIGKILL)
    start, answered = time.monotonic(), None
    while time.monotonic() - start < 30:
        asked = time.monotonic()
        try:
            answered = int(ask_http(served.http, raw)[0][1])
            break
        except Exception:  # connection errors and 500s while it restarts
            assert time.monotonic() - asked < 5, "a request in the gap hung"
            time.sleep(0.2)
    assert answered == want, f"no right answer within 30 s of the kill:\n{printed(served)}"
    assert "restarting the server" in printed(served)
    assert http.InferenceServerClient(served.http).is_model_ready("lio")


def test_a_changed_model_file_is_refused_at_start_naming_it(repository, tmp_path):
    import shutil

    copy = tmp_path / "triton_cpu"
    shutil.copytree(repository, copy)
    graph = copy / CLASSIFIER / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated
    result = subprocess.run(
        [sys.executable, "-m", "stages", "serve", "--repository", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(graph) in line and "changed on disk" in line


def test_the_client_snippet_in_docs_deploy_runs_verbatim(served, images, offline, tmp_path):
    doc = (ROOT / "docs/deploy.md").read_text()
    snippet = re.search(r"<!-- client snippet -->\n```python\n(.*?)```", doc, re.S)
    assert snippet, "docs/deploy.md lost its client snippet"
    script = tmp_path / "client.py"
    script.write_text(snippet[1])
    result = subprocess.run(
        [sys.executable, str(script), str(images[0])],
        capture_output=True,
        text=True,
        env={**os.environ, "TRITON_URL": served.http},
    )
    assert result.returncode == 0, result.stderr
    classes = read_meta(served_graph(served)).classes
    assert result.stdout.split()[0] == classes[int(offline[0].argmax())]


def test_the_repository_travels_through_a_dvc_remote_into_a_fresh_clone_and_serves(
    repository, images, offline, tmp_path
):
    """The deployer's path (docs/deploy.md): dvc push where it was made, git clone and dvc pull on the serving
    machine, lio serve there; the repository is tracked as the triton stage tracks it (a DVC output)."""
    import shutil

    def run(*args: str, cwd: Path) -> str:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    made, remote, clone = tmp_path / "made", tmp_path / "remote", tmp_path / "clone"
    made.mkdir()
    run("git", "init", "-q", cwd=made)
    run("dvc", "init", "-q", cwd=made)
    shutil.copytree(repository, made / "models/triton_cpu")
    run("dvc", "add", "-q", "models/triton_cpu", cwd=made)
    run("dvc", "remote", "add", "-d", "store", str(remote), cwd=made)
    run("git", "add", "-A", cwd=made)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "model", cwd=made)
    run("dvc", "push", "-q", cwd=made)
    run("git", "clone", "-q", str(made), str(clone), cwd=tmp_path)
    assert not (clone / "models/triton_cpu").exists()
    run("dvc", "pull", "-q", cwd=clone)
    serving = launch(clone / "models/triton_cpu", cwd=clone)
    try:
        answer = ask_http(serving.http, images[0].read_bytes())
    finally:
        stop(serving)
    assert int(answer[0][1]) == int(offline[0].argmax())


def test_sigterm_lets_requests_in_flight_finish_or_fail_and_exits(repository, images):
    serving = launch(repository)
    raw = images[0].read_bytes()

    def one(_) -> str:
        try:
            ask_http(serving.http, raw)
            return "answered"
        except Exception:
            return "error"

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        time.sleep(0.3)
        start = time.monotonic()
        serving.process.send_signal(signal.SIGTERM)
        code = serving.process.wait(30)
        outcomes = [f.result(timeout=30) for f in futures]  # none hangs
    assert code == 0 and time.monotonic() - start < 20
    assert set(outcomes) <= {"answered", "error"} and "answered" in outcomes
    assert "stopped" in printed(serving)
