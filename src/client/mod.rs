//! `hsm-kms client ...`: a command-line client of both dialects, for
//! hsm-kms and for the vendors' own services (whose APIs hsm-kms serves),
//! and the migration of stored ciphertexts from one to the other.
//!
//! - Credentials come from a profile file (TOML, mode 0600) and
//!   `HSM_KMS_CLIENT_*` variables, never from the command line
//!   ([`profile`]).
//! - NAVER requests are signed with the service's own signature code
//!   ([`hsm_kms::api::auth::ncp::sign`]), not a copy of it.
//! - Output is JSON on stdout: the answer's payload (`data` / `body`) on
//!   success, the whole answer (the dialect's error envelope) on a refusal.
//!   The exit code says how the call went ([`Outcome`]); `docs/client.md`
//!   lists them.

mod http;
mod migrate;
mod naver;
mod nhn;
mod profile;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

/// How a client command ended; its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: the call succeeded.
    Success = 0,
    /// 1: nothing was sent, or the answer could not be read: missing or
    /// unsafe credentials, a file that could not be read or written, an
    /// input that does not parse.
    Local = 1,
    // 2 is clap's: the command line is wrong.
    /// 3: the server refused the request as made (400, 409, 429 and other
    /// 4xx not below, or NAVER's HTTP 200 with a code other than SUCCESS).
    Refused = 3,
    /// 4: authentication or authorization refused (401, 403).
    Denied = 4,
    /// 5: no such key, key store or route (404).
    NotFound = 5,
    /// 6: the server failed (5xx) or did not answer (connection, TLS,
    /// timeout).
    Unavailable = 6,
    /// 7: Verify answered, and the signature is not valid.
    Invalid = 7,
    /// 8: `migrate` finished, and some ciphertexts were not migrated.
    Partial = 8,
}

impl Outcome {
    /// The outcome of an HTTP status that is not a success.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            401 | 403 => Outcome::Denied,
            404 | 405 => Outcome::NotFound,
            500..=599 => Outcome::Unavailable,
            _ => Outcome::Refused,
        }
    }
}

/// Why a client command stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing was sent (credentials, files, inputs).
    #[error("{0}")]
    Local(String),
    /// The server answered with a refusal.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Refused {
        /// Method of the call.
        method: String,
        /// Path of the call (never with a secret: appkeys are replaced by
        /// their fingerprint).
        path: String,
        /// HTTP status.
        status: u16,
        /// The dialect's error message, when the envelope has one.
        message: String,
        /// The whole answer.
        body: Value,
    },
    /// No usable answer.
    #[error("{url}: no answer: {why}")]
    Transport {
        /// Base URL.
        url: String,
        /// What failed.
        why: String,
    },
}

impl ClientError {
    /// The exit code of this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Local(_) => Outcome::Local,
            ClientError::Refused { status, .. } => Outcome::of_status(*status),
            ClientError::Transport { .. } => Outcome::Unavailable,
        }
    }
}

/// `hsm-kms client [--profile NAME] [--profile-file PATH] ...`
#[derive(Args)]
pub struct ClientArgs {
    /// Profile to read from the profile file (default: `default`, or
    /// HSM_KMS_CLIENT_PROFILE).
    #[arg(long, env = "HSM_KMS_CLIENT_PROFILE", global = true)]
    pub profile: Option<String>,
    /// Profile file (TOML, mode 0600). Default:
    /// `$HOME/.config/hsm-kms/profiles.toml` when it exists.
    #[arg(long, env = "HSM_KMS_CLIENT_PROFILE_FILE", global = true)]
    pub profile_file: Option<PathBuf>,
    /// Base URL, overriding the profile's `url` and HSM_KMS_CLIENT_URL
    /// (not a secret).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout_secs: u64,
    #[command(subcommand)]
    pub cmd: ClientCmd,
}

/// The client's commands.
#[derive(Subcommand)]
pub enum ClientCmd {
    /// NAVER Cloud KMS API 2.0 calls (account or token authentication).
    Naver(naver::NaverArgs),
    /// NHN Cloud Secure Key Manager v1.2 calls (appkey, User Access Key,
    /// MAC header, client certificate).
    Nhn(nhn::NhnArgs),
    /// Re-encrypt a file of ciphertexts: decrypt each with the old service
    /// (the source), encrypt it with the new one (the target) under the
    /// same key identifier, and write the new ciphertexts. Source and
    /// target credentials: --source-profile / --target-profile and
    /// HSM_KMS_SOURCE_* / HSM_KMS_TARGET_* variables.
    Migrate(migrate::MigrateArgs),
}

/// Runs a client command and returns its exit code.
pub async fn run(args: ClientArgs) -> i32 {
    let outcome = match dispatch(&args).await {
        Ok(o) => o,
        Err(e) => {
            if let ClientError::Refused { body, .. } = &e {
                print_json(body);
            }
            eprintln!("hsm-kms client: {e}");
            e.outcome()
        }
    };
    outcome as i32
}

async fn dispatch(args: &ClientArgs) -> Result<Outcome, ClientError> {
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    let sel = profile::Selection {
        file: args.profile_file.as_deref(),
        profile: args.profile.as_deref(),
        prefix: profile::CLIENT_PREFIX,
        url: args.url.as_deref(),
    };
    match &args.cmd {
        ClientCmd::Naver(n) => naver::run(&profile::endpoint(&sel, timeout)?, n).await,
        ClientCmd::Nhn(n) => nhn::run(&profile::endpoint(&sel, timeout)?, n).await,
        ClientCmd::Migrate(m) => migrate::run(args, m, timeout).await,
    }
}

/// Prints a JSON document on stdout, pretty.
pub fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{v}"),
    }
}
