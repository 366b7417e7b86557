//! Portcullis: a webhook edge gateway on Pingora.
//!
//! One process does what used to take nginx, a hand-written verifier and a queue client: it
//! terminates HTTP, routes by path to a provider filter, runs cheap checks before expensive
//! ones, verifies the raw bytes, de-duplicates, and answers `202` only once a sink holds the
//! event durably. The binary (`src/main.rs`) is a thin CLI over this library.

pub mod admin;
pub mod api;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod event_log;
pub mod filters;
pub mod gateway;
pub mod header_deadline;
pub mod lifecycle;
pub mod loader;
pub mod metrics;
pub mod outbound;
pub mod rawhttp;
pub mod reason;
pub mod request;
pub mod routes;
pub mod schemes;
pub mod sinks;
pub mod store;
pub mod tls;
