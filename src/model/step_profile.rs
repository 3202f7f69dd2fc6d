//! Where a training step's time goes, phase by phase. Off unless `REDFLOWER_PROFILE_STEPS`
//! is set: each phase then ends with a device sync, so a GPU backend's queued work is charged
//! to the phase that queued it, and those syncs slow training down. Used by the models bench
//! to find host-bound costs; the summary goes to the log at the end of training.

use std::time::{Duration, Instant};

use burn::tensor::Device;
use tracing::info;

/// The parts of one gradient step, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// rows copied into the batch's host buffers
    Build,
    /// the buffers become device tensors
    Upload,
    /// logits and loss
    Forward,
    Backward,
    /// Adam's update of every parameter
    Optimizer,
}

const PHASES: [Phase; 5] = [
    Phase::Build,
    Phase::Upload,
    Phase::Forward,
    Phase::Backward,
    Phase::Optimizer,
];

pub struct StepProfile {
    device: Option<Device>,
    spent: [Duration; 5],
    steps: usize,
    since: Instant,
}

impl StepProfile {
    /// On when `REDFLOWER_PROFILE_STEPS` is set to anything but `0`.
    pub fn from_env(device: &Device) -> StepProfile {
        let enabled = std::env::var("REDFLOWER_PROFILE_STEPS").is_ok_and(|v| v != "0");
        StepProfile {
            device: enabled.then(|| device.clone()),
            spent: [Duration::ZERO; 5],
            steps: 0,
            since: Instant::now(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.device.is_some()
    }

    /// Starts timing the next phase (the time since the last call is not charged).
    pub fn restart(&mut self) {
        if self.enabled() {
            self.since = Instant::now();
        }
    }

    /// Charges the time since the last mark to `phase`, after the device has finished it.
    pub fn mark(&mut self, phase: Phase) {
        let Some(device) = &self.device else { return };
        let _ = device.sync();
        let now = Instant::now();
        // the variants are declared in PHASES' order
        self.spent[phase as usize] += now - self.since;
        if phase == Phase::Optimizer {
            self.steps += 1;
        }
        self.since = now;
    }

    /// Milliseconds per step of each phase, in step order.
    pub fn per_step_ms(&self) -> Vec<(Phase, f64)> {
        let steps = self.steps.max(1) as f64;
        PHASES
            .iter()
            .zip(self.spent)
            .map(|(phase, spent)| (*phase, spent.as_secs_f64() * 1e3 / steps))
            .collect()
    }

    pub fn log(&self) {
        if !self.enabled() {
            return;
        }
        let ms = self.per_step_ms();
        let total: f64 = ms.iter().map(|(_, m)| m).sum();
        let parts: Vec<String> = ms.iter().map(|(p, m)| format!("{p:?} {m:.3}")).collect();
        info!(
            steps = self.steps,
            step_ms = format!("{total:.3}"),
            phases_ms = parts.join(", "),
            "step profile (synced after each phase)"
        );
    }
}
