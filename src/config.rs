//! Configuration: a TOML file (examples under `hsm-config/`), every key
//! overridable by an `HSM_KMS_{SECTION}_{KEY}` environment variable. The
//! user PIN never comes from the TOML: it is read from the environment
//! variable named by `hsm.pin_env` (default `HSM_KMS_PIN`) or from
//! `hsm.pin_file`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::hsm::HsmConfig;

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// No PIN was provided.
    #[error("no user PIN: set {0} or hsm.pin_file")]
    NoPin(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// PKCS#11 token.
    pub hsm: HsmSection,
    /// Metadata store.
    pub store: StoreConfig,
    /// NAVER dialect settings.
    pub naver: NaverConfig,
    /// Logging.
    pub log: LogConfig,
    /// Activity log.
    pub activity_log: ActivityLogConfig,
    /// The audit chain over the activity log.
    pub audit: AuditConfig,
    /// Per-key request quotas.
    pub rate_limit: RateLimitConfig,
    /// TLS listener (mutual TLS for NHN certificate authentication).
    pub tls: TlsConfig,
    /// Bounds on batches and on how many objects a tenant may create.
    pub limits: LimitsConfig,
}

/// `[limits]`: items per array request and object counts per owner. Each is
/// finite so that one credential cannot fill the token, the store or the
/// worker pool; raise them for tenants that need more.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Items in one NAVER array request (plaintext / ciphertext lists of
    /// Encrypt, Decrypt, Re-encrypt, API 1.0 and 2.0). Each item also
    /// counts as one request against the per-key quota.
    pub max_batch_items: usize,
    /// Keys per account (NAVER accounts and NHN projects; keys pending
    /// deletion count until destroyed).
    pub max_keys_per_account: u64,
    /// Live token sets (unrevoked, unexpired refresh tokens) per NAVER key.
    pub max_token_sets_per_key: u64,
    /// NHN secrets per project (not yet destroyed).
    pub max_nhn_secrets_per_project: u64,
    /// Versions of one NHN secret (each update makes one).
    pub max_secret_versions: u64,
    /// Client certificates per NHN key store (not yet deleted).
    pub max_certificates_per_key_store: u64,
}

impl LimitsConfig {
    /// The object-count limits for the engine.
    pub fn object_limits(&self) -> crate::core::ObjectLimits {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        crate::core::ObjectLimits {
            keys_per_account: n(self.max_keys_per_account),
            token_sets_per_key: n(self.max_token_sets_per_key),
            nhn_secrets_per_project: n(self.max_nhn_secrets_per_project),
            secret_versions: n(self.max_secret_versions),
            certificates_per_key_store: n(self.max_certificates_per_key_store),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_items: 100,
            max_keys_per_account: 10_000,
            max_token_sets_per_key: 100,
            max_nhn_secrets_per_project: 10_000,
            max_secret_versions: 100,
            max_certificates_per_key_store: 100,
        }
    }
}

