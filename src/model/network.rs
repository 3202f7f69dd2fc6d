//! The network: wide & deep over sparse rows.
//!
//! - wide: one weight per feature id, logit = bias + sum(weight * value). Exactly additive, so
//!   each feature's contribution is a reason code.
//! - deep: an embedding bag of the same ids (value-weighted sum of `embedding_dim` vectors)
//!   through a ReLU MLP to one more logit. The strong facts (occupation, region, income band,
//!   age band, city tier) are indicator ids, so the bag is where their interactions with each
//!   other and with behaviour are learned.
//!
//! Burn has no sparse tensors or EmbeddingBag, so rows are padded to the batch's longest row
//! with id 0, a padding slot whose value is always 0 and so never learns or contributes.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::{log_sigmoid, relu};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::Csr;

/// Ids travel to the device as i32 (every backend's default integer), padding at 0.
pub const MAX_FEATURES: usize = i32::MAX as usize - 1;

/// The shape of a network, saved with the model so it can be rebuilt before loading weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub n_features: usize,
    /// 0: the wide part alone (sparse logistic regression)
    pub embedding_dim: usize,
    pub hidden: usize,
}

impl Architecture {
    pub fn kind(&self) -> &'static str {
        if self.embedding_dim == 0 {
            "sparse_logistic"
        } else {
            "wide_and_deep"
        }
    }
}

#[derive(Module, Debug)]
pub struct Deep {
    embedding: Embedding,
    hidden: Linear,
    output: Linear,
}

impl Deep {
    /// The deep logit `[B]` of a batch's embedding bags `[B, embedding_dim]`.
    fn head(&self, bag: Tensor<2>) -> Tensor<1> {
        let hidden = relu(self.hidden.forward(bag));
        self.output.forward(hidden).squeeze_dim(1)
    }
}

#[derive(Module, Debug)]
pub struct WideDeep {
    wide: Embedding,
    bias: Param<Tensor<1>>,
    deep: Option<Deep>,
}

