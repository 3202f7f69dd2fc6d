//! Why a command failed, in the terms a scheduler acts on: retry, fix the data, look at the
//! gates, wait for the other writer, fix the configuration, leave the running job alone, or
//! start the date over. Every layer's error type says its `Cause`; the command's exit code
//! comes from the cause alone, never from the stage the failure happened in.
//!
//! Owns the exit-code table of the README. Depends on nothing else in the crate.

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The store, the network, the engine or the machine failed; the same call may pass later.
    Transient,
    /// The input data was refused (a schema, the bad-row share, a corrupt file).
    Input,
    /// The publish gates refused the new table.
    GateRefused,
    /// Another writer committed first.
    Conflict,
    /// Something a person configured is wrong (`pipelines/`, a URL, credentials, a model name).
    Configuration,
    /// Another run of the date holds its lease.
    Busy,
    /// A resumed run or a shard cannot continue from what is in the store.
    StartOver,
}

impl Cause {
    /// The process exit code for this cause (README, "exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            Cause::Transient => 1,
            Cause::Input => 3,
            Cause::GateRefused => 4,
            Cause::Conflict => 5,
            Cause::Configuration => 6,
            Cause::Busy => 7,
            Cause::StartOver => 8,
        }
    }
}

/// An error that knows its cause.
pub trait Classify {
    fn cause(&self) -> Cause;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_own_exit_code_and_none_is_clap_s() {
        let all = [
            Cause::Transient,
            Cause::Input,
            Cause::GateRefused,
            Cause::Conflict,
            Cause::Configuration,
            Cause::Busy,
            Cause::StartOver,
        ];
        let codes: Vec<u8> = all.iter().map(|c| c.exit_code()).collect();
        assert_eq!(codes, vec![1, 3, 4, 5, 6, 7, 8]);
    }
}
