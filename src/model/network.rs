//! The network: a sparse logistic model, written as an embedding bag. Each feature id owns one
//! weight; a user's logit is the bias plus the sum of their features' weights times values.
//! Burn has no sparse tensors or EmbeddingBag, so rows are padded to the batch's longest row
//! with id 0 (a padding weight that never learns, because its values are always 0).

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::dataset::Csr;

#[derive(Module, Debug)]
pub struct SparseLogistic {
    weights: Embedding,
    bias: Param<Tensor<1>>,
}

impl SparseLogistic {
    /// A model over feature ids `0..n_features`, all weights zero: the problem is convex, so
    /// a zero start loses nothing and needs no random seed.
    pub fn new(n_features: usize, device: &Device) -> SparseLogistic {
        SparseLogistic {
            weights: EmbeddingConfig::new(n_features + 1, 1)
                .with_initializer(Initializer::Zeros)
                .init(device),
            bias: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    pub fn n_features(&self) -> usize {
        let [rows, _] = self.weights.weight.shape().dims();
        rows - 1
    }

    /// Logits `[B]` of a padded batch: ids `[B, L]` (feature id + 1, 0 = padding), values `[B, L]`.
    pub fn forward(&self, ids: Tensor<2, Int>, values: Tensor<2>) -> Tensor<1> {
        let weights: Tensor<2> = self.weights.forward(ids).squeeze_dim(2);
        let dot: Tensor<1> = (weights * values).sum_dim(1).squeeze_dim(1);
        dot + self.bias.val()
    }

    /// Feature weights as a plain vector, index = feature id; and the bias.
    pub fn coefficients(&self) -> (Vec<f32>, f32) {
        let weights: Vec<f32> = self
            .weights
            .weight
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap_or_default();
        let bias: Vec<f32> = self
            .bias
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap_or_default();
        (weights[1..].to_vec(), bias.first().copied().unwrap_or(0.0))
    }

    /// Squared L2 norm of the feature weights.
    pub fn l2(&self) -> Tensor<1> {
        self.weights.weight.val().powi_scalar(2).sum()
    }
}

/// Binary cross-entropy from logits, written with log-sigmoid so large logits stay finite.
pub fn bce_with_logits(logits: Tensor<1>, labels: Tensor<1>) -> Tensor<1> {
    let positive = log_sigmoid(logits.clone()) * labels.clone();
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
    pub fn new(csr: &Csr, rows: &[usize], n_features: usize, device: &Device) -> PaddedBatch {
        let width = rows
            .iter()
            .map(|&r| {
                csr.row(r)
                    .0
                    .iter()
                    .filter(|&&id| (id as usize) < n_features)
                    .count()
            })
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; rows.len() * width];
        let mut values = vec![0f32; rows.len() * width];
        for (b, &r) in rows.iter().enumerate() {
            let (row_ids, row_values) = csr.row(r);
            let known = row_ids
                .iter()
                .zip(row_values)
                .filter(|(id, _)| (**id as usize) < n_features);
            for (slot, (id, value)) in known.enumerate() {
                ids[b * width + slot] = *id as i64 + 1;
                values[b * width + slot] = *value;
            }
        }
        PaddedBatch {
            ids: Tensor::from_data(TensorData::new(ids, [rows.len(), width]), device),
            values: Tensor::from_data(TensorData::new(values, [rows.len(), width]), device),
        }
    }
}