impl WideDeep {
    /// Wide weights start at zero (the wide problem is convex, a zero start loses nothing);
    /// the deep part starts from a generator seeded with `seed`, not the device's shared one,
    /// so two trainings in one process (or in parallel tests) cannot disturb each other.
    pub fn new(architecture: Architecture, seed: u64, device: &Device) -> WideDeep {
        assert!(
            architecture.n_features <= MAX_FEATURES,
            "{} features: a network takes at most {MAX_FEATURES}",
            architecture.n_features
        );
        let rows = architecture.n_features + 1;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DEE9);
        let deep = (architecture.embedding_dim > 0).then(|| {
            let (dim, hidden) = (architecture.embedding_dim, architecture.hidden.max(1));
            let mut embedding = EmbeddingConfig::new(rows, dim)
                .with_initializer(Initializer::Zeros)
                .init(device);
            embedding.weight =
                Param::from_tensor(random(&mut rng, [rows, dim], 0.01, true, device));
            let mut hidden_layer = LinearConfig::new(dim, hidden)
                .with_initializer(Initializer::Zeros)
                .init(device);
            // uniform in +-1/sqrt(fan_in), as common Linear initialisations do
            let bound = 1.0 / (dim as f64).sqrt();
            hidden_layer.weight =
                Param::from_tensor(random(&mut rng, [dim, hidden], bound, false, device));
            hidden_layer.bias = Some(Param::from_tensor(
                random(&mut rng, [1, hidden], bound, false, device).reshape([hidden]),
            ));
            Deep {
                embedding,
                hidden: hidden_layer,
                // the deep logit starts at zero: training begins from the wide model
                output: LinearConfig::new(hidden, 1)
                    .with_initializer(Initializer::Zeros)
                    .init(device),
            }
        });
        WideDeep {
            wide: EmbeddingConfig::new(rows, 1)
                .with_initializer(Initializer::Zeros)
                .init(device),
            bias: Param::from_tensor(Tensor::zeros([1], device)),
            deep,
        }
    }

    pub fn architecture(&self) -> Architecture {
        let [rows, _] = self.wide.weight.shape().dims();
        let (embedding_dim, hidden) = self.deep.as_ref().map_or((0, 0), |d| {
            let [_, dim] = d.embedding.weight.shape().dims();
            let [_, hidden] = d.hidden.weight.shape().dims();
            (dim, hidden)
        });
        Architecture {
            n_features: rows - 1,
            embedding_dim,
            hidden,
        }
    }

    pub fn n_features(&self) -> usize {
        self.architecture().n_features
    }

    /// The wide logit (bias included) and the deep logit `[B]` of a padded batch: ids `[B, L]`
    /// (feature id + 1, 0 = padding), values `[B, L]`. The model's logit is their sum.
    pub fn forward_parts(&self, ids: Tensor<2, Int>, values: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
        let weights: Tensor<2> = self.wide.forward(ids.clone()).squeeze_dim(2);
        let wide: Tensor<1> =
            (weights * values.clone()).sum_dim(1).squeeze_dim(1) + self.bias.val();
        let deep = match &self.deep {
            Some(deep) => {
                let vectors: Tensor<3> = deep.embedding.forward(ids);
                let bag: Tensor<2> = (vectors * values.unsqueeze_dim(2))
                    .sum_dim(1)
                    .squeeze_dim(1);
                deep.head(bag)
            }
            None => wide.zeros_like(),
        };
        (wide, deep)
    }

    /// Logits `[B]` of a padded batch.
    pub fn forward(&self, ids: Tensor<2, Int>, values: Tensor<2>) -> Tensor<1> {
        let (wide, deep) = self.forward_parts(ids, values);
        wide + deep
    }

    /// Logits `[B]` of a flat batch: the same sums as [`WideDeep::forward`], written as a
    /// gather of each entry's parameters and a scatter-add into its row. Autodiff turns the
    /// gather into a scatter-add and the scatter into a gather, both one unit per entry (the
    /// adds atomic on GPUs). `forward`'s embedding lookup differentiates into Burn's
    /// `select_assign`, which on the cubecl backends runs one unit per embedding column
    /// walking every id of the batch in turn: one GPU thread for the wide part.
    pub fn forward_flat(&self, batch: FlatBatch) -> Tensor<1> {
        let FlatBatch {
            ids,
            rows,
            values,
            batch_rows,
        } = batch;
        let [entries, _] = ids.dims();
        let bias = self.bias.val();
        let device = bias.device();
        let weights: Tensor<2> = self.wide.weight.val().gather(0, ids.clone());
        let wide = Tensor::<2>::zeros([batch_rows, 1], &device)
            .scatter(
                0,
                rows.clone(),
                weights * values.clone(),
                IndexingUpdateOp::Add,
            )
            .squeeze_dim(1)
            + bias;
        match &self.deep {
            Some(deep) => {
                let [_, dim] = deep.embedding.weight.shape().dims();
                let vectors: Tensor<2> = deep
                    .embedding
                    .weight
                    .val()
                    .gather(0, ids.expand([entries, dim]));
                let bag = Tensor::<2>::zeros([batch_rows, dim], &device).scatter(
                    0,
                    rows.expand([entries, dim]),
                    vectors * values,
                    IndexingUpdateOp::Add,
                );
                wide + deep.head(bag)
            }
            None => wide,
        }
    }

    /// The network arranged for scoring many batches (see [`Scorer`]).
    pub fn scorer(&self) -> Scorer<'_> {
        let table = match &self.deep {
            Some(deep) => Tensor::cat(vec![self.wide.weight.val(), deep.embedding.weight.val()], 1),
            None => self.wide.weight.val(),
        };
        Scorer {
            network: self,
            table,
        }
    }

    /// Wide weights as a plain vector, index = feature id; and the bias.
    pub fn coefficients(&self) -> (Vec<f32>, f32) {
        let weights = to_vec(self.wide.weight.val().reshape([-1]));
        let bias = to_vec(self.bias.val());
        (weights[1..].to_vec(), bias.first().copied().unwrap_or(0.0))
    }

    /// Every learned value in a fixed order (wide weights, bias, then the deep part's
    /// tensors), for the version hash: the same values always give the same version.
    pub fn learned_values(&self) -> Vec<f32> {
        let (mut values, bias) = self.coefficients();
        values.push(bias);
        if let Some(deep) = &self.deep {
            values.extend(to_vec(deep.embedding.weight.val().reshape([-1])));
            for layer in [&deep.hidden, &deep.output] {
                values.extend(to_vec(layer.weight.val().reshape([-1])));
                if let Some(bias) = &layer.bias {
                    values.extend(to_vec(bias.val()));
                }
            }
        }
        values
    }

    /// L2 penalty of the per-feature parameters (wide weights and embeddings): each feature's
    /// squared norm times its entry of `per_feature` `[n_features + 1]`.
    pub fn l2(&self, per_feature: Tensor<1>) -> Tensor<1> {
        let [rows, _] = self.wide.weight.shape().dims();
        let mut squares = self.wide.weight.val().powi_scalar(2).reshape([rows]);
        if let Some(deep) = &self.deep {
            squares = squares
                + deep
                    .embedding
                    .weight
                    .val()
                    .powi_scalar(2)
                    .sum_dim(1)
                    .reshape([rows]);
        }
        (squares * per_feature).sum()
    }
}

