//! The one integration-test binary (each file under tests/ would link DataFusion and Burn into
//! a binary of its own). One module per area.

mod architecture;
mod audit;
mod chain;
mod chaos;
mod cli;
mod cluster;
mod encryption;
mod erasure;
mod exit_codes;
mod interactive;
mod leakage;
mod models;
mod operations;
mod promotion;
mod publishing;
mod quarantine;
mod s3;
mod serving;
mod support;
mod tables;
mod timelines;
