//! Wiring: opens the token and the store from a [`Config`], runs the
//! reconciler, and serves the router. Used by `main` and by the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::{router, ApiConfig, AppState};
use crate::config::Config;
use crate::connections::{ConnLimits, Plain};
use crate::core::{
    ensure_service_keys, reconcile, spawn_scheduler, Engine, EngineOptions, NewAccessKey,
    ReconcileReport, StartMode,
};
use crate::hsm::Hsm;
use crate::store::Store;

/// Opens the token (login) and the store described by `cfg`.
///
/// Start-up phases are published as `hsm_kms_startup_seconds{phase}`:
/// `module` here (`C_Initialize`, where SoftHSMv2 reads its object store,
/// the slot, the login and the mechanism probe) and `store_open`; the
/// reconciler adds `enumeration` and `store_scan` (see [`start`]).
pub async fn open(cfg: &Config) -> anyhow::Result<(Hsm, Store)> {
    let hcfg = cfg.hsm_config()?;
    let t0 = Instant::now();
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&hcfg))
        .await
        .context("HSM worker")?
        .context("cannot open the HSM token")?;
    startup_phase("module", t0.elapsed());
    let t1 = Instant::now();
    let store = Store::open(&cfg.store.url, &PathBuf::from(&cfg.store.data_dir))
        .await
        .context("cannot open the metadata store")?;
    startup_phase("store_open", t1.elapsed());
    Ok((hsm, store))
}

/// Records how long one start-up phase took (`hsm_kms_startup_seconds`).
fn startup_phase(phase: &'static str, took: Duration) {
    metrics::gauge!("hsm_kms_startup_seconds", "phase" => phase).set(took.as_secs_f64());
}

/// The reconciler with the store path and token named in its refusals, so
/// that a wrong `store.data_dir` shows in the one-line error.
async fn start_up(hsm: &Hsm, store: &Store, mode: StartMode) -> anyhow::Result<ReconcileReport> {
    reconcile(hsm, store, mode).await.with_context(|| {
        format!(
            "store {} and token {:?}",
            store.describe(),
            hsm.token_label()
        )
    })
}

/// What `init` did.
#[derive(Debug)]
pub struct InitOutcome {
    /// Service keys created by this run.
    pub created_service_keys: Vec<&'static str>,
    /// The first account's credentials, when this run created them.
    pub first_credentials: Option<NewAccessKey>,
}

/// `hsm-kms init`: service keys in the token, schema, a first account with
/// one access key. Idempotent: a second run creates nothing.
///
/// The first account's creation is recorded in the audit chain as an admin
/// action (`AdminCreateAccount`, message `account=NAME accessKey=ID
/// via=init`) when the activity log is on, as `admin create-account`
/// records its own.
pub async fn init(cfg: &Config, account: &str) -> anyhow::Result<InitOutcome> {
    let (hsm, store) = open(cfg).await?;
    start_up(&hsm, &store, StartMode::Init).await?;
    let created = ensure_service_keys(&hsm, &store).await?;
    let engine = Engine::with_options(
        hsm,
        store,
        EngineOptions {
            activity_log: cfg.activity_log.enabled,
            activity_fsync: cfg.activity_log.fsync,
            checkpoints: cfg.audit.policy(),
            activity_statement_cache: cfg.activity_log.statement_cache,
            activity_writer_thread: cfg.activity_log.writer_thread,
            audit_seal: cfg.audit.seal,
            ..EngineOptions::default()
        },
    )
    .await?;
    let first_credentials = if engine.account_id(account).await?.is_none() {
        engine.create_account(account).await?;
        let key = engine.create_access_key(account).await?;
        engine
            .record_admin(
                "AdminCreateAccount",
                &format!("account={account} accessKey={} via=init", key.access_key),
            )
            .await
            .context("the first account was created but its audit record could not be written")?;
        Some(key)
    } else {
        None
    };
    Ok(InitOutcome {
        created_service_keys: created,
        first_credentials,
    })
}