/// `[activity_log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivityLogConfig {
    /// Record every key-management and crypto call (group commit).
    pub enabled: bool,
    /// Flush every commit of the log to disk before answering (survives
    /// power loss). Off: commits reach the OS (SQLite WAL,
    /// `synchronous=NORMAL`), which survives the process being killed.
    pub fsync: bool,
    /// Keep the writer's multi-row INSERTs prepared: batches are cut into
    /// power-of-two sizes, each statement prepared once per connection.
    /// Off: every batch's INSERT is parsed afresh (the earlier way; kept to
    /// measure the lever in `BENCH_PARTS=levers scripts/bench.sh`).
    pub statement_cache: bool,
    /// Microseconds the writer may wait for more records after the first
    /// of a batch, before it writes them: fewer, larger commits (2000 by
    /// default; 0 writes what is queued at once). It waits only while at
    /// least `batch_siblings` other logged requests are on their way, and
    /// stops once none is. Tokio's timer rounds a wait up to the next
    /// millisecond.
    pub batch_wait_us: u64,
    /// With `batch_wait_us`: the wait ends once the batch holds this many
    /// records (16 by default); 0 waits for a full batch (512) or the time.
    pub batch_min_records: usize,
    /// With `batch_wait_us`: the writer waits only when at least this many
    /// other logged requests are on their way (started, record not yet
    /// queued; 4 by default, like PostgreSQL's `commit_siblings`), so a
    /// lone client's call never waits; the wait also ends once none is
    /// left. 0: the writer waits whatever is on its way (until the batch
    /// holds `batch_min_records` or the time is over).
    pub batch_siblings: usize,
    /// On SQLite, run the writer on an OS thread of its own with its own
    /// synchronous connection, which runs BEGIN IMMEDIATE, the INSERTs, the
    /// checkpoint and COMMIT (and the batch's token calls) itself: no
    /// hand-off to sqlx's connection worker thread within a batch. Off: a
    /// task on the runtime with a sqlx connection (the earlier way).
    /// PostgreSQL always takes the task.
    pub writer_thread: bool,
}

impl Default for ActivityLogConfig {
    fn default() -> Self {
        ActivityLogConfig {
            enabled: true,
            fsync: true,
            statement_cache: true,
            batch_wait_us: 2000,
            batch_min_records: 16,
            batch_siblings: 4,
            writer_thread: true,
        }
    }
}

/// `[audit]`: how the audit chain is sealed, and its signed checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// `batch` (default): links computed by the service, one in-token HMAC
    /// seal per group-commit batch; `record`: one in-token HMAC per record
    /// (the earlier format, kept to measure against).
    pub seal: crate::core::audit::SealMode,
    /// Sign a checkpoint after this many records since the last one.
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint of records added since the last one after this
    /// many seconds, also while no records arrive.
    pub checkpoint_every_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            seal: crate::core::audit::SealMode::Batch,
            checkpoint_every_records: 1000,
            checkpoint_every_secs: 60,
        }
    }
}