/// A trained network for scoring: every feature's wide weight and embedding side by side in
/// one table `[n_features + 1, 1 + embedding_dim]`, so a batch costs one gather and one
/// value-weighted sum instead of two of each. The table is a copy of the per-feature
/// parameters, made once per scoring call; training keeps them apart, where the copy (and
/// its gradient) would be paid at every step. Same logits as [`WideDeep::forward`].
pub struct Scorer<'a> {
    network: &'a WideDeep,
    table: Tensor<2>,
}

impl Scorer<'_> {
    /// Logits `[B]` of a padded batch (as [`WideDeep::forward`]).
    pub fn forward(&self, ids: Tensor<2, Int>, values: Tensor<2>) -> Tensor<1> {
        let [batch, width] = ids.dims();
        let [_, columns] = self.table.dims();
        let gathered: Tensor<3> = self
            .table
            .clone()
            .select(0, ids.reshape([batch * width]))
            .reshape([batch, width, columns]);
        // [B, 1, L] x [B, L, 1 + embedding_dim]: the value-weighted sum of each row's table
        // rows as one product (the wide sum in column 0, the embedding bag after it), without
        // the [B, L, 1 + embedding_dim] intermediate a multiply and a sum would write. (In
        // training the same product was slower: its backward is one small product per row.)
        let sums: Tensor<2> = values.unsqueeze_dim::<3>(1).matmul(gathered).squeeze_dim(1);
        let wide = sums.clone().slice([0..batch, 0..1]).squeeze_dim(1) + self.network.bias.val();
        match &self.network.deep {
            Some(deep) => wide + deep.head(sums.slice([0..batch, 1..columns])),
            None => wide,
        }
    }
}

/// A `[rows, cols]` tensor of N(0, scale²) (`normal`) or U(-scale, scale) values.
fn random(
    rng: &mut ChaCha8Rng,
    [rows, cols]: [usize; 2],
    scale: f64,
    normal: bool,
    device: &Device,
) -> Tensor<2> {
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            if normal {
                // Box-Muller
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * scale) as f32
            } else {
                ((rng.random::<f64>() * 2.0 - 1.0) * scale) as f32
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

fn to_vec(tensor: Tensor<1>) -> Vec<f32> {
    tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_default()
}

/// Binary cross-entropy from logits, written with log-sigmoid so large logits stay finite;
/// defaults weigh `positive_weight` times a non-default (class imbalance).
pub fn bce_with_logits(logits: Tensor<1>, labels: Tensor<1>, positive_weight: f64) -> Tensor<1> {
    let positive = log_sigmoid(logits.clone()) * labels.clone().mul_scalar(positive_weight);
    let negative = log_sigmoid(logits.neg()) * labels.neg().add_scalar(1.0);
    (positive + negative).mean().neg()
}

/// A padded batch of CSR rows; features the model does not know (ids >= n_features) are
/// dropped, which is what a model trained on an older dictionary must do with new features.
pub struct PaddedBatch {
    pub ids: Tensor<2, Int>,
    pub values: Tensor<2>,
}

impl PaddedBatch {
    /// [`PaddedRows::new`] uploaded to `device`.
    pub fn new(csr: &Csr, rows: &[usize], n_features: usize, device: &Device) -> PaddedBatch {
        PaddedRows::new(csr, rows, n_features).upload(device)
    }
}

/// A padded batch still on the host: `rows x width` ids and values, row-major.
pub struct PaddedRows {
    pub ids: Vec<i32>,
    pub values: Vec<f32>,
    pub rows: usize,
    pub width: usize,
}

impl PaddedRows {
    /// Rows are copied into the padded buffers in parallel (rayon), a slice of each per row.
    /// The width is the longest row's length, read from the offsets; a row's unknown ids
    /// leave padding at its end.
    pub fn new(csr: &Csr, rows: &[usize], n_features: usize) -> PaddedRows {
        let known = |r: usize| {
            let (ids, values) = csr.row(r);
            ids.iter()
                .zip(values)
                .filter(move |(id, _)| (**id as usize) < n_features)
        };
        let width = rows
            .iter()
            .map(|&r| csr.offsets[r + 1] - csr.offsets[r])
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i32; rows.len() * width];
        let mut values = vec![0f32; rows.len() * width];
        ids.par_chunks_mut(width)
            .zip(values.par_chunks_mut(width))
            .zip(rows.par_iter())
            .for_each(|((id_slots, value_slots), &r)| {
                for (slot, (id, value)) in known(r).enumerate() {
                    // fits: ids are below n_features <= MAX_FEATURES
                    id_slots[slot] = *id as i32 + 1;
                    value_slots[slot] = *value;
                }
            });
        PaddedRows {
            ids,
            values,
            rows: rows.len(),
            width,
        }
    }

    pub fn upload(self, device: &Device) -> PaddedBatch {
        let shape = [self.rows, self.width];
        PaddedBatch {
            ids: Tensor::from_data(TensorData::new(self.ids, shape), device),
            values: Tensor::from_data(TensorData::new(self.values, shape), device),
        }
    }
}

