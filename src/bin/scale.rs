//! `hsm-kms-scale` (built with `--features bench`): the key-count half of
//! `scripts/bench-scale.sh`.
//!
//! - `hsm-kms-scale populate --config FILE --keys N [--concurrency C]
//!   --out DIR`: with the server stopped, creates an account `scale` with
//!   an access key and N AES-256 keys through the engine (the same pending
//!   row, token object, activation sequence as the API's Create Key),
//!   C at a time, and prints `populate keys=N secs=S keys_per_sec=R`. It
//!   writes `DIR/tags` (one keyTag a line) and `DIR/credentials`
//!   (`access_key=`, `secret_key=`; mode 0600).
//! - `hsm-kms-scale sign --dir DIR [--limit N]`: writes `DIR/requests`,
//!   one `path timestamp signature` line per key (the first N), for the wrk
//!   script: NCP signatures do not cover the body, so each key's Encrypt
//!   request is signed once, just before the run.
//!
//! The server's config must allow N keys per account
//! (`limits.max_keys_per_account`).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use hsm_kms::config::Config;
use hsm_kms::core::{reconcile, CreateKeyRequest, Engine, EngineOptions, KeyType, StartMode};

const ACCOUNT: &str = "scale";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("populate") => {
            let config = arg(&args, "--config").map(PathBuf::from);
            let keys: usize = arg(&args, "--keys")
                .context("--keys N is required")?
                .parse()
                .context("--keys")?;
            let concurrency: usize = arg(&args, "--concurrency")
                .map(|c| c.parse())
                .transpose()
                .context("--concurrency")?
                .unwrap_or(16);
            let out = PathBuf::from(arg(&args, "--out").context("--out DIR is required")?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(populate(config.as_deref(), keys, concurrency.max(1), &out))
        }
        Some("sign") => {
            let dir = PathBuf::from(arg(&args, "--dir").context("--dir DIR is required")?);
            let limit = arg(&args, "--limit")
                .map(|c| c.parse())
                .transpose()
                .context("--limit")?;
            sign_requests(&dir, limit)
        }
        _ => bail!(
            "usage: hsm-kms-scale populate --config FILE --keys N [--concurrency C] --out DIR \
             | sign --dir DIR [--limit N]"
        ),
    }
}

async fn populate(
    config: Option<&Path>,
    keys: usize,
    concurrency: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let (hsm, store) = hsm_kms::server::open(&cfg).await?;
    reconcile(&hsm, &store, StartMode::Serve).await?;
    let engine = Engine::with_options(
        hsm,
        store,
        EngineOptions {
            // Key creation through the API writes an activity record too;
            // the engine alone writes none (the log is the API's).
            activity_log: cfg.activity_log.enabled,
            activity_fsync: cfg.activity_log.fsync,
            limits: cfg.limits.object_limits(),
            ..EngineOptions::default()
        },
    )
    .await?;
    std::fs::create_dir_all(out)?;
    let account_id = match engine.account_id(ACCOUNT).await? {
        Some(id) => id,
        None => engine.create_account(ACCOUNT).await?,
    };
    let creds = out.join("credentials");
    if !creds.exists() {
        let k = engine.create_access_key(ACCOUNT).await?;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode_0600()
            .open(&creds)?;
        writeln!(
            f,
            "access_key={}\nsecret_key={}",
            k.access_key, *k.secret_key
        )?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (engine, next) = (engine.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut tags = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<_, anyhow::Error>(tags);
                }
                let req = CreateKeyRequest {
                    name: format!("s{i:07}-{:04x}", rand::random::<u16>()),
                    key_type: KeyType::Aes256,
                    memo: String::new(),
                    is_convergent: false,
                    is_auto_rotation: false,
                    rotation_period: None,
                    protection_type: "COMMON_HSM".into(),
                };
                let e = engine
                    .create_key(account_id, req)
                    .await
                    .map_err(|e| anyhow!("key {i}: {e}"))?;
                tags.push(e.key.uid.clone());
            }
        }));
    }
    let mut tags = Vec::with_capacity(keys);
    for w in workers {
        tags.extend(w.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("tags"))?,
    );
    for t in &tags {
        writeln!(f, "{t}")?;
    }
    f.flush()?;
    println!(
        "populate keys={} secs={secs:.2} keys_per_sec={:.0}",
        tags.len(),
        tags.len() as f64 / secs
    );
    Ok(())
}

fn sign_requests(dir: &Path, limit: Option<usize>) -> anyhow::Result<()> {
    let creds = std::fs::read_to_string(dir.join("credentials"))?;
    let field = |k: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no {k} in credentials"))
    };
    let (ak, sk) = (field("access_key=")?, field("secret_key=")?);
    let tags = std::fs::read_to_string(dir.join("tags"))?;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        .to_string();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("requests"))?);
    for tag in tags.lines().take(limit.unwrap_or(usize::MAX)) {
        let path = format!("/kms/v1/keys/{tag}/encrypt");
        let sig = sign(
            SignatureVersion::V2,
            sk.as_bytes(),
            "POST",
            &path,
            &ts,
            &ak,
            None,
        );
        writeln!(f, "{path} {ts} {sig}")?;
    }
    f.flush()?;
    println!("access_key={ak}");
    Ok(())
}

/// `OpenOptions::mode(0o600)` on Unix.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}