impl AuditConfig {
    /// The checkpoint policy for the engine.
    pub fn policy(&self) -> crate::core::audit::CheckpointPolicy {
        crate::core::audit::CheckpointPolicy {
            every_records: i64::try_from(self.checkpoint_every_records.max(1)).unwrap_or(i64::MAX),
            every_ms: i64::try_from(self.checkpoint_every_secs.max(1).saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `off` (default), `naver` (300 requests/s per key, the vendor's figure
    /// for API 2.0 Encrypt) or `custom` (the two keys below).
    pub profile: String,
    /// Requests per second per key (`custom`).
    pub requests_per_second: u32,
    /// Burst size per key (`custom`).
    pub burst: u32,
    /// Nodes sharing the quota: quotas are kept per node, in memory, so
    /// each node enforces `1 / nodes` of the rate and burst (rounded up),
    /// and a load balancer spreading a key's calls evenly gives the
    /// configured figure in total.
    pub nodes: u32,
    /// Most keys with their own `hsm_kms_quota_refusals_by_key_total`
    /// series (labelled by a fingerprint of the key tag); the rest count
    /// as `other`. 0 (the default): no per-key series.
    pub metrics_key_labels: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            profile: "off".into(),
            requests_per_second: 300,
            burst: 300,
            nodes: 1,
            metrics_key_labels: 0,
        }
    }
}

impl RateLimitConfig {
    /// This node's (requests per second, burst), or `None` when off.
    pub fn quota(&self) -> Result<Option<(u32, u32)>, ConfigError> {
        let (rps, burst) = match self.profile.as_str() {
            "off" => return Ok(None),
            "naver" => (300, 300),
            "custom" if self.requests_per_second > 0 => (self.requests_per_second, self.burst.max(1)),
            other => return Err(ConfigError::Invalid(format!(
                "rate_limit.profile {other:?}: use off, naver or custom (with requests_per_second > 0)"
            ))),
        };
        if self.nodes == 0 {
            return Err(ConfigError::Invalid(
                "rate_limit.nodes must be at least 1".into(),
            ));
        }
        Ok(Some((rps.div_ceil(self.nodes), burst.div_ceil(self.nodes))))
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Proxies whose `X-Forwarded-For` is trusted for the client address.
    pub trusted_proxies: Vec<String>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Seconds between scheduler passes (rotation, deletion).
    pub scheduler_interval_secs: u64,
    /// Seconds a client has to send a complete request head, counted from
    /// its first byte (also the TLS handshake on the `[tls]` listener).
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a complete request body, counted from
    /// the end of its head.
    pub body_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress and no
    /// byte of a new one received (keep-alive idle).
    pub idle_timeout_secs: u64,
    /// Open connections per listener (plain and `[tls]` each); connections
    /// beyond it are closed at once and counted in
    /// `hsm_kms_connections_refused_total`.
    pub max_connections: usize,
    /// The lean per-request path: request ids from a counter (no system
    /// call per request), a body-read timer armed only when a body is not
    /// already there, request spans with borrowed fields, NAVER success
    /// answers serialized straight into one buffer. Off: the earlier
    /// per-request work, kept to measure the lever.
    pub lean_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            trusted_proxies: vec![],
            body_limit: 1024 * 1024,
            scheduler_interval_secs: 60,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 4096,
            lean_requests: true,
        }
    }
}

/// `[hsm]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HsmSection {
    /// PKCS#11 module path.
    pub module: String,
    /// Token label (preferred over `slot_id`).
    pub token_label: Option<String>,
    /// Slot id.
    pub slot_id: Option<u64>,
    /// Environment variable holding the user PIN.
    pub pin_env: String,
    /// File holding the user PIN (first line).
    pub pin_file: Option<String>,
    /// Sessions kept open.
    pub max_sessions: usize,
    /// Symmetric operations at once.
    pub symmetric_concurrency: usize,
    /// Asymmetric operations at once.
    pub asymmetric_concurrency: usize,
    /// How long a request waits for a token being re-initialised, ms.
    pub unavailable_wait_ms: u64,
    /// Longest pause between two failed re-initialisations of the module, ms.
    pub recovery_backoff_max_ms: u64,
    /// Shortest time between two re-initialisations of the module made
    /// because an object the store names was missing from this process's
    /// view of the token (a late view, see `docs/pkcs11-portability.md`),
    /// ms; 0 turns them off.
    pub late_view_reinit_interval_ms: u64,
    /// How token calls reach sessions: `workers` or `blocking_pool`.
    pub dispatch: crate::hsm::Dispatch,
    /// Short symmetric token calls (AES-GCM, HMAC, random) run on the
    /// calling thread with a pooled session instead of a worker's.
    pub inline_symmetric: bool,
    /// Where AES-GCM IVs come from: `token` (`C_GenerateRandom`) or `host`.
    pub gcm_iv_source: crate::hsm::IvSource,
    /// AES-GCM encryptions allowed per key version (SP 800-38D 8.3).
    pub gcm_invocation_limit: u64,
}

impl Default for HsmSection {
    fn default() -> Self {
        HsmSection {
            module: crate::hsm::default_module_path().display().to_string(),
            token_label: Some("hsm-kms".into()),
            slot_id: None,
            pin_env: "HSM_KMS_PIN".into(),
            pin_file: None,
            max_sessions: 16,
            symmetric_concurrency: 2,
            asymmetric_concurrency: 2,
            unavailable_wait_ms: 500,
            recovery_backoff_max_ms: 1000,
            late_view_reinit_interval_ms: 5000,
            dispatch: crate::hsm::Dispatch::Workers,
            inline_symmetric: false,
            gcm_iv_source: crate::hsm::IvSource::Token,
            gcm_invocation_limit: crate::hsm::GCM_INVOCATION_LIMIT,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the SQLite database.
    pub data_dir: String,
    /// PostgreSQL URL (`postgres://user@host:port/db`); empty: SQLite under
    /// `data_dir`.
    pub url: String,
    /// How often, in ms, a node reads the store's change log to drop cache
    /// entries that other nodes made stale (on PostgreSQL, notifications
    /// do it at once and this is the fallback).
    pub change_poll_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: "./data".into(),
            url: String::new(),
            change_poll_ms: 500,
        }
    }
}

