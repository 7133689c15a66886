//! hsm-kms: an HSM-backed key management service that serves the NAVER Cloud
//! KMS and NHN Cloud Secure Key Manager APIs over one engine whose every key
//! lives in a PKCS#11 token.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod connections;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod hsm;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
