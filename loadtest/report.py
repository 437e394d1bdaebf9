"""The benchmark's report: its table, the ceilings re-measured around steps, where a
request's time went, and the comparisons between engines and protocols."""

from __future__ import annotations

from .load import LoadResult


def protocol_comparison(results: list[LoadResult]) -> str:
    last = {}  # (engine, clients) -> the latest /predict step before this one
    lines = [""]
    for r in results:
        if r.label == "predict":
            last[(r.engine, r.concurrency)] = r
            continue
        predict = last.get((r.engine, r.concurrency))
        compared = r.label.startswith("v2 ") or r.label == "explain=1"
        if not compared or predict is None or not predict.throughput:
            continue
        lines.append(
            f"{r.engine} {r.label} vs multipart /predict (the step before), "
            f"c={r.concurrency}: "
            f"{r.throughput / predict.throughput:.3f}x images/s, "
            f"p50 {r.percentile(50) / predict.percentile(50):.3f}x"
        )
    return "\n".join(lines)


def table(results: list[LoadResult], raws: dict) -> str:
    head = (
        f"{'engine':>16} {'image':>9} {'conc':>4} {'reqs':>5} {'img/s':>6} {'p50 ms':>7} "
        f"{'p90 ms':>7} {'p99 ms':>7} {'errors':>6} {'batch':>5} {'RSS MiB':>7} "
        f"{'CPU':>4} {'/ceiling':>8}"
    )
    lines = ["", head, "-" * len(head)]
    for r in results:
        errors = ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0"
        batch = f"{r.mean_batch:.1f}" if r.mean_batch else "n/a"
        rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "n/a"
        cpu = f"{r.cpu_share:.0%}" if r.cpu_share is not None else "n/a"
        ceiling = step_ceiling(r, raws)
        lines.append(
            f"{r.engine:>16} {r.label:>9} {r.concurrency:>4} {len(r.latencies):>5} "
            f"{r.throughput:>6.1f} {r.percentile(50):>7.0f} {r.percentile(90):>7.0f} "
            f"{r.percentile(99):>7.0f} {errors:>6} {batch:>5} {rss:>7} {cpu:>4} "
            f"{r.throughput / ceiling:>8.2f}"
        )
    return "\n".join(lines)


def drift(results: list[LoadResult], raws: dict) -> str:
    """The ceilings re-measured around steps: how much this machine's speed moved."""
    lines = []
    for r in results:
        if r.ceilings:
            ceiling = step_ceiling(r, raws)
            where = (
                f": model busy {r.busy:.0%} x pass {1000 / ceiling:.1f} raw / "
                f"{r.pass_ms_per_image:.1f} served ms/img"
                if r.busy is not None
                else ""
            )
            lines.append(
                f"  {r.engine} {r.label} c={r.concurrency}: "
                f"{r.ceilings[0]:.1f} before, {r.ceilings[1]:.1f} after "
                f"(start of run {raws[r.engine]['bmax_ips']:.1f}) -> "
                f"{r.throughput / ceiling:.2f}{where}"
            )
    if not lines:
        return ""
    return "\n".join(
        ["", "Ceiling (batch-max img/s, no HTTP) re-measured right before and after a "
         "step; its /ceiling uses the higher.", "That ratio is about the product of how "
         "busy the server's model was (its share of the step's time in forward passes) "
         "and the raw pass time per image over the served one:", *lines]
    )  # fmt: skip


def profile(results: list[LoadResult]) -> str:
    """Where one request's time goes (server-side means): alone, and at 16 clients."""
    stages = ["parse", "decode", "thumbnail", "preprocess", "queued", "inference"]
    stages += ["topk", "explain", "store"]
    head = f"{'engine':>16} {'image':>9} {'conc':>4} " + " ".join(
        f"{name:>10}" for name in [*stages, "http+json"]
    )
    lines = ["", "Per-request stages, mean ms (server-side timings_ms; http+json = "
             "client latency - parse - service total):", head, "-" * len(head)]  # fmt: skip
    for r in results:
        if r.concurrency not in (1, 16) or not r.stage_sums:
            continue
        n = r.stage_samples
        means = [r.stage_sums.get(name, 0.0) / n for name in stages]
        rest = (sum(r.latencies) * 1000 - r.stage_sums["total"] - r.stage_sums["parse"]) / n
        lines.append(
            f"{r.engine:>16} {r.label:>9} {r.concurrency:>4} "
            + " ".join(f"{m:>10.1f}" for m in [*means, rest])
        )
    return "\n".join(lines)


def comparison(results: list[LoadResult]) -> str:
    def find(engine, label, concurrency):
        for r in results:
            if (r.engine, r.label, r.concurrency) == (engine, label, concurrency):
                return r
        return None

    lines = [""]
    for r in results:
        base = find("tensorflow:fp32", r.label, r.concurrency)
        if base is None or r.engine == "tensorflow:fp32" or r.concurrency not in (1, 16):
            continue
        lines.append(
            f"{r.engine} vs tensorflow:fp32, {r.label} c={r.concurrency}: "
            f"{r.throughput / base.throughput:.2f}x images/s, "
            f"p50 {r.percentile(50) / base.percentile(50):.2f}x"
        )
    return "\n".join(lines)


def step_ceiling(result: LoadResult, raws: dict) -> float:
    """The ceiling a step's ratio is taken against: the higher of those measured around it
    (a neighbour's burst only ever slows a measurement down: one slow sample must not
    flatter the step), else the one from the start of the run."""
    if result.ceilings:
        return max(result.ceilings)
    return raws[result.engine]["bmax_ips"]
