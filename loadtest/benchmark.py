"""`python manage.py benchmark`: the raw model ceiling and the real server, in one run.

1. Times the compiled forward pass in this process (no HTTP) at batch 1 and the max batch.
2. Starts gunicorn with the shipped gunicorn.conf.py and random weights on loopback, with
   a throwaway SQLite database (or DATABASE_URL), and times its cold start to ready.
3. Drives closed-loop load with multipart uploads of generated JPEGs at each concurrency,
   bounded in requests and in time, and prints one table. At one client the sizes take
   turns in one step, so the latencies the targets compare are measured side by side. The
   steps named by `--bracket` take their ratio against the ceiling re-measured right
   before and after them.

All traffic goes to 127.0.0.1. Nothing is downloaded. The tables are `report`'s.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from django.conf import settings

from classifier.engines.hardware import available_cpus
from classifier.model import INPUT_SIZE

from . import report
from .load import LoadResult, drive, parse_sizes, plan, upload, v2_image, v2_pixels
from .server import add_server_env_argument, command_server

HELP = "Measure the model's raw speed and the served speed of a real gunicorn, side by side."


def add_arguments(parser) -> None:
    parser.add_argument(
        "--engines",
        default="tensorflow:fp32,openvino:fp32,openvino:bf16",
        help="engine:precision, comma-separated, measured one after the other",
    )
    parser.add_argument("--concurrency", default="1,4,16,32", help="comma-separated")
    parser.add_argument("--sizes", default="500x375,4000x3000", help="JPEG sizes, WxH")
    parser.add_argument("--requests", type=int, default=240, help="per step, at most")
    parser.add_argument("--seconds", type=float, default=7.0, help="per step, at most")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--raw-repeats", type=int, default=20)
    parser.add_argument(
        "--bracket",
        default="16,32",
        help="concurrencies whose steps (first size) get the ceiling re-measured right "
        "before and after them, for their ratio (empty: none)",
    )
    parser.add_argument(
        "--overload",
        type=int,
        default=64,
        help="concurrency of the overload step against a small queue (0: skip)",
    )
    parser.add_argument("--overload-queue", type=int, default=8, help="CLASSIFIER_MAX_QUEUE")
    parser.add_argument(
        "--explain",
        default="16",
        help="concurrencies at which the first size is also sent with explain=1 (each "
        "answer carries its activation map), beside the same without (empty: none)",
    )
    parser.add_argument(
        "--v2",
        default="1,16",
        help="concurrencies at which the first size also goes through the Open Inference "
        "Protocol (`image` and `pixels` inputs, binary), beside multipart /predict "
        "(empty: none)",
    )
    add_server_env_argument(parser)


def run(options: dict, out) -> None:
    """The benchmark with `options` (as `add_arguments` parses them), printed to `out`."""
    Benchmark(out).run(**options)


class Benchmark:
    def __init__(self, out) -> None:
        self.out = out

    def run(self, **options):
        concurrencies = [int(c) for c in options["concurrency"].split(",")]
        sizes = parse_sizes(options["sizes"])
        engines = [tuple(e.split(":")) for e in options["engines"].split(",")]
        bracket = {int(c) for c in options["bracket"].split(",") if c.strip()}
        v2_concurrencies = [int(c) for c in options["v2"].split(",") if c.strip()]
        explain_concurrencies = [int(c) for c in options["explain"].split(",") if c.strip()]
        started = time.monotonic()

        with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
            tmp = Path(tmp)
            raws, models = self.raw_ceilings(engines, options, ir_dir=tmp / "ir")
            results = []
            for engine, precision in engines:
                model = models[f"{engine}:{precision}"]
                env = [
                    *options["server_env"],
                    f"CLASSIFIER_ENGINE={engine}",
                    f"CLASSIFIER_PRECISION={precision}",
                ]
                if engine == "openvino":  # as deployed: a saved IR, no conversion at start
                    env.append(f"CLASSIFIER_OPENVINO_IR={tmp / 'ir'}")
                server = command_server(tmp / f"{engine}-{precision}", env)
                try:
                    cold = server.boot()
                    self.out.write(
                        f"{engine} {precision}: gunicorn cold start to ready {cold:.1f} s"
                    )
                    uploads = {size: upload(*size) for size in sizes}
                    steps: list[LoadResult] = []
                    ceiling = None  # the last re-measured one, if just measured
                    for concurrency, step_sizes in plan(sizes, concurrencies):
                        bracketed = concurrency in bracket and sizes[0] in step_sizes
                        if bracketed and ceiling is None:
                            ceiling = ceiling_now(model, options["max_batch"])
                        step = self.step(
                            server, [uploads[size] for size in step_sizes], options, concurrency
                        )
                        if bracketed:
                            after = ceiling_now(model, options["max_batch"])
                            step[0].ceilings = [ceiling, after]
                            ceiling = after
                        else:
                            ceiling = None
                        steps += step
                    # The table shows each size's steps together, in order of clients.
                    labels = [p.label for p in uploads.values()]
                    steps.sort(key=lambda r: (labels.index(r.label), r.concurrency))
                    for concurrency in explain_concurrencies:
                        steps += self.explained(server, sizes[0], options, concurrency)
                    for concurrency in v2_concurrencies:
                        steps += self.protocols(server, sizes[0], options, concurrency)
                    for result in steps:
                        result.engine = f"{engine}:{precision}"
                    results += steps
                finally:
                    server.stop()

        self.out.write(report.table(results, raws))
        self.out.write(report.drift(results, raws))
        self.out.write(report.profile(results))
        self.out.write(report.comparison(results))
        self.out.write(report.protocol_comparison(results))
        if options["overload"]:
            self.overload(options, sizes[0], engines[0])
        self.out.write(f"\nBenchmark took {time.monotonic() - started:.0f} s.")

    def step(self, server, uploads, options, concurrency) -> list[LoadResult]:
        before, started, cpu = server.batching(), time.monotonic(), server.cpu_seconds()
        results = drive(
            server.url,
            uploads,
            concurrency=concurrency,
            max_requests=max(options["requests"], concurrency * 4) * len(uploads),
            max_seconds=options["seconds"] * len(uploads),
        )
        after, elapsed = server.batching(), time.monotonic() - started
        cpu_share = (server.cpu_seconds() - cpu) / elapsed / available_cpus()
        batches = after["batches"] - before["batches"]
        images = after["images"] - before["images"]
        in_passes = after["pass_seconds"] - before["pass_seconds"]
        peak_rss = server.peak_rss_mib()
        for result in results:
            if batches:
                result.mean_batch = images / batches
                result.busy = in_passes / elapsed
                result.pass_ms_per_image = in_passes * 1000 / images
            result.peak_rss_mib = peak_rss
            result.cpu_share = cpu_share
        labels = " and ".join(p.label for p in uploads)
        self.out.write(f"  done {labels} c={concurrency}", ending="\r")
        return results

    def protocols(self, server, size, options, concurrency) -> list[LoadResult]:
        """The same JPEG through multipart /predict, then as v2 `image` (the file, binary
        BYTES) and v2 `pixels` (decoded and preprocessed by the client, binary FP32), one
        step each, one after the other."""
        results = []
        for payload in (upload(*size), v2_image(*size), v2_pixels(*size)):
            label = "predict" if payload.path == "/predict" else payload.label
            payload = dataclasses.replace(payload, label=label)
            results += self.step(server, [payload], options, concurrency)
        return results

    def explained(self, server, size, options, concurrency) -> list[LoadResult]:
        """The same JPEG to /predict without and with explain=1, one step each."""
        plain = dataclasses.replace(upload(*size), label="predict")
        explained = dataclasses.replace(plain, label="explain=1", path="/predict?explain=1")
        return [
            *self.step(server, [plain], options, concurrency),
            *self.step(server, [explained], options, concurrency),
        ]

    def raw_ceilings(self, engines, options, *, ir_dir: Path) -> tuple[dict, dict]:
        """Each engine's compiled forward pass, in this process, on the same weights:
        its figures and the engine (kept to re-measure the ceiling around steps)."""
        from classifier.engines.openvino import OpenVINOEngine, export_ir
        from classifier.engines.tensorflow import TensorFlowEngine

        threads = settings.CLASSIFIER_THREADS or None
        reference = TensorFlowEngine(weights="random", threads=threads)
        if any(engine == "openvino" for engine, _ in engines):
            export_ir(reference.model, "random", ir_dir)
        raws, models = {}, {}
        for engine, precision in engines:
            if engine == "tensorflow" and precision == "fp32":
                model = reference
            elif engine == "tensorflow":
                model = TensorFlowEngine(weights="random", precision=precision, threads=threads)
            else:
                model = OpenVINOEngine(
                    weights="random", precision=precision, threads=threads, ir_path=str(ir_dir)
                )
            raw = time_forward(model, options["max_batch"], options["raw_repeats"])
            raws[f"{engine}:{precision}"] = raw
            models[f"{engine}:{precision}"] = model
            self.out.write(
                f"Raw forward pass, {engine} {model.info.precision} (this process, no HTTP): "
                f"batch 1 {raw['b1_ms']:.1f} ms median ({1000 / raw['b1_ms']:.1f} img/s); "
                f"batch {options['max_batch']} {raw['bmax_ips']:.1f} img/s"
            )
        return raws, models

    def overload(self, options, size, engine) -> None:
        """More clients than the queue admits: expect 200s and fast 503s, nothing else."""
        queue = options["overload_queue"]
        env = [
            *options["server_env"],
            f"CLASSIFIER_MAX_QUEUE={queue}",
            f"CLASSIFIER_ENGINE={engine[0]}",
            f"CLASSIFIER_PRECISION={engine[1]}",
        ]
        with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
            server = command_server(Path(tmp), env)
            try:
                server.boot()
                [result] = drive(
                    server.url,
                    [upload(*size)],
                    concurrency=options["overload"],
                    max_requests=options["overload"] * 200,
                    max_seconds=options["seconds"],
                )
                ready = requests.get(f"{server.url}/readyz", timeout=10).status_code
            finally:
                server.stop()
        rejected = result.error_latencies.get(503, [])
        other = {k: v for k, v in result.errors.items() if k != 503}
        p50_503, p99_503, max_503 = (
            (np.percentile(rejected, [50, 99]) * 1000).tolist() + [max(rejected) * 1000]
            if rejected
            else [0.0, 0.0, 0.0]
        )
        self.out.write(
            f"\nOverload ({engine[0]} {engine[1]}): {options['overload']} clients, "
            f"CLASSIFIER_MAX_QUEUE={queue}, "
            f"{result.label}: {len(result.latencies)} x 200 ({result.throughput:.1f} img/s, "
            f"p50 {result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms), "
            f"{len(rejected)} x 503 (p50 {p50_503:.0f} ms, p99 {p99_503:.0f} ms, max "
            f"{max_503:.0f} ms), other errors "
            f"{other or 0}; /readyz afterwards: {ready}"
        )


def time_forward(engine, max_batch: int, repeats: int) -> dict:
    one = random_batch(1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.predict(one)
        times.append(time.perf_counter() - t)
    engine.predict(random_batch(max_batch))  # first call at this size allocates
    return {
        "b1_ms": statistics.median(times) * 1000,
        "bmax_ips": ceiling_now(engine, max_batch, rounds=max(3, repeats // 5)),
    }


def ceiling_now(engine, max_batch: int, rounds: int = 2) -> float:
    """The engine's batch-max throughput now (at the start of the run, and again around
    the `--bracket` steps while the server idles: this machine's speed drifts within a
    minute, so a step's ratio is taken against the ceiling measured around it)."""
    big = random_batch(max_batch)
    started = time.perf_counter()
    for _ in range(rounds):
        engine.predict(big)
    return rounds * max_batch / (time.perf_counter() - started)


def random_batch(size: int) -> np.ndarray:
    """Model input in the caffe range; its values do not change the forward pass's cost."""
    rng = np.random.default_rng(size)
    return rng.uniform(-120, 150, (size, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
