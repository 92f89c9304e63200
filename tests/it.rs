//! The one integration-test binary: drives the real `essops` binary and the
//! library against the real services (see tests/support).

mod support;

mod cache;
mod cli;
mod config_errors;
mod demo;
mod devices;
mod docs;
mod examples;
mod field;
mod history;
mod index;
mod ingest;
mod kpi;
mod lifecycle;
mod loss;
mod migrate;
mod monitoring;
mod reconcile;
mod report;
mod security;
mod size;
