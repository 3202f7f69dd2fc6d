//! Training steps on flat batches with the gradients and Adam written out by hand: the GPU
//! trainer. On a GPU a step through Burn's autodiff and `Adam` was ~200 tensor operations (a
//! dozen for each parameter's update alone), and dispatching them from the host, not the
//! GPU's arithmetic, set the pace (benches/README.md). Written out, a step is a few dozen
//! operations that kernel fusion merges further: one gather and one scatter-add each way for
//! every feature's wide weight and embedding together (side by side in one table, as in the
//! scorer), the hidden layer's weight gradient as a reduction over the batch (Burn's matmul
//! kernel walks a 4096-row inner dimension serially), and one element-wise pass per
//! parameter for Adam.
//!
//! The same model, loss, L2 penalty and Adam (Burn's, with its defaults) as the autodiff
//! trainer, so the two take the same steps up to float rounding; a test in `train` holds
//! them to it. Owns the training-time copy of the parameters and Adam's moments; touches
//! nothing else.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, IndexingUpdateOp, Tensor};

use super::network::{DeepParts, FlatBatch, FlatForward, NetworkParts, WideDeep};
use super::step_profile::{Phase, StepProfile};

/// Burn's `AdamConfig` defaults, which the autodiff trainer uses.
const BETA_1: f64 = 0.9;
const BETA_2: f64 = 0.999;
const EPSILON: f64 = 1e-5;

/// One parameter and Adam's two moments of it.
struct Slot {
    value: Tensor<2>,
    moment_1: Tensor<2>,
    moment_2: Tensor<2>,
}

impl Slot {
    fn new(value: Tensor<2>) -> Slot {
        Slot {
            moment_1: value.zeros_like(),
            moment_2: value.zeros_like(),
            value,
        }
    }

    /// Burn's Adam update, element-wise (fusion makes it one kernel): the moments, then the
    /// value moved by `learning_rate` times the bias-corrected ratio.
    fn update(&mut self, grad: Tensor<2>, learning_rate: f64, time: i32) {
        let moment_1 =
            self.moment_1.clone().mul_scalar(BETA_1) + grad.clone().mul_scalar(1.0 - BETA_1);
        let moment_2 =
            self.moment_2.clone().mul_scalar(BETA_2) + grad.square().mul_scalar(1.0 - BETA_2);
        let correction_2 = (1.0 - BETA_2.powi(time)).sqrt();
        let factor = correction_2 / (1.0 - BETA_1.powi(time));
        let step = moment_1.clone().mul_scalar(factor * learning_rate)
            / moment_2.clone().sqrt().add_scalar(EPSILON * correction_2);
        self.value = self.value.clone() - step;
        self.moment_1 = moment_1;
        self.moment_2 = moment_2;
    }
}

/// The deep part's parameters: `w1 [dim, hidden]`, `b1 [1, hidden]`, `w2 [hidden, 1]`,
/// `b2 [1, 1]`.
struct DeepSlots {
    w1: Slot,
    b1: Slot,
    w2: Slot,
    b2: Slot,
}

/// Every parameter's gradient from one batch, in [`FlatTrainer`]'s order.
struct Gradients {
    table: Tensor<2>,
    bias: Tensor<2>,
    /// `w1`, `b1`, `w2`, `b2`
    deep: Option<[Tensor<2>; 4]>,
}

/// A network being trained on flat batches, with Adam's state.
pub struct FlatTrainer {
    /// every feature's wide weight (column 0) and embedding side by side, `[n_features + 1,
    /// 1 + dim]`; row 0 is the padding id
    table: Slot,
    bias: Slot,
    deep: Option<DeepSlots>,
    /// each table row's multiple of the L2 penalty, `[n_features + 1, 1]`
    penalty: Tensor<2>,
    steps: i32,
}

/// The settings a step needs.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub learning_rate: f64,
    pub positive_weight: f64,
    /// the L2 penalty's coefficient in a step's loss (per-feature multiples apart)
    pub l2: f64,
}

impl FlatTrainer {
    /// Starts from `network`'s parameters (on a device without autodiff); `penalty` is each
    /// feature's multiple of the L2 penalty, slot 0 for the padding id.
    pub fn new(network: &WideDeep, penalty: Tensor<1>) -> FlatTrainer {
        let NetworkParts { table, bias, deep } = network.parts();
        let [rows] = penalty.dims();
        FlatTrainer {
            table: Slot::new(table),
            bias: Slot::new(bias),
            deep: deep.map(|d| DeepSlots {
                w1: Slot::new(d.w1),
                b1: Slot::new(d.b1),
                w2: Slot::new(d.w2),
                b2: Slot::new(d.b2),
            }),
            penalty: penalty.reshape([rows, 1]),
            steps: 0,
        }
    }

    /// The network as it stands, for validation and keeping.
    pub fn network(&self) -> WideDeep {
        WideDeep::from_parts(self.parts())
    }

