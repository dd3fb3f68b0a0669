//! End-to-end tests: real nodes and a real coordinator in-process on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod audit;
mod bad_queries;
mod clients;
mod cohorts;
mod disclosure;
mod exactness;
mod flight_sql;
mod hostile_inputs;
mod mii;
mod misbehaving;
mod model_attacks;
mod models;
mod operations;
mod patient_attributes;
mod privacy_network;
mod proxy;
mod reload;
mod resilience;
mod security;
mod suppression;
mod web;
