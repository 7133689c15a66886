//! The `hsm-kms` binary: `init`, `serve` and `admin` commands.
#![forbid(unsafe_code)]

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
    /// Administration: accounts and access keys.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
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
    /// NHN Secure Key Manager: projects, appkeys, User Access Keys, key
    /// stores and client certificates.
    Nhn {
        #[command(subcommand)]
        cmd: nhn_admin::NhnCmd,
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
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg);
    let res = run(cli.cmd, cfg).await;
    if let Err(e) = &res {
        tracing::error!(error = format!("{e:#}"), "hsm-kms failed");
    }
    res
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
            running.handle.await??;
        }
        Cmd::Admin { cmd } => {
            let (hsm, store) = server::open(&cfg).await?;
            let engine = Engine::new(hsm, store).await?;
            admin(&engine, cmd).await?;
        }
    }
    Ok(())
}

async fn admin(engine: &Engine, cmd: AdminCmd) -> anyhow::Result<()> {
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
        AdminCmd::ListObjects => {
            let mut ids: Vec<Vec<u8>> = engine
                .hsm()
                .list_service_objects()
                .await?
                .into_iter()
                .map(|o| o.id)
                .collect();
            ids.sort();
            ids.dedup();
            for id in ids {
                for info in engine.hsm().object_info(id.clone()).await? {
                    println!(
                        "{}",
                        serde_json::to_string(&serde_json::json!({
                            "label": info.label, "class": info.class, "id": hex::encode(&id),
                            "private": info.private, "sensitive": info.sensitive, "extractable": info.extractable,
                            "local": info.local, "modifiable": info.modifiable,
                            "never_extractable": info.never_extractable, "always_sensitive": info.always_sensitive,
                        }))?
                    );
                }
            }
        }
    }
    Ok(())
}
