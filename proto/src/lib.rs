//! The verbund wire protocol, package `verbund.v1`.
//!
//! * `query.proto`: the typed aggregate request a node can check completely, and the
//!   partial aggregates it answers with.
//! * `link.proto`: the long-lived stream a node dials out to the coordinator.
//! * `researcher.proto`: the coordinator's API for researchers (CLI, later Python, web).

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("verbund.v1");
}