/// A running server.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The bound address of the TLS listener, when `[tls] listen` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The engine it serves.
    pub engine: Engine,
    /// Completes when the server stops.
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens everything, reconciles, and serves on `cfg.server.listen` until
/// `shutdown` completes.
pub async fn start(
    cfg: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    cfg.validate()?;
    // Before the token is opened: the start-up enumeration that fills the
    // handle map is counted too (`hsm_kms_find_objects_total`).
    crate::api::metrics::handle();
    let started = Instant::now();
    let (hsm, store) = open(cfg).await?;
    let t_reconcile = Instant::now();
    // The AES versions' first blocks (README "GCM IVs") are reserved in the
    // store beside the token enumeration, which is far longer: they add
    // nothing to the start-up, and no request waits for them. So is the key
    // cache's read (README "### Key count"): the engine takes it once it
    // exists, with the changes logged since. Tasks of their own: neither
    // waits for the reconciler, nor holds a store transaction while the
    // reconciler's task is blocked.
    let first_blocks = tokio::spawn({
        let store = store.clone();
        let block = crate::core::first_block(cfg.hsm.gcm_invocation_limit);
        async move {
            let t = Instant::now();
            let ends = store
                .gcm_reserve_first_blocks(block, crate::core::FIRST_BLOCK_MAX)
                .await;
            (ends, t.elapsed())
        }
    });
    let preload = tokio::spawn({
        let store = store.clone();
        async move {
            let t = Instant::now();
            (crate::core::Preload::read(&store).await, t.elapsed())
        }
    });
    let report = start_up(&hsm, &store, StartMode::Serve).await?;
    let joined = |e: tokio::task::JoinError| crate::core::Error::Internal(e.to_string());
    let (first_blocks, t_first_blocks) = match first_blocks.await {
        Ok((r, t)) => (r.map_err(crate::core::Error::from), t),
        Err(e) => (Err(joined(e)), Duration::ZERO),
    };
    let (preload, t_preload) = match preload.await {
        Ok(v) => v,
        Err(e) => (Err(joined(e)), Duration::ZERO),
    };
    startup_phase("reconcile", t_reconcile.elapsed());
    startup_phase("enumeration", Duration::from_millis(report.enumeration_ms));
    startup_phase("store_scan", Duration::from_millis(report.store_scan_ms));
    tracing::info!(?report, "reconciler finished");
    if report.unknown_objects > 0 {
        tracing::warn!(
            unknown_objects = report.unknown_objects,
            "the token holds hsm-kms objects that the store does not name (keys made after the \
             store's backup, an interrupted init, or another tool's objects); they were left in \
             place: list them with `hsm-kms admin reconcile`"
        );
    }
    let engine = Engine::with_options(
        hsm,
        store,
        EngineOptions {
            activity_log: cfg.activity_log.enabled,
            activity_fsync: cfg.activity_log.fsync,
            token_hour_ms: i64::try_from(cfg.naver.token_hour_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            limits: cfg.limits.object_limits(),
            gcm_invocation_limit: cfg.hsm.gcm_invocation_limit,
            checkpoints: cfg.audit.policy(),
            activity_statement_cache: cfg.activity_log.statement_cache,
            activity_batch_wait: Duration::from_micros(cfg.activity_log.batch_wait_us),
            activity_batch_min: cfg.activity_log.batch_min_records,
            activity_batch_siblings: cfg.activity_log.batch_siblings,
            activity_writer_thread: cfg.activity_log.writer_thread,
            rsa_signature: cfg.naver.rsa_signature()?,
            naver_region: cfg.naver.region()?,
            audit_seal: cfg.audit.seal,
        },
    )
    .await?;
    // Before the listener: no request reads a key or reserves a version on
    // its own first.
    let t = Instant::now();
    let installed = match preload {
        Ok(p) => engine.install_preload(p).await,
        Err(e) => Err(e),
    };
    let preloaded = match installed {
        Ok(n) => {
            startup_phase("key_preload", t_preload + t.elapsed());
            tracing::info!(keys = n, "key cache preloaded");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "key preload failed; retried in the background");
            false
        }
    };
    match first_blocks {
        Ok(ends) => {
            let n = engine.adopt_first_blocks(engine.first_block(), &ends);
            startup_phase("gcm_first_blocks", t_first_blocks);
            tracing::info!(versions = n, "AES-GCM first blocks reserved");
        }
        Err(e) => tracing::warn!(
            error = %e,
            "reserving AES-GCM first blocks failed; versions reserve on first use"
        ),
    }
    engine.nhn_warn_optional_user_access_keys().await?;
    let rate_limit = cfg
        .rate_limit
        .quota()?
        .and_then(|(rps, burst)| crate::api::ratelimit::KeyRateLimiter::new(rps, burst));
    let replay_guard = Arc::new(
        crate::api::naver::ReplayGuard::new(
            cfg.naver.replay_mode()?,
            cfg.naver.signature_window_secs,
            cfg.naver.replay_guard_max_entries,
        )
        .shared(cfg.naver.replay_shared()?),
    );
    let api = ApiConfig {
        replay_guard,
        rate_limit,
        signature_window_secs: cfg.naver.signature_window_secs,
        naver_base_url: cfg.naver.base_url()?,
        trusted_proxies: cfg.trusted_proxies()?,
        body_limit: cfg.server.body_limit,
        max_batch_items: cfg.limits.max_batch_items,
        lean_requests: cfg.server.lean_requests,
        access_log: cfg.log.access,
    };
    crate::telemetry::security::set_key_labels(cfg.rate_limit.metrics_key_labels);
    let app = router(AppState {
        engine: engine.clone(),
        config: Arc::new(api),
    });
    let listener = TcpListener::bind(cfg.listen_addr()?)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let tls_addr = if cfg.tls.listen.is_empty() {
        None
    } else {
        engine.nhn_load_cas().await?;
        let tls_cfg = crate::tls::server_config(
            std::path::Path::new(&cfg.tls.cert_file),
            std::path::Path::new(&cfg.tls.key_file),
            cfg.tls.client_auth,
            &engine,
        )?;
        let tls_listener = TcpListener::bind(&cfg.tls.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.tls.listen))?;
        let tls_addr = tls_listener.local_addr()?;
        tokio::spawn(crate::tls::serve(
            tls_listener,
            tls_cfg,
            app.clone(),
            ConnLimits::from_config(&cfg.server),
            stop_rx.clone(),
        ));
        tracing::info!(%tls_addr, "hsm-kms TLS listener");
        Some(tls_addr)
    };
    crate::core::spawn_change_feed(
        engine.clone(),
        Duration::from_millis(cfg.store.change_poll_ms.max(10)),
    );
    spawn_scheduler(
        engine.clone(),
        Duration::from_secs(cfg.server.scheduler_interval_secs.max(1)),
    );
    // Served with hyper directly rather than axum::serve, for the
    // connection cap and the slow-client timeouts (crate::connections).
    let limits = ConnLimits::from_config(&cfg.server);
    let handle = tokio::spawn(async move {
        crate::connections::serve(listener, "plain", limits, Plain, app, stop_rx).await;
        Ok(())
    });
    startup_phase("total", started.elapsed());
    if !preloaded {
        // The key cache fills in the background: the first use of a key
        // then reads nothing from the store (README "### Key count").
        let preload = engine.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            match preload.preload_keys().await {
                Ok(n) => {
                    startup_phase("key_preload", t.elapsed());
                    tracing::info!(keys = n, "key cache preloaded");
                }
                Err(e) => tracing::warn!(error = %e, "key preload failed; keys load on first use"),
            }
        });
    }
    tracing::info!(%addr, token = engine.token_label(), "hsm-kms listening");
    Ok(Running {
        addr,
        tls_addr,
        engine,
        handle,
    })
}
