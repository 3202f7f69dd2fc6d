//! The model registry end to end: champion scoring, explained scores, suggestions.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float32Type, UInt32Type, UInt64Type};
use redflower::config::Pipelines;
use redflower::model::{self, DeviceKind};
use redflower::nightly;
use redflower::store::Store;
use redflower::training::{self, Promote, Writes};

use crate::support::{f64_column, published, run_date, str_column, synth_world, u64_column};

/// Tonight's stored long feature table, as each user's (feature id, value) pairs in id order.
async fn stored_features(store: &Store) -> BTreeMap<u64, Vec<(u32, f32)>> {
    let mut by_user: BTreeMap<u64, Vec<(u32, f32)>> = BTreeMap::new();
    for batch in store
        .read_parquet(&format!("features/dt={}/part-00000.parquet", run_date()))
        .await
        .unwrap()
    {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let ids = batch.column(1).as_primitive::<UInt32Type>();
        let values = batch.column(2).as_primitive::<Float32Type>();
        for row in 0..batch.num_rows() {
            by_user
                .entry(users.value(row))
                .or_default()
                .push((ids.value(row), values.value(row)));
        }
    }
    by_user
}

#[tokio::test]
async fn nightly_scores_with_the_champion_and_every_score_is_explained_by_its_features() {
    let store = Store::open("memory://champion-scores").unwrap();
    synth_world(&store, 4_000, 21).await;
    let pipelines = Pipelines::builtin();
    let device = DeviceKind::Cpu.device().unwrap();

    let first = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    assert!(
        first.trained_tonight,
        "a root without a champion trains one"
    );
    let champion = model::champion(&store).await.unwrap().expect("promoted");
    assert_eq!(champion.version, first.model_version);
    let card = model::card(&store, &champion.version).await.unwrap();
    assert_eq!(card.kind, "wide_and_deep");
    let report = store
        .get(&format!("models/{}/report.html", card.version))
        .await
        .unwrap()
        .expect("a report");
    let report = String::from_utf8(report.to_vec()).unwrap();
    assert_eq!(
        report.matches("<svg").count(),
        4,
        "ROC, KS, calibration, scores"
    );

    // retraining on the same window is deterministic: the same version comes back
    let window = training::labelled_window(&store, run_date(), &pipelines, Writes::Everything)
        .await
        .unwrap();
    assert!(
        store.list("staging").await.unwrap().is_empty(),
        "the training window's staged sources are removed once its labels are read"
    );
    let (retrained, _) = training::train_and_register(
        &store,
        &window.set,
        &window.dictionary,
        "again".into(),
        &pipelines,
        &device,
        Promote::Never,
    )
    .await
    .unwrap();
    assert_eq!(retrained.card.version, champion.version);

    let second = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    assert!(
        !second.trained_tonight,
        "the champion scores the next night"
    );
    assert_eq!(second.model_version, champion.version);

    // wide logit = bias + sum(weight * value) over the user's stored features, exactly the
    // linear part the reason codes are taken from
    let loaded = model::load(&store, &champion.version, &device)
        .await
        .unwrap();
    let (weights, bias) = loaded.network.coefficients();
    let mut linear: HashMap<u64, f64> = HashMap::new();
    let mut contributions: HashMap<u64, Vec<(u32, f64)>> = HashMap::new();
    for (user, row) in stored_features(&store).await {
        for (id, value) in row {
            if (id as usize) < weights.len() {
                let c = weights[id as usize] as f64 * value as f64;
                *linear.entry(user).or_insert(bias as f64) += c;
                contributions.entry(user).or_default().push((id, c));
            }
        }
    }
    let dictionary = redflower::features::FeatureDictionary::load(&store)
        .await
        .unwrap();
    let scores = store
        .read_parquet_dir(&format!("scores/dt={}", run_date()))
        .await
        .unwrap();
    let mut scored = 0;
    for batch in &scores {
        let users = u64_column(batch, "user_id");
        let pd = f64_column(batch, "pd");
        let wide = f64_column(batch, "wide_logit");
        let deep = f64_column(batch, "deep_logit");
        let reasons = str_column(batch, "reasons");
        for row in 0..batch.num_rows() {
            let user = users.value(row);
            let expected = linear.get(&user).copied().unwrap_or(bias as f64);
            assert!(
                (wide.value(row) - expected).abs() < 1e-4,
                "user {user}: wide logit {} but features give {expected}",
                wide.value(row)
            );
            let logit = wide.value(row) + deep.value(row);
            assert!((pd.value(row) - card.calibration.pd(logit)).abs() < 1e-9);
            // reasons: positive contributions, largest first, none larger left out
            let mine = contributions.get(&user).cloned().unwrap_or_default();
            let named: Vec<f64> = reasons
                .value(row)
                .split(';')
                .filter(|r| !r.is_empty())
                .map(|name| {
                    let id = dictionary.id(name).expect("a reason is a feature");
                    mine.iter()
                        .find(|(i, _)| *i == id)
                        .expect("the user's own feature")
                        .1
                })
                .collect();
            assert!(named.iter().all(|c| *c > 0.0), "user {user}: {named:?}");
            assert!(
                named.windows(2).all(|w| w[0] >= w[1]),
                "user {user}: {named:?}"
            );
            if named.len() < 4 {
                assert_eq!(
                    mine.iter().filter(|(_, c)| *c > 0.0).count(),
                    named.len(),
                    "user {user}: an adverse feature was left out"
                );
            } else {
                // none larger than the smallest named is left out (features that always come
                // together learn equal weights: a tie at the cut is broken by feature id)
                let smallest = named[named.len() - 1];
                let larger = mine.iter().filter(|(_, c)| *c > smallest).count();
                let at_least = mine.iter().filter(|(_, c)| *c >= smallest).count();
                assert!(
                    larger < named.len() && at_least >= named.len(),
                    "user {user}: {larger} larger, {at_least} at least {smallest}, named {named:?}"
                );
            }
            scored += 1;
        }
    }
    assert_eq!(scored, 4_000);

    // the published rows carry the same model reasons
    let (_, table) = published(&store).await;
    let with_model_reasons = table
        .iter()
        .flat_map(|b| {
            let r = b
                .column_by_name("reasons")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..b.num_rows()).map(move |i| r.value(i).contains("model:"))
        })
        .filter(|x| *x)
        .count();
    assert!(with_model_reasons > 3_000, "{with_model_reasons}");
}

