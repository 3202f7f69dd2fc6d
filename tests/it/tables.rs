//! Your own table end to end: trained (cross-validated, being small) and registered with its
//! encoding, then scored with `score --table` through that stored encoding.

use redflower::config::Pipelines;
use redflower::dataset::is_holdout;
use redflower::model::{self, DeviceKind, metrics};
use redflower::store::Store;
use redflower::table::score::score_table;
use redflower::table::train::{TableOptions, train_on_table};
use redflower::table::{ColumnEncoding, TableEncoding};
use redflower::training::Promote;

/// 3,000 loans: poorer borrowers and the south default more; tenure is sometimes missing and
/// one row in 101 has no label.
fn loans_csv() -> String {
    let mut text = String::from("income,city,tenure_years,defaulted\n");
    for i in 0..3000u64 {
        let income = 20_000 + (i * 7919) % 80_000;
        let city = ["north", "south", "east", "west"][(i % 4) as usize];
        let tenure = if i % 13 == 0 {
            String::new()
        } else {
            ((i * 31) % 20).to_string()
        };
        let risk = (income < 40_000) as u64 + (city == "south") as u64;
        let defaulted = if i % 101 == 0 {
            String::new()
        } else {
            u64::from(((i * 2654435761) % 10) < 1 + 3 * risk).to_string()
        };
        text.push_str(&format!("{income},{city},{tenure},{defaulted}\n"));
    }
    text
}

/// The shipped settings with a smaller search, so the test trains in seconds.
fn quick_pipelines() -> Pipelines {
    let mut pipelines = Pipelines::builtin();
    let table = &mut pipelines.nightly.table;
    table.l2_grid = vec![0.5, 5.0];
    table.epochs = 12;
    table.refits = 2;
    pipelines
}

/// The PD and label of each labelled row of `table` (its label last) that the hash split
/// holds out, read from a `score` CSV (whose `row` is 1-based; `pd` its second field).
fn holdout_scores(table: &str, scores: &str, share: f64) -> (Vec<f64>, Vec<f32>) {
    let labels: Vec<&str> = (table.lines().skip(1))
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    let (mut pd, mut y) = (Vec::new(), Vec::new());
    for line in scores.lines().skip(1) {
        let mut fields = line.split(',');
        let position = fields.next().unwrap().parse::<u64>().unwrap() - 1;
        let label = labels[position as usize];
        if !label.is_empty() && is_holdout(position, share) {
            pd.push(fields.next().unwrap().parse().unwrap());
            y.push(label.parse().unwrap());
        }
    }
    (pd, y)
}

/// A temporary folder holding loans.csv (`text`) and a model registry root.
struct Folder {
    dir: tempfile::TempDir,
    text: String,
    store: Store,
}

impl Folder {
    fn with_loans() -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let text = loans_csv();
        std::fs::write(dir.path().join("loans.csv"), &text).unwrap();
        let store = Store::open(dir.path().join("registry").to_str().unwrap()).unwrap();
        Folder { dir, text, store }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn a_table_model_scores_another_table_through_its_stored_encoding() {
    let folder = Folder::with_loans();
    let (path, text, store) = (|name: &str| folder.path(name), &folder.text, &folder.store);
    let pipelines = quick_pipelines();
    let device = DeviceKind::Cpu.device().unwrap();
    let options = TableOptions {
        holdout_share: Some(0.25),
        folds: None,
    };
    let (byo, outcome) = train_on_table(
        store,
        (&path("loans.csv"), "defaulted"),
        options,
        &pipelines,
        &device,
        Promote::Never,
    )
    .await
    .unwrap();
    assert_eq!((byo.rows, byo.unlabelled), (3000, 30));
    assert_eq!(byo.numeric_columns, vec!["income", "tenure_years"]);
    assert_eq!(byo.categorical_columns, vec!["city"]);
    let card = &outcome.card;
    let cv = card
        .cross_validation
        .as_ref()
        .expect("a small table is cross-validated");
    assert_eq!((cv.folds, cv.fold_auc.len()), (5, 5));
    // 2 encodings x 2 embedding sizes x 2 penalties
    assert_eq!(cv.candidates.len(), 8);
    assert!(cv.auc_mean > 0.65, "{cv:?}");
    assert!(
        outcome.evaluation.metrics.auc > 0.65,
        "{:?}",
        outcome.evaluation.metrics
    );
    assert!(model::champion(store).await.unwrap().is_none());
    let model_folder = path(&format!("registry/models/{}", card.version));
    let model_folder = std::path::Path::new(&model_folder);
    for file in ["encoding.json", "report.html", "metrics.json"] {
        assert!(model_folder.join(file).exists(), "{file}");
    }
    let report = std::fs::read_to_string(model_folder.join("report.html")).unwrap();
    assert!(report.contains("cross-validated AUC"));

    let score = async |table: &str, out: &str| {
        score_table(store, &card.version, &path(table), &path(out), 4, &device).await
    };

    // the round trip: the table scored with the stored encoding gives, on the rows training
    // held out, the holdout AUC training reported
    let scoring = score("loans.csv", "scores.csv").await.unwrap();
    assert_eq!((scoring.rows, scoring.missing_columns.len()), (3000, 0));
    let scores = std::fs::read_to_string(path("scores.csv")).unwrap();
    let (pd, y) = holdout_scores(text, &scores, 0.25);
    assert_eq!(pd.len(), card.holdout.rows);
    let again = metrics::auc(&pd, &y).unwrap();
    assert!(
        (again - card.holdout.auc).abs() < 1e-9,
        "{again} vs {}",
        card.holdout.auc
    );

    // another table: a column missing, a city never seen, Parquet out
    let mut other = String::from("income,tenure_years\n");
    other.push_str("25000,3\n90000,\n");
    std::fs::write(path("new.csv"), other).unwrap();
    let scoring = score("new.csv", "new.parquet").await.unwrap();
    assert_eq!(scoring.missing_columns, vec!["city"]);
    assert!(std::path::Path::new(&path("new.parquet")).exists());
    std::fs::write(path("mars.csv"), "income,city,tenure_years\n25000,mars,3\n").unwrap();
    let scoring = score("mars.csv", "mars.csv.out.csv").await.unwrap();
    assert_eq!((scoring.rows, scoring.missing_columns.len()), (1, 0));

    // a column whose type changed is refused, naming it
    std::fs::write(path("typed.csv"), "income,city,tenure_years\nlow,north,3\n").unwrap();
    let err = score("typed.csv", "t.csv")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("'income' was numeric") && err.contains("typed.csv"),
        "{err}"
    );
    std::fs::write(path("other.csv"), "a,b\n1,2\n").unwrap();
    let err = score("other.csv", "o.csv")
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("none of the 3 columns"), "{err}");
    let err = score("new.csv", "t.txt")
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains(".csv or .parquet"), "{err}");
}