/// `[naver]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NaverConfig {
    /// Allowed clock skew of `x-ncp-apigw-timestamp`, seconds.
    pub signature_window_secs: i64,
    /// `baseUrl` reported in key records. Empty (the default): the scheme
    /// and `Host` of each request (the URL the client called), so that no
    /// record points a client at NAVER's own hosts.
    pub base_url: String,
    /// The region new keys are isolated in, as NAVER's region-isolated
    /// keys: `kr` or `jpn` (new key tags start with `kr-` / `jpn-`; calls
    /// naming a key of another region answer 400). Empty (the default):
    /// global keys, no prefix, and prefixed tags are another region's.
    pub region: String,
    /// Seconds in one "hour" of token lifetimes. 3600; tests shorten it to
    /// exercise expiry.
    pub token_hour_secs: u64,
    /// Which signed calls refuse a second use of (access key, timestamp,
    /// signature): `management` (default: calls that change keys, ACLs,
    /// token generators and sets), `all` (every signed call, crypto
    /// included) or `off`.
    pub replay_guard: String,
    /// Most signatures the replay guard holds at once (each until its
    /// timestamp leaves the window); when full, guarded calls answer 503.
    pub replay_guard_max_entries: usize,
    /// How RSA2048 keys sign through the NAVER APIs: `pss` (RSASSA-PSS,
    /// SHA-256, MGF1-SHA-256, 222-byte salt, as NAVER documents; the
    /// default) or `pkcs1` (RSASSA-PKCS1-v1_5, hsm-kms's scheme before).
    /// Verify accepts both either way.
    pub rsa_signature: String,
    /// Where the replay guard records accepted signatures: `store`
    /// (default: in this node's memory and in the metadata store, so that
    /// every node sharing the store refuses a replay) or `node` (memory
    /// only: no store write per guarded call, and a replay sent to another
    /// node is served).
    pub replay_guard_scope: String,
}

impl Default for NaverConfig {
    fn default() -> Self {
        NaverConfig {
            signature_window_secs: 300,
            base_url: String::new(),
            region: String::new(),
            token_hour_secs: 3600,
            replay_guard: "management".into(),
            replay_guard_max_entries: 100_000,
            rsa_signature: "pss".into(),
            replay_guard_scope: "store".into(),
        }
    }
}

/// The longest `naver.signature_window_secs`: NCP's own 5 minutes.
pub const MAX_SIGNATURE_WINDOW_SECS: i64 = 300;