/// A batch of CSR rows as its entries alone, without padding: each known entry's id (feature
/// id + 1, as in [`PaddedBatch`]), its row within the batch and its value, all `[entries, 1]`.
/// A batch without a known entry holds one padding entry, so no tensor is empty.
pub struct FlatBatch {
    pub ids: Tensor<2, Int>,
    pub rows: Tensor<2, Int>,
    pub values: Tensor<2>,
    pub batch_rows: usize,
}

/// A flat batch still on the host.
pub struct FlatRows {
    pub ids: Vec<i32>,
    pub rows: Vec<i32>,
    pub values: Vec<f32>,
    pub batch_rows: usize,
}

impl FlatRows {
    /// Features the model does not know (ids >= n_features) are dropped, as in
    /// [`PaddedRows::new`].
    pub fn new(csr: &Csr, rows: &[usize], n_features: usize) -> FlatRows {
        let capacity: usize = rows
            .iter()
            .map(|&r| csr.offsets[r + 1] - csr.offsets[r])
            .sum();
        let mut flat = FlatRows {
            ids: Vec::with_capacity(capacity),
            rows: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
            batch_rows: rows.len(),
        };
        for (position, &r) in rows.iter().enumerate() {
            let (ids, values) = csr.row(r);
            for (id, value) in ids.iter().zip(values) {
                if (*id as usize) < n_features {
                    // fits: ids are below n_features <= MAX_FEATURES, rows below a batch's
                    // size (at most 2^20, see TrainingConfig::check)
                    flat.ids.push(*id as i32 + 1);
                    flat.rows.push(position as i32);
                    flat.values.push(*value);
                }
            }
        }
        if flat.ids.is_empty() {
            flat.ids.push(0);
            flat.rows.push(0);
            flat.values.push(0.0);
        }
        flat
    }

    pub fn upload(self, device: &Device) -> FlatBatch {
        let shape = [self.ids.len(), 1];
        FlatBatch {
            ids: Tensor::from_data(TensorData::new(self.ids, shape), device),
            rows: Tensor::from_data(TensorData::new(self.rows, shape), device),
            values: Tensor::from_data(TensorData::new(self.values, shape), device),
            batch_rows: self.batch_rows,
        }
    }
}

/// How training batches reach the device. Padded rows suit the CPU backend, whose embedding
/// gradient walks them directly; GPUs train on flat entries (see [`WideDeep::forward_flat`]).
/// Both give the same logits and gradients up to float rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLayout {
    Padded,
    Flat,
}

impl BatchLayout {
    /// The layout measured faster on `device` (benches/README.md); `REDFLOWER_BATCH_LAYOUT`
    /// = `padded` or `flat` overrides it, so the models bench can compare the two.
    pub fn for_device(device: &Device) -> BatchLayout {
        match std::env::var("REDFLOWER_BATCH_LAYOUT").as_deref() {
            Ok("padded") => BatchLayout::Padded,
            Ok("flat") => BatchLayout::Flat,
            _ if *device == Device::flex() => BatchLayout::Padded,
            _ => BatchLayout::Flat,
        }
    }