#[tokio::test]
async fn a_large_table_chooses_on_the_validation_split_with_bins_and_round_trips() {
    let folder = Folder::with_loans();
    let (path, text, store) = (|name: &str| folder.path(name), &folder.text, &folder.store);
    let mut pipelines = quick_pipelines();
    pipelines.nightly.table.cross_validate_below_rows = 1000;
    let device = DeviceKind::Cpu.device().unwrap();
    let (_, outcome) = train_on_table(
        store,
        (&path("loans.csv"), "defaulted"),
        TableOptions::default(),
        &pipelines,
        &device,
        Promote::Never,
    )
    .await
    .unwrap();
    let card = &outcome.card;
    assert!(card.cross_validation.is_none());
    assert_eq!(
        card.l2_search.len(),
        2,
        "the table's l2_grid, on validation"
    );
    assert_eq!(card.training.batch_size, pipelines.nightly.table.batch_size);
    let encoding: TableEncoding = model::attachment(store, &card.version, "encoding.json")
        .await
        .unwrap()
        .unwrap();
    let binned = encoding.columns.iter().any(|c| match c {
        ColumnEncoding::Numeric { bin_edges, .. } => !bin_edges.is_empty(),
        _ => false,
    });
    assert!(binned, "{encoding:?}");
    score_table(
        store,
        &card.version,
        &path("loans.csv"),
        &path("s.csv"),
        4,
        &device,
    )
    .await
    .unwrap();
    let scores = std::fs::read_to_string(path("s.csv")).unwrap();
    let share = pipelines.nightly.training.holdout_share;
    let (pd, y) = holdout_scores(text, &scores, share);
    assert_eq!(pd.len(), card.holdout.rows);
    let again = metrics::auc(&pd, &y).unwrap();
    assert!(
        (again - card.holdout.auc).abs() < 1e-9,
        "{again} vs {}",
        card.holdout.auc
    );
}

#[tokio::test]
async fn a_bad_label_or_too_few_defaults_is_refused_naming_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let store = Store::open(&path("registry")).unwrap();
    let pipelines = quick_pipelines();
    let device = DeviceKind::Cpu.device().unwrap();
    let train = |file: String, label: &'static str| {
        let (store, pipelines, device) = (&store, &pipelines, &device);
        async move {
            train_on_table(
                store,
                (&file, label),
                TableOptions::default(),
                pipelines,
                device,
                Promote::Never,
            )
            .await
            .expect_err("refused")
            .to_string()
        }
    };
    std::fs::write(path("bad.csv"), "x,y\n1,0\n2,3\n").unwrap();
    let err = train(path("bad.csv"), "y").await;
    assert!(err.contains("bad.csv") && err.contains("row 2"), "{err}");
    std::fs::write(path("loans.csv"), loans_csv()).unwrap();
    let err = train(path("loans.csv"), "nope").await;
    assert!(
        err.contains("no label column 'nope'") && err.contains("income"),
        "{err}"
    );
    let mut few = String::from("x,y\n");
    for i in 0..200 {
        few.push_str(&format!("{i},{}\n", u8::from(i == 7)));
    }
    std::fs::write(path("few.csv"), few).unwrap();
    let err = train(path("few.csv"), "y").await;
    assert!(
        err.contains("few.csv") && err.contains("at least 5 of each"),
        "{err}"
    );
}
