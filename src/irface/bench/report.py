"""Human-readable lines for a benchmark report (the JSON carries the same figures and more)."""

from __future__ import annotations

from typing import Any, Callable


def _machine(m: dict[str, Any]) -> str:
    if m.get("card"):
        return f"{m['card']} ({m.get('card_memory_gb')} GB), torch {m.get('torch')}"
    load = m.get("load_average")
    text = f"{m.get('cpu')}, {m.get('cpu_cores')} cores, {m.get('threads')} threads, torch {m.get('torch')}"
    return text + (f", load {load[0]}" if load else "")


def _or_dash(row: dict[str, Any], key: str, spec: str) -> str:
    """`row[key]` formatted by `spec`, or "-" where the figure was not measured."""
    return "-" if row.get(key) is None else format(row[key], spec)


def _timings(report: dict[str, Any]) -> list[str]:
    lines = [f"{'configuration':<18} {'ms/step':>9} {'min ms':>9} {'images/s':>9} {'x base':>7} {'x min':>6} {'x cpu':>6} "
             f"{'GFLOP/s':>8} {'of peak':>13} {'peak MB':>8}"]
    for t in report["timings"]:
        frac = f"{t['fraction_of_peak']:.0%} {t['peak_name']}" if t.get("fraction_of_peak") is not None else "-"
        ratio, rmin, rcpu = (_or_dash(t, k, ".2f") for k in ("ratio_to_baseline", "ratio_min_to_baseline",
                                                              "ratio_cpu_to_baseline"))
        mem = _or_dash(t, "peak_memory_mb", ".0f")
        lines.append(f"{t['name']:<18} {t['ms_per_step']:>9.1f} {t['ms_min']:>9.1f} {t['images_per_s']:>9.2f} "
                     f"{ratio:>7} {rmin:>6} {rcpu:>6} {t['achieved_gflops']:>8.1f} {frac:>13} {mem:>8}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return lines


def _speed_report(report: dict[str, Any]) -> list[str]:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in report.get("peaks_gflops", {}).items() if v)
    in_rounds = (report.get("peaks_measured") or {}).get("in_rounds")
    lines = [
        f"irface bench {report['benchmark']}: {report.get('network')}, batch {report['batch_size']}, "
        f"median of {report['steps']} steps after {report['warmup']} warm-up",
        f"machine: {_machine(report['machine'])}",
        f"work: {report['gflop_per_image']} GFLOP per image; matmul peaks (GFLOP/s, best seen"
        f"{' before and in the rounds' if in_rounds else ' just before'}): {peaks}",
    ]
    lines += _timings(report)
    agreement = report.get("agreement") or {}
    if agreement:
        base = report["timings"][0]["name"] if report["timings"] else "baseline"
        lines.append(f"embeddings against {base} on {next(iter(agreement.values()))['faces']} held-out faces:")
        for name, a in agreement.items():
            lines.append(f"  {name:<16} cosine mean {a['mean_cosine']:.4f} min {a['min_cosine']:.4f}; "
                         f"pair similarity moves {a['pair_similarity_mean_diff']:.4f} on average, "
                         f"{a['pair_similarity_max_diff']:.4f} at most")
    return lines


def _data_report(r: dict[str, Any]) -> list[str]:
    return [
        f"irface bench data: {r['data']} ({r['images']} images, {r['num_classes']} classes), batch {r['batch_size']}, "
        f"{r['workers']} workers, {r['steps']} batches timed after {r['warmup']}",
        f"machine: {_machine(r['machine'])}",
        f"{r['ms_per_batch']:.1f} ms per batch on average (median {r['ms_median']:.1f}), {r['images_per_s']:.0f} images/s, "
        f"peak memory {r['peak_memory_mb']:.0f} MB (this process)",
    ]


