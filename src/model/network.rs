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

    /// The parameters as plain tensors, for a trainer that writes its own gradients
    /// ([`super::flat_step`]): the wide weight and the embedding side by side in one table.
    pub fn parts(&self) -> NetworkParts {
        NetworkParts {
            table: self.table(),
            bias: self.bias.val().reshape([1, 1]),
            deep: self.deep.as_ref().map(|deep| {
                let [_, hidden] = deep.hidden.weight.shape().dims();
                let bias = |layer: &Linear, width: usize| match &layer.bias {
                    Some(bias) => bias.val().reshape([1, width]),
                    None => Tensor::zeros([1, width], &self.bias.device()),
                };
                DeepParts {
                    w1: deep.hidden.weight.val(),
                    b1: bias(&deep.hidden, hidden),
                    w2: deep.output.weight.val(),
                    b2: bias(&deep.output, 1),
                }
            }),
        }
    }

    /// One network whose logit is the mean of `networks`' logits (all of one architecture):
    /// the wide weights and biases averaged, the deep parts side by side (embeddings
    /// concatenated, hidden layers block-diagonal, output weights divided by their number).
    /// So an ensemble scores, explains and saves as a single model.
    pub fn average(networks: &[WideDeep]) -> WideDeep {
        let k = networks.len();
        if k == 1 {
            return networks[0].clone();
        }
        let read = |t: Tensor<2>| -> Vec<f32> {
            t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
        };
        let parts: Vec<NetworkParts> = networks.iter().map(WideDeep::parts).collect();
        let device = parts[0].table.device();
        let [rows, columns] = parts[0].table.dims();
        let dim = columns - 1;
        let tables: Vec<Vec<f32>> = parts.iter().map(|p| read(p.table.clone())).collect();
        let width = 1 + k * dim;
        let mut table = vec![0.0f32; rows * width];
        for r in 0..rows {
            table[r * width] = tables.iter().map(|t| t[r * columns]).sum::<f32>() / k as f32;
            for (j, t) in tables.iter().enumerate() {
                let from = &t[r * columns + 1..(r + 1) * columns];
                table[r * width + 1 + j * dim..r * width + 1 + (j + 1) * dim].copy_from_slice(from);
            }
        }
        let mean_of = |values: Vec<Vec<f32>>| values.iter().map(|v| v[0]).sum::<f32>() / k as f32;
        let bias = mean_of(parts.iter().map(|p| read(p.bias.clone())).collect());
        let tensor = |values: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(values, shape), &device)
        };
        let deep = parts
            .iter()
            .map(|p| p.deep.as_ref())
            .collect::<Option<Vec<_>>>();
        let deep = deep.map(|deep| {
            let [_, hidden] = deep[0].w1.dims();
            let (mut w1, mut b1, mut w2) =
                (vec![0.0f32; k * dim * k * hidden], Vec::new(), Vec::new());
            for (j, d) in deep.iter().enumerate() {
                let block = read(d.w1.clone());
                for row in 0..dim {
                    let at = (j * dim + row) * k * hidden + j * hidden;
                    w1[at..at + hidden].copy_from_slice(&block[row * hidden..(row + 1) * hidden]);
                }
                b1.extend(read(d.b1.clone()));
                w2.extend(read(d.w2.clone()).into_iter().map(|w| w / k as f32));
            }
            DeepParts {
                w1: tensor(w1, [k * dim, k * hidden]),
                b1: tensor(b1, [1, k * hidden]),
                w2: tensor(w2, [k * hidden, 1]),
                b2: tensor(
                    vec![mean_of(deep.iter().map(|d| read(d.b2.clone())).collect())],
                    [1, 1],
                ),
            }
        });
        WideDeep::from_parts(NetworkParts {
            table: tensor(table, [rows, width]),
            bias: tensor(vec![bias], [1, 1]),
            deep,
        })
    }

    /// The same network with the wide weight and embedding of every feature `drop` marks set
    /// to zero: those features no longer move any logit.
    pub fn without_features(&self, drop: &[bool]) -> WideDeep {
        let mut parts = self.parts();
        let [rows, columns] = parts.table.dims();
        let mut table: Vec<f32> = (parts.table.clone().into_data())
            .try_into_vec_as::<f32>()
            .unwrap_or_default();
        for (id, _) in drop.iter().enumerate().filter(|(_, d)| **d) {
            // row 0 is the padding id
            if let Some(row) = table.get_mut((id + 1) * columns..(id + 2) * columns) {
                row.fill(0.0);
            }
        }
        let device = parts.table.device();
        parts.table = Tensor::from_data(TensorData::new(table, [rows, columns]), &device);
        WideDeep::from_parts(parts)
    }

    /// The network of [`WideDeep::parts`]' tensors.
    pub fn from_parts(parts: NetworkParts) -> WideDeep {
        let NetworkParts { table, bias, deep } = parts;
        let device = table.device();
        let [rows, columns] = table.dims();
        let embedding = |weight: Tensor<2>| {
            let [_, dim] = weight.dims();
            let mut embedding = EmbeddingConfig::new(rows, dim)
                .with_initializer(Initializer::Zeros)
                .init(&device);
            embedding.weight = Param::from_tensor(weight);
            embedding
        };
        let linear = |weight: Tensor<2>, bias: Tensor<2>| {
            let [inputs, outputs] = weight.dims();
            let mut linear = LinearConfig::new(inputs, outputs)
                .with_initializer(Initializer::Zeros)
                .init(&device);
            linear.weight = Param::from_tensor(weight);
            linear.bias = Some(Param::from_tensor(bias.reshape([outputs])));
            linear
        };
        WideDeep {
            wide: embedding(table.clone().slice([0..rows, 0..1])),
            bias: Param::from_tensor(bias.reshape([1])),
            deep: deep.map(|d| Deep {
                embedding: embedding(table.slice([0..rows, 1..columns])),
                hidden: linear(d.w1, d.b1),
                output: linear(d.w2, d.b2),
            }),
        }
    }

    /// Every feature's wide weight and embedding side by side, `[n_features + 1, 1 + dim]`.
    fn table(&self) -> Tensor<2> {
        match &self.deep {
            Some(deep) => Tensor::cat(vec![self.wide.weight.val(), deep.embedding.weight.val()], 1),
            None => self.wide.weight.val(),
        }
    }

    /// The network arranged for scoring many batches (see [`Scorer`]).
    pub fn scorer(&self) -> Scorer<'_> {
        Scorer {
            network: self,
            table: self.table(),
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
/// parameters, made once per scoring call. Same logits as [`WideDeep::forward`].
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

/// A network's parameters as plain tensors (see [`WideDeep::parts`]).
pub struct NetworkParts {
    /// `[n_features + 1, 1 + dim]`: the wide weight in column 0, the embedding after it
    pub table: Tensor<2>,
    /// `[1, 1]`
    pub bias: Tensor<2>,
    pub deep: Option<DeepParts>,
}

/// The deep part's layers: `w1 [dim, hidden]`, `b1 [1, hidden]`, `w2 [hidden, 1]`,
/// `b2 [1, 1]`.
pub struct DeepParts {
    pub w1: Tensor<2>,
    pub b1: Tensor<2>,
    pub w2: Tensor<2>,
    pub b2: Tensor<2>,
}

/// What the flat forward pass computes on the way to the logits (the hand-written gradients
/// start from it).
pub struct FlatForward {
    /// `[B, 1 + dim]`: each row's value-weighted sums of its entries' table rows
    pub sums: Tensor<2>,
    /// the hidden layer before and after its ReLU, `[B, hidden]`
    pub hidden: Option<(Tensor<2>, Tensor<2>)>,
    /// `[B, 1]`
    pub logits: Tensor<2>,
}

impl NetworkParts {
    /// The forward pass over a flat batch (the GPU trainer's): a gather of each entry's
    /// table row and a scatter-add into its batch row, then the deep head.
    pub fn forward_flat(&self, batch: &FlatBatch) -> FlatForward {
        let [entries, _] = batch.ids.dims();
        let [_, columns] = self.table.dims();
        let rows = batch.batch_rows;
        let gathered = self
            .table
            .clone()
            .gather(0, batch.ids.clone().expand([entries, columns]));
        let sums = Tensor::<2>::zeros([rows, columns], &self.table.device()).scatter(
            0,
            batch.rows.clone().expand([entries, columns]),
            gathered * batch.values.clone(),
            IndexingUpdateOp::Add,
        );
        let wide = sums.clone().slice([0..rows, 0..1]) + self.bias.clone();
        let Some(deep) = &self.deep else {
            return FlatForward {
                sums,
                hidden: None,
                logits: wide,
            };
        };
        let bag = sums.clone().slice([0..rows, 1..columns]);
        let before = bag.matmul(deep.w1.clone()) + deep.b1.clone();
        let after = relu(before.clone());
        let deep_logits = after.clone().matmul(deep.w2.clone());
        FlatForward {
            sums,
            hidden: Some((before, after)),
            logits: wide + deep_logits + deep.b2.clone(),
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

/// How training batches reach the device, and so how gradients are taken. Padded rows through
/// Burn's autodiff suit the CPU backend, whose embedding gradient walks them directly; GPUs
/// train on flat entries with hand-written gradients (see [`super::flat_step`]). Both give
/// the same steps up to float rounding.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_average_network_gives_the_mean_of_the_logits() {
        let device = Device::flex();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut random = |shape: [usize; 2]| {
            let values: Vec<f32> = (0..shape[0] * shape[1])
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, shape), &device)
        };
        let (rows, dim, hidden) = (7, 3, 4);
        for deep in [false, true] {
            let networks: Vec<WideDeep> = (0..3)
                .map(|_| {
                    let columns = if deep { 1 + dim } else { 1 };
                    WideDeep::from_parts(NetworkParts {
                        table: random([rows, columns]),
                        bias: random([1, 1]),
                        deep: deep.then(|| DeepParts {
                            w1: random([dim, hidden]),
                            b1: random([1, hidden]),
                            w2: random([hidden, 1]),
                            b2: random([1, 1]),
                        }),
                    })
                })
                .collect();
            let average = WideDeep::average(&networks);
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(vec![1i32, 2, 0, 3, 6, 5, 0, 0, 0], [3, 3]),
                &device,
            );
            let values = Tensor::<2>::from_data(
                TensorData::new(
                    vec![1.0f32, -0.5, 0.0, 2.0, 1.0, 0.3, 0.0, 0.0, 0.0],
                    [3, 3],
                ),
                &device,
            );
            let read = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
            let mut mean = vec![0.0f32; 3];
            for network in &networks {
                let logits = read(network.forward(ids.clone(), values.clone()));
                mean.iter_mut().zip(logits).for_each(|(m, z)| *m += z / 3.0);
            }
            let averaged = read(average.forward(ids.clone(), values.clone()));
            for (m, a) in mean.iter().zip(&averaged) {
                assert!((m - a).abs() < 1e-5, "deep {deep}: {mean:?} {averaged:?}");
            }
            let expected_dim = if deep { 3 * dim } else { 0 };
            assert_eq!(average.architecture().embedding_dim, expected_dim);
        }
    }

    #[test]
    fn parts_rebuild_the_same_network() {
        let device = Device::flex();
        for embedding_dim in [0, 3] {
            let architecture = Architecture {
                n_features: 6,
                embedding_dim,
                hidden: 4,
            };
            let network = WideDeep::new(architecture, 5, &device);
            let rebuilt = WideDeep::from_parts(network.parts());
            assert_eq!(rebuilt.architecture(), network.architecture());
            assert_eq!(rebuilt.learned_values(), network.learned_values());
        }
    }
}