#[tokio::test]
async fn a_suggested_certificate_raises_the_limit_by_the_amount_shown() {
    use redflower::dataset::Csr;
    use redflower::policy::{self, LimitPolicy};
    use redflower::suggestions;

    let store = Store::open("memory://suggestions").unwrap();
    synth_world(&store, 3_000, 33).await;
    let pipelines = Pipelines::builtin();
    let device = DeviceKind::Cpu.device().unwrap();
    let report = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let model = model::load(&store, &report.model_version, &device)
        .await
        .unwrap();
    let dictionary = redflower::features::FeatureDictionary::load(&store)
        .await
        .unwrap();

    // tonight's rows, from the stored long feature table
    let by_user = stored_features(&store).await;
    let row_of = |user: u64, extra: Option<u32>| {
        let mut entries = by_user.get(&user).cloned().unwrap_or_default();
        if let Some(id) = extra {
            entries.retain(|(i, _)| *i != id);
            entries.push((id, 1.0));
            entries.sort_by_key(|(i, _)| *i);
        }
        Csr {
            users: vec![user],
            offsets: vec![0, entries.len()],
            ids: entries.iter().map(|(i, _)| *i).collect(),
            values: entries.iter().map(|(_, v)| *v).collect(),
        }
    };

    let ctx = redflower::engine::session(&pipelines.nightly.engine).unwrap();
    redflower::sources::validate_and_register(&ctx, &store, run_date(), 0.01)
        .await
        .unwrap();
    let snapshot = redflower::sources::snapshot_before(&store, "profiles", run_date())
        .await
        .unwrap();
    let policy = LimitPolicy::builtin();
    let inputs = policy::load_inputs(&ctx, run_date(), snapshot, &policy)
        .await
        .unwrap();
    let candidates = suggestions::representatives(&inputs.certificates);

    let (_, table) = published(&store).await;
    let mut checked = 0;
    for batch in &table {
        let users = u64_column(batch, "user_id");
        let pds = f64_column(batch, "pd");
        let limits_now = f64_column(batch, "credit_limit");
        let shown = str_column(batch, "suggestions");
        for row in 0..batch.num_rows() {
            if shown.value(row).is_empty() || checked >= 40 {
                continue;
            }
            let user = users.value(row);
            // the first night: no previous table, as when the row was decided
            let facts = inputs.facts(user, None);
            let pd = model.pd(&row_of(user, None), &device)[0];
            // batches pad to different widths, so f32 sums may differ in the last bits
            assert!(
                (pd - pds.value(row)).abs() < 1e-5,
                "{pd} vs {}",
                pds.value(row)
            );
            assert_eq!(
                policy.decide(pd, &facts).credit_limit,
                limits_now.value(row)
            );
            for item in shown.value(row).split(';') {
                let (family, amount) = item.split_once("=+").expect("family=+amount");
                let amount: f64 = amount.parse().unwrap();
                let certificate = candidates.iter().find(|c| c.family == family).unwrap();
                let feature = dictionary.id(&format!(
                    "certificate[cert_type_id={}]",
                    certificate.cert_type_id
                ));
                let pd_with = model.pd(&row_of(user, feature), &device)[0];
                let mut with = facts.clone();
                with.certificates.push(certificate.clone());
                let gained = policy.decide(pd_with, &with).credit_limit - limits_now.value(row);
                assert_eq!(gained, amount, "user {user}: {item}");
                assert!(amount > 0.0);
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} users had suggestions");
}

#[tokio::test]
async fn evaluating_and_comparing_leave_the_root_as_it_was() {
    let store = Store::open("memory://read-only-window").unwrap();
    synth_world(&store, 1_500, 8).await;
    let pipelines = Pipelines::builtin();
    nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let everything = async || {
        let mut all = store.list("").await.unwrap();
        all.sort();
        all
    };
    let before = everything().await;
    // another date: its features, quarantine and any new dictionary names would be new objects
    let later = run_date() + chrono::Duration::days(3);
    let window = training::labelled_window(&store, later, &pipelines, Writes::Nothing)
        .await
        .unwrap();
    assert!(window.set.rows.len() > 1_000);
    assert_eq!(everything().await, before);
    // the same window for training writes them
    training::labelled_window(&store, later, &pipelines, Writes::Everything)
        .await
        .unwrap();
    let after = everything().await;
    assert!(after.iter().any(|(path, _)| path.starts_with(&format!(
        "features/dt={}",
        later - chrono::Duration::days(90)
    ))));
}

#[tokio::test]
async fn a_protected_attribute_is_never_given_as_a_reason() {
    // the same world and model twice: age_band protected (shipped), and not
    let mut unprotected = Pipelines::builtin();
    for family in &mut unprotected.features.families {
        family.protected = false;
    }
    let mut mentions = Vec::new();
    let mut versions = Vec::new();
    for (name, pipelines) in [("shipped", Pipelines::builtin()), ("open", unprotected)] {
        let store = Store::open(&format!("memory://protected-{name}")).unwrap();
        synth_world(&store, 3_000, 12).await;
        let report = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
            .await
            .unwrap();
        versions.push(report.model_version.clone());
        let (_, batches) = published(&store).await;
        let with_age: usize = batches
            .iter()
            .map(|b| {
                let reasons = str_column(b, "reasons");
                (0..b.num_rows())
                    .filter(|&i| reasons.value(i).contains("age_band"))
                    .count()
            })
            .sum();
        mentions.push(with_age);
    }
    assert_eq!(versions[0], versions[1], "the model is the same either way");
    assert_eq!(mentions[0], 0, "protected: never a reason");

    // excluded from the model: age moves no score
    let mut excluding = Pipelines::builtin();
    excluding.nightly.training.exclude_protected = true;
    let store = Store::open("memory://protected-excluded").unwrap();
    synth_world(&store, 3_000, 12).await;
    let report = nightly::run(&store, run_date(), &excluding, DeviceKind::Cpu)
        .await
        .unwrap();
    let device = DeviceKind::Cpu.device().unwrap();
    let model = model::load(&store, &report.model_version, &device)
        .await
        .unwrap();
    assert!(model.card.training.exclude_protected);
    assert!(
        model
            .card
            .limitations
            .iter()
            .any(|l| l.contains("age_band")),
        "{:?}",
        model.card.limitations
    );
    let dictionary = redflower::features::FeatureDictionary::load(&store)
        .await
        .unwrap();
    let age: Vec<bool> = dictionary.families().map(|f| f == "age_band").collect();
    assert!(age.iter().any(|a| *a));
    let rows = redflower::dataset::Csr::from_features(
        &redflower::features::read(&store, run_date()).await.unwrap(),
    );
    assert!(
        rows.ids.iter().any(|&id| age[id as usize]),
        "rows carry age"
    );
    assert_eq!(
        model.pd(&rows, &device),
        model.pd(&rows.without(&age), &device)
    );
    assert!(
        mentions[1] > 0,
        "unprotected, age is a reason for some users"
    );
}
