"""A slow, literal re-statement of insightface's IJB scripts (ijb_11.py, ijb_1n.py) on given features.

Loops and array operations as the reference writes them (numpy only: sklearn's `normalize`,
`roc_curve` and `auc` restated from their definitions), to test irface's vectorised version against.
"""

import math

import numpy as np


def image_input_feats(img_feats, faceness, use_norm_score=True, use_detector_score=True, use_flip_test=True):
    if use_flip_test:
        x = img_feats[:, 0:img_feats.shape[1] // 2] + img_feats[:, img_feats.shape[1] // 2:]
    else:
        x = img_feats[:, 0:img_feats.shape[1] // 2]
    if not use_norm_score:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if use_detector_score:
        x = x * faceness[:, np.newaxis]
    return x


def template_sums(img_feats, templates, medias, unique_templates):
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    return template_feats


def sklearn_normalize(x):
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(np.float64).eps] = 1.0
    return x / norms[:, np.newaxis]


def verification(template_norm_feats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    for s in [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


def roc_curve(label, score):
    """sklearn's roc_curve by its definition: one point per distinct score (accept score >= it),
    collinear interior points dropped (second differences of the counts), (0, 0) prepended."""
    thresholds = sorted(set(score.tolist()), reverse=True)
    fps, tps = [], []
    for t in thresholds:
        accept = score >= t
        tps.append(int(np.sum(accept & (label == 1))))
        fps.append(int(np.sum(accept & (label == 0))))
    if len(fps) > 2:
        keep = [0] + [i for i in range(1, len(fps) - 1)
                      if fps[i - 1] - 2 * fps[i] + fps[i + 1] != 0 or tps[i - 1] - 2 * tps[i] + tps[i + 1] != 0] \
            + [len(fps) - 1]
        fps, tps = [fps[i] for i in keep], [tps[i] for i in keep]
    fps, tps = np.array([0] + fps, float), np.array([0] + tps, float)
    return fps / fps[-1], tps / tps[-1]


def trapz(y, x):
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0 for i in range(len(x) - 1)))


def tar_table(label, score, x_labels=(10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1)):
    fpr, tpr = roc_curve(label, score)
    roc_auc = trapz(tpr, fpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    row = []
    for x in x_labels:
        _, min_index = min(list(zip(abs(fpr - x), range(len(fpr)))))
        row.append(tpr[min_index])
    return row, roc_auc


def ijb_11(img_feats, faceness, templates, medias, p1, p2, label, **mode):
    x = image_input_feats(img_feats, faceness, **mode)
    unique_templates = np.unique(templates)
    norm = sklearn_normalize(template_sums(x, templates, medias, unique_templates))
    score = verification(norm, unique_templates, p1, p2)
    row, roc_auc = tar_table(label, score)
    return score, row, roc_auc


def ijb_1n(img_feats, faceness, templates, medias, gallery, probe, **mode):
    """`gallery` = (templates, subject ids) of both galleries concatenated, `probe` the same."""
    x = image_input_feats(img_feats, faceness, **mode)

    def pooled(choose_templates, choose_ids):
        unique_templates, indices = np.unique(choose_templates, return_index=True)
        feats = template_sums(x, templates, medias, unique_templates)
        return feats / np.sqrt(np.sum(feats ** 2, -1, keepdims=True)), choose_ids[indices]

    gallery_feats, gallery_ids = pooled(*gallery)
    probe_feats, probe_ids = pooled(*probe)
    mask = []
    for query_id in probe_ids:
        pos = [i for i, v in enumerate(gallery_ids) if query_id == v]
        assert len(pos) == 1
        mask.append(pos[0])
    query_num = probe_feats.shape[0]
    similarity = np.dot(probe_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    tops = {k: sum(mask[i] in top_inds[i, 0:k] for i in range(query_num)) / query_num for k in (1, 5, 10)}
    fars = [0.01, 0.1]
    required_topk = [math.ceil(query_num * f) for f in fars]
    top_sims = similarity
    pos_sims = []
    for i in range(query_num):
        pos_sims.append(top_sims[i, mask[i]])
        top_sims[i, mask[i]] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = sorted(top_sims[np.where(top_sims > -2.0)].tolist(), reverse=True)[:max(required_topk)]
    far_rule = {f: np.sum(pos_sims > neg_sims[k - 1]) / query_num for f, k in zip(fars, required_topk)}
    return tops, far_rule
