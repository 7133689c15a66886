//! The `hsm-kms` binary: `init`, `serve`, `healthcheck`, `admin` and
//! `client` commands.
#![forbid(unsafe_code)]

mod attest_cli;
mod attest_html;
mod audit_cli;
mod client;
mod naver_admin;
mod nhn_admin;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hsm_kms::config::Config;
use hsm_kms::core::Engine;
use hsm_kms::server;

#[derive(Parser)]
#[command(
    name = "hsm-kms",
    version,
    about = "HSM-backed KMS serving the NAVER Cloud KMS and NHN Cloud SKM APIs"
)]
struct Cli {
    /// Configuration file (TOML). Every key can be overridden with HSM_KMS_{SECTION}_{KEY}.
    #[arg(short, long, env = "HSM_KMS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the service keys in the token, the schema, and a first account
    /// whose access key and secret key are printed once.
    Init {
        /// Name of the first account.
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// Serve the HTTP APIs.
    Serve {
        /// Write the bound address to this file once listening (for scripts and tests).
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Probe `/readyz` of a running server; exit 0 when it answers 200.
    /// Used by the container's HEALTHCHECK, so the image needs no curl.
    Healthcheck {
        /// URL to probe (plain http). Default: `/readyz` on the configured
        /// listen port, via 127.0.0.1 when listening on all addresses.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Attestation: a signed report of what the token says about every key
    /// version, beside the store's view; its public key; its offline check.
    Attest(attest_cli::AttestArgs),
    /// The tamper-evident audit trail: walk the chain with the token, export
    /// it for an auditor, check an export offline.
    Audit {
        #[command(subcommand)]
        cmd: audit_cli::AuditCmd,
    },
    /// Administration: accounts and access keys.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// A client of a running server (or of the vendors' own services):
    /// NAVER and NHN calls, and the migration of ciphertexts. Credentials
    /// come from HSM_KMS_CLIENT_* variables or a profile file (mode 0600),
    /// never from the command line; the output is JSON; the exit code says
    /// how the call went (see `docs/client.md`).
    Client(client::ClientArgs),
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create an account.
    CreateAccount {
        /// Account name.
        name: String,
    },
    /// Create an access key for an account; prints the secret key once.
    CreateAccessKey {
        /// Account name.
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// List access keys (never their secrets).
    ListAccessKeys,
    /// Revoke an access key.
    RevokeAccessKey {
        /// The access key id.
        access_key: String,
    },
    /// Create an API Gateway API key (for API 1.0 signature v1 requests).
    CreateApiKey {
        /// Account name.
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// Revoke an API Gateway API key.
    RevokeApiKey {
        /// The API key.
        api_key: String,
    },
    /// Show the protection attributes of every object of the service on the token.
    ListObjects,
    /// Compare the token with the store: print the installation ids, one
    /// line per `hsm-kms/` object that no store row names (label, CKA_ID hex,
    /// class), one line per object the store names but the token lacks, and
    /// a summary. A dry run unless `--destroy-orphans --yes` is given.
    Reconcile {
        /// Destroy the listed unknown objects (for good: a key made after the
        /// store's last backup is among them if the store was restored).
        /// Needs `--yes`, and the token and store to carry one installation id.
        #[arg(long)]
        destroy_orphans: bool,
        /// Confirm `--destroy-orphans`.
        #[arg(long)]
        yes: bool,
    },
    /// NHN Secure Key Manager: projects, appkeys, User Access Keys, key
    /// stores and client certificates.
    Nhn {
        #[command(subcommand)]
        cmd: nhn_admin::NhnCmd,
    },
    /// NAVER Cloud KMS: keys under the key tags they had at NAVER.
    Naver {
        #[command(subcommand)]
        cmd: naver_admin::NaverCmd,
    },
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The client needs no server configuration, token or store: it only
    // talks HTTP, and its exit code is its answer.
    let cmd = match cli.cmd {
        Cmd::Client(args) => std::process::exit(client::run(args).await),
        other => other,
    };
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    if let Err(e) = run(cmd, cfg).await {
        tracing::error!(error = format!("{e:#}"), "hsm-kms failed");
        // One line an operator can read (and a script can grep).
        eprintln!("hsm-kms: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        Cmd::Init { account } => {
            let out = server::init(&cfg, &account).await?;
            if !out.created_service_keys.is_empty() {
                eprintln!(
                    "created service keys: {}",
                    out.created_service_keys.join(", ")
                );
            }
            match out.first_credentials {
                Some(c) => {
                    println!("account={account}");
                    println!("access_key={}", c.access_key);
                    println!("secret_key={}", c.secret_key.as_str());
                    eprintln!("The secret key is shown once; store it now.");
                }
                None => eprintln!("already initialised; account {account} exists (use `hsm-kms admin create-access-key`)"),
            }
        }
        Cmd::Serve { addr_file } => {
            let running = server::start(&cfg, shutdown_signal()).await?;
            if let Some(f) = addr_file {
                std::fs::write(&f, running.addr.to_string())
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            println!("hsm-kms listening on http://{}", running.addr);
            let engine = running.engine.clone();
            tokio::select! {
                r = running.handle => r??,
                // Exits non-zero rather than serving 503s forever: nothing
                // in this process can bring the store back, a supervisor's
                // restart goes through the start-up binding check (which
                // refuses a missing or foreign store), and a crash loop with
                // this line is what an operator notices.
                why = engine.watch_store(std::time::Duration::from_secs(1)) => {
                    anyhow::bail!(
                        "the metadata store is lost: {why}; stopped serving, nothing was recreated: \
                         restore metadata.db and restart (the start-up check verifies it)"
                    )
                }
            }
        }
        Cmd::Healthcheck { url, timeout_secs } => {
            let url = match url {
                Some(u) => u,
                None => default_probe_url(&cfg)?,
            };
            let status =
                tokio::time::timeout(std::time::Duration::from_secs(timeout_secs), probe(&url))
                    .await
                    .with_context(|| format!("{url}: no answer within {timeout_secs}s"))??;
            anyhow::ensure!(status == 200, "{url} answered HTTP {status}");
            println!("{url}: HTTP 200");
        }
        Cmd::Attest(args) => attest_cli::run(&cfg, args).await?,
        // Dispatched in `main` before the configuration is read.
        Cmd::Client(_) => anyhow::bail!("`client` runs without the server configuration"),
        Cmd::Audit { cmd } => audit_cli::run(&cfg, cmd).await?,
        Cmd::Admin {
            cmd:
                AdminCmd::Reconcile {
                    destroy_orphans,
                    yes,
                },
        } => {
            let (hsm, store) = server::open(&cfg).await?;
            let destroyed = admin_reconcile(&hsm, &store, destroy_orphans, yes).await?;
            // Destroying objects is recorded (a dry run changes nothing).
            if let Some(n) = destroyed {
                admin_engine(&cfg, hsm, store)
                    .await?
                    .record_admin("AdminDestroyOrphans", &format!("objects={n}"))
                    .await
                    .context(
                        "the objects were destroyed but the audit record could not be written",
                    )?;
            }
        }
        Cmd::Admin { cmd } => {
            let (hsm, store) = server::open(&cfg).await?;
            let engine = admin_engine(&cfg, hsm, store).await?;
            admin(&engine, cmd).await?;
        }
    }
    Ok(())
}

/// The engine of an admin command: its records join the audit chain with
/// the configured checkpoints.
async fn admin_engine(
    cfg: &Config,
    hsm: hsm_kms::hsm::Hsm,
    store: hsm_kms::store::Store,
) -> anyhow::Result<Engine> {
    Ok(Engine::with_options(
        hsm,
        store,
        hsm_kms::core::EngineOptions {
            activity_log: cfg.activity_log.enabled,
            activity_fsync: cfg.activity_log.fsync,
            checkpoints: cfg.audit.policy(),
            naver_region: cfg.naver.region()?,
            audit_seal: cfg.audit.seal,
            activity_writer_thread: cfg.activity_log.writer_thread,
            ..Default::default()
        },
    )
    .await?)
}

/// `/readyz` on the configured listen port; an unspecified listen address
/// (`0.0.0.0`, `::`) is probed through loopback.
fn default_probe_url(cfg: &Config) -> anyhow::Result<String> {
    let mut addr = cfg.listen_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(format!("http://{addr}/readyz"))
}

/// One HTTP/1.1 GET over a plain TCP connection; returns the status code.
async fn probe(url: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are probed"
    );
    let authority = uri.authority().context("URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    // The status line is all we need.
    while !head.contains(&b'\n') {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed before a status line");
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "not an HTTP status line: {}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// `hsm-kms admin reconcile [--destroy-orphans --yes]`. Needs no engine, so
/// it also runs against an empty or foreign store. Returns how many object
/// ids were destroyed, `None` for a dry run.
async fn admin_reconcile(
    hsm: &hsm_kms::hsm::Hsm,
    store: &hsm_kms::store::Store,
    destroy_orphans: bool,
    yes: bool,
) -> anyhow::Result<Option<usize>> {
    use hsm_kms::core::Inventory;
    let inv = Inventory::take(hsm, store).await?;
    let none = || "none".to_string();
    let agree = inv.store_id.is_some() && inv.store_id == inv.token_id;
    println!(
        "installation\ttoken={}\tstore={}\t{}",
        inv.token_id.clone().unwrap_or_else(none),
        inv.store_id.clone().unwrap_or_else(none),
        if agree { "agree" } else { "DISAGREE" }
    );
    let unknown = inv.unknown();
    for o in &unknown {
        println!("unknown\t{}\t{}\t{}", o.label, hex::encode(&o.id), o.class);
    }
    for m in &inv.missing {
        println!("missing\t{m}");
    }
    println!(
        "summary\t{} unknown objects (no store row names them), {} missing objects (named by the store, not on the token), {} objects on the token",
        unknown.len(),
        inv.missing.len(),
        inv.objects.len()
    );
    if !destroy_orphans {
        if !unknown.is_empty() {
            println!("dry run: nothing destroyed; `hsm-kms admin reconcile --destroy-orphans --yes` destroys the unknown objects for good");
        }
        return Ok(None);
    }
    anyhow::ensure!(
        yes,
        "--destroy-orphans destroys the {} unknown objects above for good; add --yes to confirm",
        unknown.len()
    );
    let n = hsm_kms::core::destroy_orphans(hsm, store).await?;
    println!("destroyed\t{n} object ids");
    Ok(Some(n))
}

/// The audit-trail action and target of an admin command that changes
/// something (`None` for reads). Never a secret: API keys, which callers
/// send as credentials, are not named.
fn admin_audit(cmd: &AdminCmd) -> Option<(&'static str, String)> {
    match cmd {
        AdminCmd::CreateAccount { name } => Some(("AdminCreateAccount", format!("account={name}"))),
        AdminCmd::CreateAccessKey { account } => {
            Some(("AdminCreateAccessKey", format!("account={account}")))
        }
        AdminCmd::RevokeAccessKey { access_key } => {
            Some(("AdminRevokeAccessKey", format!("accessKey={access_key}")))
        }
        AdminCmd::CreateApiKey { account } => {
            Some(("AdminCreateApiKey", format!("account={account}")))
        }
        AdminCmd::RevokeApiKey { .. } => Some(("AdminRevokeApiKey", String::new())),
        AdminCmd::Nhn { cmd } => Some(cmd.audit()),
        AdminCmd::Naver { cmd } => Some(cmd.audit()),
        AdminCmd::ListAccessKeys | AdminCmd::ListObjects | AdminCmd::Reconcile { .. } => None,
    }
}

async fn admin(engine: &Engine, cmd: AdminCmd) -> anyhow::Result<()> {
    let audit = admin_audit(&cmd);
    admin_run(engine, cmd).await?;
    // Recorded once done; a failed command changed nothing to record.
    if let Some((action, target)) = audit {
        engine
            .record_admin(action, &target)
            .await
            .context("the action was done but its audit record could not be written")?;
    }
    Ok(())
}

async fn admin_run(engine: &Engine, cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::CreateAccount { name } => {
            let id = engine.create_account(&name).await?;
            println!("account={name} id={id}");
        }
        AdminCmd::CreateAccessKey { account } => {
            let k = engine.create_access_key(&account).await?;
            println!("access_key={}", k.access_key);
            println!("secret_key={}", k.secret_key.as_str());
        }
        AdminCmd::ListAccessKeys => {
            for k in engine.list_access_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    k.access_key, k.account, k.status, k.created_at
                );
            }
        }
        AdminCmd::RevokeAccessKey { access_key } => {
            engine.revoke_access_key(&access_key).await?;
            println!("revoked {access_key}");
        }
        AdminCmd::CreateApiKey { account } => {
            println!("api_key={}", engine.create_api_key(&account).await?);
        }
        AdminCmd::RevokeApiKey { api_key } => {
            engine.revoke_api_key(&api_key).await?;
            println!("revoked API key");
        }
        AdminCmd::Nhn { cmd } => nhn_admin::run(engine, cmd).await?,
        AdminCmd::Naver { cmd } => naver_admin::run(engine, cmd).await?,
        // Taken before an engine is built, on the token and store alone (see
        // `run`); kept here so the match stays complete.
        AdminCmd::Reconcile { .. } => {
            anyhow::bail!("`admin reconcile` runs before the engine is built")
        }
        AdminCmd::ListObjects => {
            let mut objects = engine.service_objects().await?;
            objects.sort_by(|a, b| (&a.id, &a.class).cmp(&(&b.id, &b.class)));
            for info in objects {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "label": info.label, "class": info.class, "id": hex::encode(&info.id),
                        "key_type": info.key_type, "bits": info.bits, "curve": info.curve,
                        "private": info.private, "sensitive": info.sensitive, "extractable": info.extractable,
                        "local": info.local, "modifiable": info.modifiable,
                        "never_extractable": info.never_extractable, "always_sensitive": info.always_sensitive,
                    }))?
                );
            }
        }
    }
    Ok(())
}