    pub fn build(self, csr: &Csr, rows: &[usize], n_features: usize) -> HostBatch {
        match self {
            BatchLayout::Padded => HostBatch::Padded(PaddedRows::new(csr, rows, n_features)),
            BatchLayout::Flat => HostBatch::Flat(FlatRows::new(csr, rows, n_features)),
        }
    }
}

/// A training batch built on the host, in either layout.
pub enum HostBatch {
    Padded(PaddedRows),
    Flat(FlatRows),
}

impl HostBatch {
    pub fn upload(self, device: &Device) -> Batch {
        match self {
            HostBatch::Padded(rows) => Batch::Padded(rows.upload(device)),
            HostBatch::Flat(rows) => Batch::Flat(rows.upload(device)),
        }
    }
}

/// A training batch on the device, in either layout.
pub enum Batch {
    Padded(PaddedBatch),
    Flat(FlatBatch),
}

impl WideDeep {
    /// Logits `[B]` of a batch in either layout.
    pub fn forward_batch(&self, batch: Batch) -> Tensor<1> {
        match batch {
            Batch::Padded(batch) => self.forward(batch.ids, batch.values),
            Batch::Flat(batch) => self.forward_flat(batch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of 0 to 11 entries over 30 known features, some with an id the network does not
    /// know (30 or above), which both layouts must drop.
    fn ragged_rows() -> Csr {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for user in 0..64u64 {
            csr.users.push(user);
            for _ in 0..(user % 12) {
                csr.ids.push(rng.random_range(0..33));
                csr.values.push(rng.random_range(0.1..2.0));
            }
            csr.offsets.push(csr.ids.len());
        }
        csr
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs()))
    }

    fn flat(tensor: Tensor<2>) -> Vec<f32> {
        to_vec(tensor.reshape([-1]))
    }

    #[test]
    fn flat_batches_give_the_padded_logits_and_gradients() {
        let device = Device::flex().autodiff();
        let architecture = Architecture {
            n_features: 30,
            embedding_dim: 3,
            hidden: 5,
        };
        let network = WideDeep::new(architecture, 3, &device);
        // non-zero wide weights, so the wide part's sums are checked too
        let mut network = network;
        network.wide.weight = Param::from_tensor(random(
            &mut ChaCha8Rng::seed_from_u64(9),
            [31, 1],
            0.5,
            false,
            &device,
        ));
        let csr = ragged_rows();
        let rows: Vec<usize> = (0..csr.len()).rev().collect();
        let mut results = Vec::new();
        for layout in [BatchLayout::Padded, BatchLayout::Flat] {
            let batch = layout.build(&csr, &rows, 30).upload(&device);
            let logits = network.forward_batch(batch);
            let values = to_vec(logits.clone());
            // a loss that weighs each row differently, so a row mix-up shows in the gradients
            let weights: Vec<f32> = (0..rows.len()).map(|i| i as f32 - 20.0).collect();
            let weights = Tensor::<1>::from_data(TensorData::new(weights, [rows.len()]), &device);
            let grads = (logits * weights).sum().backward();
            let deep = network.deep.as_ref().expect("a deep part");
            let wide_grad = network.wide.weight.grad(&grads).expect("wide gradient");
            let embedding_grad = deep
                .embedding
                .weight
                .grad(&grads)
                .expect("embedding gradient");
            results.push((values, flat(wide_grad), flat(embedding_grad)));
        }
        let (padded, flat_layout) = (&results[0], &results[1]);
        assert!(close(&padded.0, &flat_layout.0), "logits differ");
        assert!(close(&padded.1, &flat_layout.1), "wide gradients differ");
        assert!(
            close(&padded.2, &flat_layout.2),
            "embedding gradients differ"
        );
        // the unknown ids were dropped, not folded into another feature's gradient
        assert!(padded.1.iter().any(|g| *g != 0.0));
    }

    #[test]
    fn a_flat_batch_without_known_features_scores_the_bias() {
        let device = Device::flex();
        let architecture = Architecture {
            n_features: 2,
            embedding_dim: 0,
            hidden: 0,
        };
        let network = WideDeep::new(architecture, 1, &device);
        let csr = Csr {
            users: vec![1, 2],
            offsets: vec![0, 1, 1],
            ids: vec![5],
            values: vec![1.0],
        };
        let batch = BatchLayout::Flat.build(&csr, &[0, 1], 2).upload(&device);
        assert_eq!(to_vec(network.forward_batch(batch)), vec![0.0, 0.0]);
    }
}