impl NaverConfig {
    /// `rsa_signature` parsed.
    pub fn rsa_signature(&self) -> Result<crate::core::RsaSignature, ConfigError> {
        crate::core::RsaSignature::parse(&self.rsa_signature).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "naver.rsa_signature {:?}: use pss or pkcs1",
                self.rsa_signature
            ))
        })
    }

    /// `region` parsed: `None` for the global address (empty).
    pub fn region(&self) -> Result<Option<crate::core::naver::Region>, ConfigError> {
        if self.region.is_empty() {
            return Ok(None);
        }
        crate::core::naver::Region::parse(&self.region)
            .map(Some)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "naver.region {:?}: use kr, jpn or leave it empty (global keys)",
                    self.region
                ))
            })
    }

    /// `base_url` checked: empty, or an absolute `http(s)://` URL, kept
    /// without a trailing slash.
    pub fn base_url(&self) -> Result<Option<String>, ConfigError> {
        let url = self.base_url.trim_end_matches('/');
        if url.is_empty() {
            return Ok(None);
        }
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "naver.base_url {url:?}: an absolute http:// or https:// URL, or empty to use \
                 each request's own scheme and Host"
            )));
        }
        Ok(Some(url.to_string()))
    }

    /// `replay_guard` parsed.
    pub fn replay_mode(&self) -> Result<crate::api::naver::ReplayMode, ConfigError> {
        crate::api::naver::ReplayMode::parse(&self.replay_guard).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "naver.replay_guard {:?}: use management, all or off",
                self.replay_guard
            ))
        })
    }

    /// `replay_guard_scope` parsed: `true` for `store` (shared by the nodes).
    pub fn replay_shared(&self) -> Result<bool, ConfigError> {
        match self.replay_guard_scope.as_str() {
            "store" => Ok(true),
            "node" => Ok(false),
            other => Err(ConfigError::Invalid(format!(
                "naver.replay_guard_scope {other:?}: use store or node"
            ))),
        }
    }
}