    pub fn device(&self) -> Device {
        self.table.value.device()
    }

    /// One gradient step on `batch` with `labels` (`[B]`, 1 = default); the batch's weighted
    /// cross-entropy summed over its rows, left on the device.
    pub fn step(
        &mut self,
        batch: FlatBatch,
        labels: Tensor<1>,
        settings: StepSettings,
        profile: &mut StepProfile,
    ) -> Tensor<1> {
        let rows = batch.batch_rows;
        let forward = self.parts().forward_flat(&batch);
        let labels = labels.reshape([rows, 1]);
        // per row: -(w y log σ(z) + (1 - y) log σ(-z)), and log σ(-z) = log σ(z) - z
        let log_p = log_sigmoid(forward.logits.clone());
        let weighted = labels.clone().mul_scalar(settings.positive_weight);
        let negatives = labels.neg().add_scalar(1.0);
        let loss = (weighted.clone() * log_p.clone()
            + negatives.clone() * (log_p.clone() - forward.logits.clone()))
        .sum()
        .neg();
        // d loss / d logit of the batch's mean: (w y (p - 1) + (1 - y) p) / B
        let p = log_p.exp();
        let d_logits =
            (weighted * p.clone().sub_scalar(1.0) + negatives * p).div_scalar(rows as f64);
        profile.mark(Phase::Forward);
        let gradients = self.gradients(batch, forward, d_logits, settings.l2);
        profile.mark(Phase::Backward);
        self.update(gradients, settings.learning_rate);
        profile.mark(Phase::Optimizer);
        loss
    }

    /// The parameters as they stand (handles, not copies).
    fn parts(&self) -> NetworkParts {
        NetworkParts {
            table: self.table.value.clone(),
            bias: self.bias.value.clone(),
            deep: self.deep.as_ref().map(|d| DeepParts {
                w1: d.w1.value.clone(),
                b1: d.b1.value.clone(),
                w2: d.w2.value.clone(),
                b2: d.b2.value.clone(),
            }),
        }
    }

    /// Every parameter's gradient from `d_logits` `[B, 1]`, the L2 penalty's included.
    fn gradients(
        &self,
        batch: FlatBatch,
        forward: FlatForward,
        d_logits: Tensor<2>,
        l2: f64,
    ) -> Gradients {
        let rows = batch.batch_rows;
        let [entries, _] = batch.ids.dims();
        let [table_rows, columns] = self.table.value.dims();
        let d_bias = d_logits.clone().sum_dim(0);
        let (d_sums, deep) = match (&self.deep, forward.hidden) {
            (Some(deep), Some((before, after))) => {
                let [_, hidden] = after.dims();
                let d_w2 = (after * d_logits.clone()).sum_dim(0).reshape([hidden, 1]);
                let d_after = d_logits.clone() * deep.w2.value.clone().reshape([1, hidden]);
                let d_before = d_after.mask_fill(before.lower_equal_elem(0.0), 0.0);
                // the hidden layer's weight gradient as a reduction over the batch: a matmul
                // kernel would walk the batch serially in each of its few units
                let bag = forward.sums.slice([0..rows, 1..columns]);
                let d_w1 = (bag.unsqueeze_dim::<3>(2) * d_before.clone().unsqueeze_dim::<3>(1))
                    .sum_dim(0)
                    .reshape([columns - 1, hidden]);
                let d_bag = d_before.clone().matmul(deep.w1.value.clone().transpose());
                let d_b1 = d_before.sum_dim(0);
                let d_sums = Tensor::cat(vec![d_logits, d_bag], 1);
                (d_sums, Some([d_w1, d_b1, d_w2, d_bias.clone()]))
            }
            _ => (d_logits, None),
        };
        // each entry's share of its row's gradient, added into its feature's table row
        let d_entries = d_sums.gather(0, batch.rows.expand([entries, columns])) * batch.values;
        let d_table = Tensor::<2>::zeros([table_rows, columns], &self.device()).scatter(
            0,
            batch.ids.expand([entries, columns]),
            d_entries,
            IndexingUpdateOp::Add,
        );
        let d_l2 = self.table.value.clone() * self.penalty.clone().mul_scalar(2.0 * l2);
        Gradients {
            table: d_table + d_l2,
            bias: d_bias,
            deep,
        }
    }

    fn update(&mut self, gradients: Gradients, learning_rate: f64) {
        self.steps += 1;
        let time = self.steps;
        self.table.update(gradients.table, learning_rate, time);
        self.bias.update(gradients.bias, learning_rate, time);
        if let (Some(slots), Some([w1, b1, w2, b2])) = (&mut self.deep, gradients.deep) {
            slots.w1.update(w1, learning_rate, time);
            slots.b1.update(b1, learning_rate, time);
            slots.w2.update(w2, learning_rate, time);
            slots.b2.update(b2, learning_rate, time);
        }
    }
}
