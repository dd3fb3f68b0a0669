//! The verbund wire protocol, package `verbund.v1`.
//!
//! * `query.proto`: the typed aggregate request a node can check completely, and the
//!   partial aggregates it answers with.
//! * `link.proto`: the long-lived stream a node dials out to the coordinator.
//! * `researcher.proto`: the coordinator's API for researchers (CLI, later Python, web).

#![allow(clippy::all, missing_docs)]

/// The largest gRPC message either side of any verbund connection sends or accepts; client
/// and server must agree on it (a site's answer, a researcher's result).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Milliseconds since the Unix epoch, as heartbeats and site listings carry them (0 if the
/// clock is set before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub mod v1 {
    tonic::include_proto!("verbund.v1");
    include!(concat!(env!("OUT_DIR"), "/verbund.v1.serde.rs"));
}