/// `[tls]`: a second listener serving the same API over TLS. Off while
/// `listen` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener; empty = no TLS listener.
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert_file: String,
    /// Server private key (PEM, PKCS#8 / PKCS#1 / SEC1).
    pub key_file: String,
    /// Ask clients for a certificate issued by a project CA (NHN
    /// certificate authentication). Clients without one are still served.
    pub client_auth: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            client_auth: true,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `text`.
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info` or `hsm_kms=debug`.
    pub level: String,
    /// One `info` line per request (target `access`): request id, route
    /// template, status, duration, dialect, operation, credential kind and
    /// a fingerprint of the key tag.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "json".into(),
            level: "info".into(),
            access: true,
        }
    }
}

impl Config {
    /// Reads `path` (if given) and applies `HSM_KMS_*` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let mut value: toml::Value =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        apply_env(&mut value, std::env::vars())?;
        let cfg: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values whose type alone does not make them valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = self.naver.signature_window_secs;
        if !(1..=MAX_SIGNATURE_WINDOW_SECS).contains(&w) {
            return Err(ConfigError::Invalid(format!(
                "naver.signature_window_secs = {w}: must be from 1 to {MAX_SIGNATURE_WINDOW_SECS} \
                 seconds (NCP's own window is 300; a longer one lets a captured signature be \
                 replayed for longer)"
            )));
        }
        self.naver.replay_mode()?;
        self.naver.rsa_signature()?;
        self.naver.region()?;
        self.naver.base_url()?;
        self.naver.replay_shared()?;
        if self.naver.replay_guard_max_entries == 0 {
            return Err(ConfigError::Invalid(
                "naver.replay_guard_max_entries must be at least 1 (use replay_guard = \"off\" to turn the guard off)".into(),
            ));
        }
        Ok(())
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("server.listen: {e}")))
    }

    /// The trusted proxies as networks.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.server
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|e| ConfigError::Invalid(format!("server.trusted_proxies {s}: {e}")))
            })
            .collect()
    }

    /// The HSM settings with the PIN resolved.
    pub fn hsm_config(&self) -> Result<HsmConfig, ConfigError> {
        let pin = match (&self.hsm.pin_file, std::env::var(&self.hsm.pin_env)) {
            (_, Ok(p)) if !p.is_empty() => p,
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|source| ConfigError::Read {
                    path: file.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            _ => return Err(ConfigError::NoPin(self.hsm.pin_env.clone())),
        };
        Ok(HsmConfig {
            module: PathBuf::from(&self.hsm.module),
            token_label: self.hsm.token_label.clone().filter(|l| !l.is_empty()),
            slot_id: self.hsm.slot_id,
            pin: SecretString::from(pin),
            max_sessions: self.hsm.max_sessions,
            symmetric_concurrency: self.hsm.symmetric_concurrency,
            asymmetric_concurrency: self.hsm.asymmetric_concurrency,
            unavailable_wait: std::time::Duration::from_millis(self.hsm.unavailable_wait_ms),
            recovery_backoff_max: std::time::Duration::from_millis(
                self.hsm.recovery_backoff_max_ms,
            ),
            late_view_reinit_interval: std::time::Duration::from_millis(
                self.hsm.late_view_reinit_interval_ms,
            ),
            dispatch: self.hsm.dispatch,
            inline_symmetric: self.hsm.inline_symmetric,
            gcm_iv_source: self.hsm.gcm_iv_source,
        })
    }
}

const SECTIONS: [&str; 10] = [
    "server",
    "hsm",
    "store",
    "naver",
    "log",
    "activity_log",
    "audit",
    "rate_limit",
    "tls",
    "limits",
];

/// Applies `HSM_KMS_{SECTION}_{KEY}=value` overrides to a parsed config.
/// Values are parsed as TOML when they parse (numbers, booleans, arrays) and
/// taken as strings otherwise. `HSM_KMS_PIN` is not a config key.
fn apply_env(
    value: &mut toml::Value,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Value::try_from(Config::default())
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let root = value
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid("not a table".into()))?;
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("HSM_KMS_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let known = defaults
            .get(section)
            .and_then(|t| t.as_table())
            .map(|t| t.contains_key(key) || matches!(key, "token_label" | "slot_id" | "pin_file"))
            .unwrap_or(false);
        if !known {
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw.clone()));
        // Keys that are strings stay strings even when the text looks numeric.
        let parsed = match defaults.get(section).and_then(|t| t.get(key)) {
            Some(toml::Value::String(_)) => toml::Value::String(raw.clone()),
            _ => parsed,
        };
        root.entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("[{section}] is not a table")))?
            .insert(key.to_string(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_apply_with_types() {
        let mut v: toml::Value = toml::from_str("[server]\nlisten = \"0.0.0.0:1\"").unwrap();
        apply_env(
            &mut v,
            vec![
                (
                    "HSM_KMS_SERVER_LISTEN".to_string(),
                    "127.0.0.1:9".to_string(),
                ),
                ("HSM_KMS_HSM_MAX_SESSIONS".to_string(), "4".to_string()),
                ("HSM_KMS_HSM_TOKEN_LABEL".to_string(), "123".to_string()),
                ("HSM_KMS_PIN".to_string(), "secret".to_string()),
            ]
            .into_iter(),
        )
        .unwrap();
        let c: Config = v.try_into().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9");
        assert_eq!(c.hsm.max_sessions, 4);
        assert_eq!(c.hsm.token_label.as_deref(), Some("123"));
    }

    /// Issue 8, item 5: the window is at most NCP's 300 s, at least 1 s.
    #[test]
    fn item5_signature_window_validated() {
        for (w, ok) in [
            (0, false),
            (1, true),
            (60, true),
            (300, true),
            (301, false),
            (-5, false),
        ] {
            let mut c = Config::default();
            c.naver.signature_window_secs = w;
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "{w}: {r:?}");
            if let Err(e) = r {
                let m = e.to_string();
                assert!(
                    m.contains("signature_window_secs") && m.contains("300"),
                    "{m}"
                );
            }
        }
        let mut c = Config::default();
        c.naver.replay_guard = "sometimes".into();
        assert!(c.validate().is_err());
        for mode in ["off", "management", "all"] {
            c.naver.replay_guard = mode.into();
            assert!(c.validate().is_ok(), "{mode}");
        }
        c.naver.replay_guard_max_entries = 0;
        assert!(c.validate().is_err());
    }

    /// Issue 13 §1: `naver.rsa_signature` is `pss` (default) or `pkcs1`.
    #[test]
    fn rsa_signature_validated() {
        let mut c = Config::default();
        assert_eq!(
            c.naver.rsa_signature().unwrap(),
            crate::core::RsaSignature::Pss
        );
        c.naver.rsa_signature = "pkcs1".into();
        assert!(c.validate().is_ok());
        c.naver.rsa_signature = "PSS-ish".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rsa_signature"));
    }

    #[test]
    fn naver_region_and_base_url_are_checked() {
        use crate::core::naver::Region;
        let mut c = Config::default();
        assert_eq!(c.naver.region().unwrap(), None);
        assert_eq!(c.naver.base_url().unwrap(), None);
        for (text, want) in [("kr", Region::Kr), ("KR", Region::Kr), ("jpn", Region::Jpn)] {
            c.naver.region = text.into();
            assert_eq!(c.naver.region().unwrap(), Some(want), "{text}");
        }
        c.naver.region = "eu".into();
        assert!(c.validate().is_err());
        c.naver.region = String::new();
        c.naver.base_url = "https://kms.example.com/".into();
        assert_eq!(
            c.naver.base_url().unwrap().as_deref(),
            Some("https://kms.example.com")
        );
        for bad in ["kms.example.com", "ftp://kms.example.com", "https://"] {
            c.naver.base_url = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limit_is_shared_out_between_nodes() {
        let mut r = RateLimitConfig {
            profile: "naver".into(),
            ..RateLimitConfig::default()
        };
        assert_eq!(r.quota().unwrap(), Some((300, 300)));
        r.nodes = 3;
        assert_eq!(r.quota().unwrap(), Some((100, 100)));
        r.profile = "custom".into();
        r.requests_per_second = 10;
        r.burst = 1;
        assert_eq!(r.quota().unwrap(), Some((4, 1)));
        r.nodes = 0;
        assert!(r.quota().is_err());
        r.profile = "off".into();
        assert_eq!(r.quota().unwrap(), None);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let v: std::result::Result<Config, _> = toml::from_str("[server]\nlisen = \"x\"");
        assert!(v.is_err());
    }

    fn hsm_config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-config")
    }

    #[test]
    fn every_example_config_loads() {
        let mut seen = 0;
        for entry in std::fs::read_dir(hsm_config_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let cfg =
                Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cfg.listen_addr()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cfg.trusted_proxies()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                cfg.hsm
                    .token_label
                    .as_deref()
                    .is_some_and(|l| !l.is_empty())
                    || cfg.hsm.slot_id.is_some(),
                "{}: names neither a token label nor a slot",
                path.display()
            );
            seen += 1;
        }
        assert!(
            seen >= 5,
            "expected SoftHSMv2 and vendor profiles, found {seen}"
        );
    }

    #[test]
    fn softhsm2_example_documents_the_defaults() {
        let text = std::fs::read_to_string(hsm_config_dir().join("softhsm2.toml")).unwrap();
        let from_file: Config = toml::from_str(&text).unwrap();
        let mut defaults = Config::default();
        // The built-in module path follows $PKCS11_MODULE; the file shows Debian's.
        defaults.hsm.module = "/usr/lib/softhsm/libsofthsm2.so".into();
        assert_eq!(
            toml::Value::try_from(&from_file).unwrap(),
            toml::Value::try_from(&defaults).unwrap()
        );
        // Every key of every section appears in the file (commented or not).
        let keys = toml::Value::try_from(Config::default()).unwrap();
        for (section, table) in keys.as_table().unwrap() {
            assert!(
                text.contains(&format!("[{section}]")),
                "[{section}] missing"
            );
            for key in table.as_table().unwrap().keys() {
                assert!(
                    text.contains(&format!("{key} =")),
                    "{section}.{key} missing"
                );
            }
        }
        for optional in ["slot_id", "pin_file"] {
            assert!(
                text.contains(&format!("# {optional} =")),
                "{optional} missing"
            );
        }
    }
}
