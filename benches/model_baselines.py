"""Baselines for benches/models.rs on the training set it exports (raw little-endian arrays):
the same wide & deep architecture in PyTorch, trained for the same epochs with the same
batch size, optimizer, class weight and L2, and LightGBM on the same rows with early stopping
on the same validation split. Prints a JSON list of results.

    python3 benches/model_baselines.py FOLDER
"""

import json
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

folder = sys.argv[1]
settings = json.load(open(f"{folder}/settings.json"))
offsets = np.fromfile(f"{folder}/offsets.u64", dtype=np.uint64).astype(np.int64)
ids = np.fromfile(f"{folder}/ids.u32", dtype=np.uint32).astype(np.int64)
values = np.fromfile(f"{folder}/values.f32", dtype=np.float32)
labels = np.fromfile(f"{folder}/labels.f32", dtype=np.float32)
split = np.fromfile(f"{folder}/split.u8", dtype=np.uint8)
# each feature's multiple of the L2 penalty (by family, as redflower's [training] l2_scale)
l2_scales = np.fromfile(f"{folder}/l2_scales.f32", dtype=np.float32)
n_features = settings["n_features"]
rows = sp.csr_matrix((values, ids, offsets), shape=(len(labels), n_features))
fit, validation, holdout = (np.where(split == k)[0] for k in (0, 1, 2))


def auc(scores, y):
    ranks = rankdata(scores)
    positives = y.sum()
    negatives = len(y) - positives
    return float((ranks[y > 0.5].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def median_seconds(run):
    """The median of `score_passes` timed passes, as benches/models.rs reports its own."""
    return float(np.median([run() for _ in range(settings["score_passes"])]))


results = []

try:
    import torch

    torch.manual_seed(settings["seed"])
    torch.set_num_threads(settings["threads"])
    device = torch.device(settings["device"])

    class WideDeep(torch.nn.Module):
        def __init__(self, n, dim, hidden):
            super().__init__()
            self.wide = torch.nn.EmbeddingBag(n + 1, 1, mode="sum", padding_idx=0)
            torch.nn.init.zeros_(self.wide.weight)
            self.bias = torch.nn.Parameter(torch.zeros(1))
            self.embedding = torch.nn.EmbeddingBag(n + 1, dim, mode="sum", padding_idx=0)
            torch.nn.init.normal_(self.embedding.weight, 0.0, 0.01)
            self.hidden = torch.nn.Linear(dim, hidden)
            self.output = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.output.weight)
            torch.nn.init.zeros_(self.output.bias)

        def forward(self, ids, offsets, weights):
            wide = self.wide(ids, offsets, per_sample_weights=weights).squeeze(1) + self.bias
            bag = self.embedding(ids, offsets, per_sample_weights=weights)
            return wide + self.output(torch.relu(self.hidden(bag))).squeeze(1)

    def batch(indices):
        sub = rows[indices]
        return (
            torch.from_numpy(sub.indices.astype(np.int64) + 1).to(device),
            torch.from_numpy(sub.indptr[:-1].astype(np.int64)).to(device),
            torch.from_numpy(sub.data.astype(np.float32)).to(device),
        )

    model = WideDeep(n_features, settings["embedding_dim"], settings["hidden"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    y = torch.from_numpy(labels).to(device)
    # slot 0 is the padding id, as in redflower
    penalty = torch.from_numpy(np.concatenate([[1.0], l2_scales]).astype(np.float32)).to(device)
    batch_size = settings["batch_size"]
    l2 = settings["l2"] / max(len(fit), 1)
    weight = settings["positive_weight"]
    rng = np.random.default_rng(settings["seed"])
    fit_seconds = 0.0
    for epoch in range(settings["epochs"]):
        order = rng.permutation(fit)
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids_t, offsets_t, values_t = batch(chunk)
            logits = model(ids_t, offsets_t, values_t)
            target = y[chunk]
            loss = -(
                torch.nn.functional.logsigmoid(logits) * target * weight
                + torch.nn.functional.logsigmoid(-logits) * (1 - target)
            ).mean()
            squares = model.wide.weight.pow(2).sum(1) + model.embedding.weight.pow(2).sum(1)
            loss = loss + l2 * (penalty * squares).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        fit_seconds += time.perf_counter() - started

    def score(indices):
        out = []
        with torch.no_grad():
            for start in range(0, len(indices), 4096):
                out.append(model(*batch(indices[start : start + 4096])).cpu().numpy())
        return np.concatenate(out)

    def timed(work):
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    everyone = np.arange(len(labels))
    score(everyone[:4096])
    score_seconds = median_seconds(lambda: timed(lambda: score(everyone)))
    results.append(
        {
            "trainer": f"PyTorch {torch.__version__} ({device.type})",
            "train_samples_per_s": len(fit) * settings["epochs"] / fit_seconds,
            "score_users_per_s": len(labels) / score_seconds,
            "holdout_auc": auc(score(holdout), labels[holdout]),
            "notes": f"same architecture, {settings['epochs']} epochs in {fit_seconds:.1f}s, {settings['threads']} threads",
        }
    )
except ImportError as e:
    results.append({"trainer": "PyTorch", "holdout_auc": None, "notes": f"not installed: {e}"})

try:
    import lightgbm as lgb

    started = time.perf_counter()
    booster = lgb.train(
        {
            "objective": "binary",
            "metric": "auc",
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.5,
            "num_threads": settings["threads"],
            "verbose": -1,
            "seed": settings["seed"],
        },
        lgb.Dataset(rows[fit], labels[fit]),
        num_boost_round=2000,
        valid_sets=[lgb.Dataset(rows[validation], labels[validation])],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    train_seconds = time.perf_counter() - started

    def timed_prediction():
        started = time.perf_counter()
        booster.predict(rows)
        return time.perf_counter() - started

    score_seconds = median_seconds(timed_prediction)
    results.append(
        {
            "trainer": f"LightGBM {lgb.__version__}",
            "train_samples_per_s": None,
            "score_users_per_s": len(labels) / score_seconds,
            "holdout_auc": auc(booster.predict(rows[holdout]), labels[holdout]),
            "notes": f"{booster.best_iteration} trees (early stopping on the same validation split), trained in {train_seconds:.1f}s",
        }
    )
except ImportError as e:
    results.append({"trainer": "LightGBM", "holdout_auc": None, "notes": f"not installed: {e}"})

print(json.dumps(results))
