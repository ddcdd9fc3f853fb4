"""IJB-B / IJB-C figures of a set's image features: the 1:1 TAR@FAR table and, when the 1:N files are
present, identification, as one JSON-ready dict and the lines the reference prints."""

from __future__ import annotations

from typing import Optional

import numpy as np

from irface.data.ijb import PAIRS, TEMPLATES, IJBMeta, meta_name
from irface.errors import DataError
from irface.eval.ijb import (
    IJB_FARS,
    Mode,
    image_features,
    nist_1n,
    normalize_1n,
    pool_templates,
    reference_1n,
    template_rows,
    verification_rows,
)
from irface.eval.identification import FPIRS
from irface.eval.protocol import l2_normalize
from irface.eval.result import far_key

def _keyed(d: dict) -> dict:
    return {far_key(k): v for k, v in d.items()}


def _ranks(d: dict) -> dict:
    return {f"rank{k}": v for k, v in d.items()}


def _identification(meta: IJBMeta, unique: np.ndarray, sums: np.ndarray) -> Optional[dict]:
    if not meta.galleries or meta.probe is None:
        return None
    norm = normalize_1n(sums)
    missing: list[int] = []

    def rows_of(templates: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = template_rows(unique, templates)
        missing.extend(templates[rows < 0].tolist())
        return rows[rows >= 0], subjects[rows >= 0]

    probe_rows, probe_subjects = rows_of(meta.probe.templates, meta.probe.subjects)
    # The reference's gallery: both files' templates together, each template's subject from its first row.
    g_templates = np.concatenate([g.templates for g in meta.galleries])
    g_subjects = np.concatenate([g.subjects for g in meta.galleries])
    g_unique, g_first = np.unique(g_templates, return_index=True)
    union_rows, union_subjects = rows_of(g_unique, g_subjects[g_first])
    out: dict = {"probes": int(len(probe_rows)), "gallery_templates": int(len(union_rows)),
                 "templates_without_images": sorted(set(missing))[:20], "fpir": [far_key(f) for f in FPIRS]}
    try:
        ref = reference_1n(norm[probe_rows], probe_subjects, norm[union_rows], union_subjects, FPIRS)
        out["reference"] = {**_ranks(ref["rank"]), "far_rule": _keyed(ref["far_rule"])}
    except ValueError as e:
        out["reference"] = None
        out["reference_error"] = str(e)
    nist = {}
    for g in meta.galleries:
        rows, subjects = rows_of(g.templates, g.subjects)
        r = nist_1n(norm[probe_rows], probe_subjects, norm[rows], subjects, FPIRS)
        nist[g.name] = {"mated": r["mated"], "non_mated": r["non_mated"], **_ranks(r["rank"]),
                        "tpir_at_fpir": _keyed(r["tpir_at_fpir"])}
    names = [g.name for g in meta.galleries]

    def mean(get) -> Optional[float]:
        vals = [get(nist[n]) for n in names]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    nist["mean"] = {**{k: mean(lambda d, k=k: d[k]) for k in ("rank1", "rank5", "rank10")},
                    "tpir_at_fpir": {far_key(f): mean(lambda d, f=f: d["tpir_at_fpir"][far_key(f)]) for f in FPIRS}}
    out["nist"] = nist
    return out


def evaluate_ijb(meta: IJBMeta, feats: np.ndarray, present: np.ndarray, mirrored: bool, mode: Mode) -> dict:
    """Every figure of the set (see docs/eval.md); `present[i]` False drops image i (skipped)."""
    keep = np.nonzero(np.asarray(present, bool))[0]
    if not len(keep):
        raise DataError(f"{meta.root}: no image could be embedded")
    faceness = meta.faceness

    everything = len(keep) == len(meta.names)

    def features(idx) -> np.ndarray:
        rows = idx if everything else keep[idx]
        return image_features(feats[rows], faceness[rows], mode, mirrored)

    unique, sums = pool_templates(features, meta.templates[keep], meta.medias[keep])
    pair_file = f"{meta.root}/meta/{meta_name(meta.target, PAIRS)}"
    rows = [template_rows(unique, side) for side in (meta.pair_t1, meta.pair_t2)]
    known = np.unique(meta.templates)  # `unique` less the templates whose images were all skipped
    for side, side_rows in zip((meta.pair_t1, meta.pair_t2), rows):
        missing = np.flatnonzero(side_rows < 0)  # only these can name a template with no image at all
        unknown = missing[template_rows(known, side[missing]) < 0]
        if len(unknown):
            i = int(unknown[0])
            raise DataError(f"{pair_file}: line {i + 1} names template {side[i]}, which has no image in "
                            f"{meta_name(meta.target, TEMPLATES)}")
    usable = (rows[0] >= 0) & (rows[1] >= 0)
    labels = meta.labels[usable]
    if labels.min(initial=1) == 1 or labels.max(initial=0) == 0:
        raise DataError(f"{pair_file}: the pairs need both genuine (label 1) and impostor (label 0) pairs")
    v = verification_rows(l2_normalize(sums), rows[0][usable], rows[1][usable], labels, IJB_FARS)
    report = {
        "target": meta.target, "mode": mode.name, "images": int(len(meta.names)),
        "images_skipped": int(len(meta.names) - len(keep)), "templates": int(len(unique)),
        "pairs": int(usable.sum()), "pairs_dropped": int((~usable).sum()),
        "genuine": int((labels == 1).sum()), "impostor": int((labels == 0).sum()),
        "tar_at_far": {far_key(f): v.tar[f][0] for f in IJB_FARS},
        "fpr_used": {far_key(f): v.tar[f][1] for f in IJB_FARS},
        "tar_at_far_interpolated": {far_key(f): v.tar_interpolated[f] for f in IJB_FARS},
        "auc": v.auc,
    }
    ident = _identification(meta, unique, sums)
    if ident is not None:
        report["identification"] = ident
    report["_roc"] = (v.fpr, v.tpr)  # for --plot; dropped from the JSON
    return report


def _justify(text: str, width: int) -> str:
    """Centred as PrettyTable centres (the odd space right of odd-length text, left of even-length)."""
    excess = width - len(text)
    left = excess // 2 + (0 if len(text) % 2 else excess % 2)
    return " " * left + text + " " * (excess - left)


def format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table in PrettyTable's default style (the reference prints its TAR@FAR table with it)."""
    widths = [max(len(r[i]) for r in [header] + rows) + 2 for i in range(len(header))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    line = lambda cells: "|" + "|".join(" " + _justify(c, w - 2) + " " for c, w in zip(cells, widths)) + "|"  # noqa: E731
    return [rule, line(header), rule] + [line(r) for r in rows] + [rule]


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else "%.2f" % (v * 100)


def format_report(report: dict) -> list[str]:
    """The reference's TAR@FAR table (TPR in %, FPR columns as it labels them), then our lines."""
    header = ["Methods"] + [str(x) for x in (10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1)]
    name = f"{report['mode']}-{report['target']}"
    rows = [[name] + [_pct(report["tar_at_far"][far_key(f)]) for f in IJB_FARS],
            ["interpolated"] + [_pct(report["tar_at_far_interpolated"][far_key(f)]) for f in IJB_FARS]]
    lines = format_table(header, rows)
    lines.append(f"AUC: {report['auc'] * 100:.4f} %   images: {report['images']:,}"
                 f"{' (%d skipped)' % report['images_skipped'] if report['images_skipped'] else ''}   "
                 f"templates: {report['templates']:,}   pairs: {report['pairs']:,} "
                 f"({report['genuine']:,} genuine)"
                 f"{'   pairs dropped: %d' % report['pairs_dropped'] if report['pairs_dropped'] else ''}")
    ident = report.get("identification")
    if ident:
        ref = ident.get("reference")
        if ref:
            lines.append(f"1:N reference script (probes vs both galleries): top1 {_pct(ref['rank1'])}  "
                         f"top5 {_pct(ref['rank5'])}  top10 {_pct(ref['rank10'])}  "
                         + "  ".join(f"far-rule@{k} {_pct(v)}" for k, v in ref["far_rule"].items()))
        else:
            lines.append(f"1:N reference script: not computable ({ident.get('reference_error')})")
        for g, d in ident["nist"].items():
            lines.append(f"1:N NIST {g:>4}: rank1 {_pct(d['rank1'])}  rank5 {_pct(d['rank5'])}  "
                         f"rank10 {_pct(d['rank10'])}  "
                         + "  ".join(f"TPIR@FPIR={k} {_pct(v)}" for k, v in d["tpir_at_fpir"].items()))
    return lines