def _eval_report(r: dict[str, Any]) -> list[str]:
    t = r["timings"][0]
    return [
        f"irface bench eval: {r['bin']} ({r['pairs']} pairs, {r['images_embedded']} images embedded"
        f"{' with mirrors' if r['flip'] else ''}), batch {r['batch_size']}, median of {r['steps']} passes",
        f"machine: {_machine(r['machine'])}",
        f"{t['ms_per_step'] / 1e3:.2f} s per pass, {t['images_per_s']:.1f} images/s, {t['achieved_gflops']:.1f} GFLOP/s "
        f"({t['fraction_of_peak']:.0%} of the fp32 matmul peak {r['peaks_gflops']['fp32']:.0f}), "
        f"peak memory {t['peak_memory_mb']:.0f} MB",
        f"(accuracy of this model: {r['accuracy']:.5f}; random weights unless --model)",
    ]


def _scale_report(r: dict[str, Any]) -> list[str]:
    lines = [f"irface bench scale: {r['head']} head, embedding {r['embedding_size']}, {r['batch_size']} images per rank; "
             f"one rank's share measured on {_machine(r['machine'])}",
             f"{'classes':>11} {'ranks':>5} {'rate':>5} {'classes/rank':>12} {'used/step':>10} {'ms/step':>9} "
             f"{'peak MB':>8} {'est. MB':>8}"]
    for row in r["measured"]:
        ms, mem = _or_dash(row, "ms_per_step", ".1f"), _or_dash(row, "peak_memory_mb", ".0f")
        lines.append(f"{row['classes']:>11,} {row['ranks']:>5} {row['sample_rate']:>5g} {row['classes_per_rank']:>12,} "
                     f"{row['classes_used_per_step']:>10,} {ms:>9} {mem:>8} {row['estimated_mb']:>8.0f}"
                     + (f"  ({row['note']})" if row.get("note") else ""))
    p = r["paper"]
    lines.append(f"computed for {p['gpus']} GPUs x {p['gpu_memory_gb']:.0f} GB, embedding {p['embedding_size']}, "
                 f"{p['batch_per_gpu']} images per GPU (head weights, momentum and gradient in fp32, logits in fp32):")
    lines.append(f"{'classes':>11} {'ranks':>5} {'rate':>6} {'head GB/rank':>12} {'logits GB':>9} "
                 f"{'head/backbone FLOP':>18} {'fits':>5}")
    for row in p["rows"]:
        lines.append(f"{row['classes']:>11,} {row['ranks']:>5} {row['sample_rate']:>6g} {row['head_gb_per_rank']:>12.2f} "
                     f"{row['logits_gb_per_rank']:>9.2f} {row['head_to_backbone_flop']:>18.3f} {'yes' if row['fits'] else 'no':>5}")
    lines.append(f"sample rate that keeps the logits flat at the {p['flat_reference_classes']:,}-class cost: "
                 + ", ".join(f"{c:,}: {rate:g}" for c, rate in p["flat_sample_rate"].items()))
    return lines


def _photo_report(r: dict[str, Any]) -> list[str]:
    lines = [f"irface bench photo: {r['photo']} resized to each size, model {r['model']} ({r['embedding_size']}-d), "
             f"detection at {r['det_size']} px, median (min) of {r['steps']} interleaved rounds",
             f"machine: {_machine(r['machine'])}",
             f"{'photo':>10} {'faces':>5} {'detect ms (min) cpu':>24} {'photo->embedding ms (min) cpu':>30}"]
    for row in r["rows"]:
        lines.append(f"{row['size']:>10} {row['faces']:>5} {row['detect_ms']:>8.1f} ({row['detect_ms_min']:>5.1f}) "
                     f"{row['detect_cpu_ms']:>7.1f} {row['photo_to_embedding_ms']:>14.1f} "
                     f"({row['photo_to_embedding_ms_min']:>5.1f}) {row['photo_to_embedding_cpu_ms']:>7.1f}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines: dict[Any, Callable[[dict[str, Any]], list[str]]] = {
        "photo": _photo_report, "data": _data_report, "eval": _eval_report, "scale": _scale_report}
    return "\n".join(lines.get(report.get("benchmark"), _speed_report)(report))
