//! Shared test harness: a fresh token and SQLite store under a temp dir,
//! `init`, and the server on 127.0.0.1:0, in this process.
//!
//! The token is SoftHSMv2's by default; `HSM_KMS_TEST_MODULE=kryoptic` with
//! `PKCS11_MODULE` naming Kryoptic's module runs the same tests on a
//! Kryoptic token (see `scripts/test-kryoptic.sh`). Both read their config
//! file (`SOFTHSM2_CONF`, `KRYOPTIC_CONF`) once per process and a process
//! can initialise a PKCS#11 module once, so each test must run in its own
//! process: run the suite with `cargo nextest run` (see `scripts/test.sh`).
#![allow(dead_code)]

pub mod client;
pub mod independent;
pub mod p11kit;
pub mod process;
pub mod v3;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use hsm_kms::config::Config;
use hsm_kms::core::Engine;
use reqwest::Method;
use serde_json::Value;

/// User PIN of test tokens.
pub const PIN: &str = "1234";
/// SO PIN of test tokens.
pub const SO_PIN: &str = "12345678";

static STARTED: AtomicBool = AtomicBool::new(false);

/// The PKCS#11 module under test (`PKCS11_MODULE`, default Debian's SoftHSMv2).
pub fn module() -> String {
    std::env::var("PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

/// SoftHSMv2's object store for test tokens (`HSM_KMS_SOFTHSM_BACKEND`):
/// `file` (the default, Debian's build) or `db` (one SQLite file per token;
/// needs the module and `softhsm2-util` that `scripts/softhsm-db.sh` builds,
/// named in `PKCS11_MODULE` and `SOFTHSM2_UTIL`; see
/// `scripts/test-softhsm-db.sh`).
pub fn softhsm_backend() -> &'static str {
    match std::env::var("HSM_KMS_SOFTHSM_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("file") => "file",
        Ok("db") => "db",
        Ok(other) => panic!("HSM_KMS_SOFTHSM_BACKEND={other:?}: expected file or db"),
    }
}

/// The `softhsm2-util` that makes test tokens (`SOFTHSM2_UTIL`, default the
/// one on `PATH`): it must be of the same build as the module, since only a
/// build with the `db` backend can make a `db` token.
pub fn softhsm_util() -> String {
    std::env::var("SOFTHSM2_UTIL").unwrap_or_else(|_| "softhsm2-util".into())
}

/// True (after printing why) when the test needs SoftHSMv2's `file` object
/// store and the suite runs on the `db` one. Use:
/// `if common::softhsm_file_only("...") { return; }`.
pub fn softhsm_file_only(reason: &str) -> bool {
    let db = test_module() == TestModule::SoftHsm && softhsm_backend() == "db";
    if db {
        println!("SKIPPED on SoftHSM db: {reason}");
        eprintln!("SKIPPED on SoftHSM db: {reason}");
    }
    db
}

/// The PKCS#11 implementation the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestModule {
    /// SoftHSMv2 (the default).
    SoftHsm,
    /// Kryoptic, its token a SQLite file named in `KRYOPTIC_CONF`.
    Kryoptic,
}

/// `HSM_KMS_TEST_MODULE`: `softhsm` (default) or `kryoptic`.
pub fn test_module() -> TestModule {
    match std::env::var("HSM_KMS_TEST_MODULE").as_deref() {
        Err(_) | Ok("") | Ok("softhsm") => TestModule::SoftHsm,
        Ok("kryoptic") => TestModule::Kryoptic,
        Ok(other) => panic!("HSM_KMS_TEST_MODULE={other:?}: expected softhsm or kryoptic"),
    }
}

/// The variable that names the token's config file for the module under
/// test (`SOFTHSM2_CONF` or `KRYOPTIC_CONF`), for tests that start the
/// binary on a given token.
pub fn token_conf_var() -> &'static str {
    match test_module() {
        TestModule::SoftHsm => "SOFTHSM2_CONF",
        TestModule::Kryoptic => "KRYOPTIC_CONF",
    }
}

/// The config file [`make_token`] writes under `dir` for the module under
/// test.
pub fn token_conf_path(dir: &Path) -> PathBuf {
    match test_module() {
        TestModule::SoftHsm => dir.join("softhsm2.conf"),
        TestModule::Kryoptic => dir.join("kryoptic.conf"),
    }
}

/// True (after printing why) when the test must be skipped because it needs
/// SoftHSMv2 itself (its tools, its file layout or its behaviour) and the
/// suite runs on another module. Use: `if common::softhsm_only("...") { return; }`.
pub fn softhsm_only(reason: &str) -> bool {
    let other = test_module() != TestModule::SoftHsm;
    if other {
        println!("SKIPPED on {:?}: {reason}", test_module());
        eprintln!("SKIPPED on {:?}: {reason}", test_module());
    }
    other
}

/// `pkcs11-tool` (OpenSC) on the test token, logged in with the user PIN.
pub fn pkcs11_tool() -> Command {
    let mut c = Command::new("pkcs11-tool");
    c.args([
        "--module",
        &module(),
        "--token-label",
        "hsm-kms-test",
        "--login",
        "--pin",
        PIN,
    ]);
    c
}

/// Makes a token config and one initialised token labelled `label` under
/// `dir` for the module under test; returns the config path. Sets
/// [`token_conf_var`] (`SOFTHSM2_CONF` or `KRYOPTIC_CONF`) for this process.
pub fn make_token(dir: &Path, label: &str) -> PathBuf {
    make_token_with_pin(dir, label, PIN)
}

/// [`make_token`] with another user PIN.
pub fn make_token_with_pin(dir: &Path, label: &str, pin: &str) -> PathBuf {
    if test_module() == TestModule::Kryoptic {
        return make_kryoptic_token(dir, label, pin);
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = {}\nlog.level = ERROR\n",
            tokens.display(),
            softhsm_backend()
        ),
    )
    .expect("softhsm2.conf");
    let out = Command::new(softhsm_util())
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            pin,
        ])
        .output()
        .expect("softhsm2-util must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "softhsm2-util failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::env::set_var("SOFTHSM2_CONF", &conf);
    conf
}

/// True when the suite runs on PostgreSQL (`HSM_KMS_TEST_STORE=postgres`,
/// with the throwaway cluster of `scripts/postgres.sh` in
/// `HSM_KMS_TEST_PG_URL`); SQLite otherwise.
pub fn on_postgres() -> bool {
    std::env::var("HSM_KMS_TEST_STORE").as_deref() == Ok("postgres")
}

/// For tests of SQLite itself (its file, its disk): on PostgreSQL prints
/// why the test does not apply and returns true (the test returns).
pub fn sqlite_only(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on postgres: {why}");
        return true;
    }
    false
}

/// The store URL of a fresh service: on PostgreSQL a new database of its
/// own in the cluster at `HSM_KMS_TEST_PG_URL`, copied from a migrated
/// template database (see [`pg_template`]); empty (SQLite under the data
/// dir) otherwise.
pub fn test_store_url() -> String {
    if !on_postgres() {
        return String::new();
    }
    let admin = std::env::var("HSM_KMS_TEST_PG_URL").expect(
        "HSM_KMS_TEST_STORE=postgres needs HSM_KMS_TEST_PG_URL: run under scripts/postgres.sh -- ...",
    );
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}/{name}",
        admin.rsplit_once('/').expect("a URL with a database").0
    );
    // Called from sync and async contexts alike: its own thread and runtime.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                use sqlx::{Connection as _, Executor as _};
                let mut c = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the test cluster");
                let template = pg_template(&mut c, &admin).await;
                c.execute(format!("CREATE DATABASE {name} TEMPLATE {template}").as_str())
                    .await
                    .expect("create the test database");
                c.close().await.expect("close the admin connection");
            })
    })
    .join()
    .expect("create the test database");
    url
}

/// The name of a database in the test cluster holding the service's
/// PostgreSQL migrations, made once per cluster and migration set (its name
/// carries a hash of the migrations' versions and checksums): each test's
/// database is a copy of it, so a test pays neither for migrating nor for
/// copying `template1`'s catalogue churn. Nextest runs every test in a
/// process of its own, so the first one builds it under a session advisory
/// lock and the others wait for it.
async fn pg_template(admin_conn: &mut sqlx::PgConnection, admin: &str) -> String {
    use sqlx::{Connection as _, Executor as _};
    use std::hash::{Hash as _, Hasher as _};
    const TEMPLATE_LOCK: i64 = 0x0074_706c_2d6b_6d73;
    let migrator = sqlx::migrate!("./migrations/postgres");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in migrator.iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    let template = format!("tpl_{:016x}", h.finish());
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin_conn)
        .await
        .expect("template lock");
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&template)
        .fetch_optional(&mut *admin_conn)
        .await
        .expect("look the template up");
    if exists.is_none() {
        // Built under another name and renamed when complete: a test killed
        // half-way leaves no half-migrated template behind.
        let building = format!("{template}_{}", uuid::Uuid::new_v4().simple());
        admin_conn
            .execute(format!("CREATE DATABASE {building}").as_str())
            .await
            .expect("create the template database");
        let url = format!(
            "{}/{building}",
            admin.rsplit_once('/').expect("a URL with a database").0
        );
        let mut t = sqlx::PgConnection::connect(&url)
            .await
            .expect("connect to the template database");
        migrator.run(&mut t).await.expect("migrate the template");
        t.close().await.expect("close the template connection");
        admin_conn
            .execute(format!("ALTER DATABASE {building} RENAME TO {template}").as_str())
            .await
            .expect("name the template database");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin_conn)
        .await
        .expect("template unlock");
    template
}

/// A store as a release before migration `before` left it: this engine's
/// migrations numbered below `before`, applied to a new, empty database (a
/// `metadata.db` under [`LegacyStore::data`] for SQLite; a new database in
/// the PostgreSQL test cluster, not [`test_store_url`]'s, whose databases
/// may come migrated).
pub struct LegacyStore {
    /// Holds the migrations and the data dir.
    pub dir: tempfile::TempDir,
    /// The data dir (`store.data_dir`).
    pub data: PathBuf,
    /// The SQLite file (unused on PostgreSQL).
    pub db_file: PathBuf,
    /// `store.url`: empty for SQLite.
    pub url: String,
}

impl LegacyStore {
    /// Makes the store and runs the migrations before `before` on it.
    pub async fn before(before: &str) -> LegacyStore {
        use sqlx::{Connection as _, Executor as _};
        let dir = tempfile::tempdir().unwrap();
        let migs = dir.path().join("migrations");
        std::fs::create_dir_all(&migs).unwrap();
        let engine = if on_postgres() { "postgres" } else { "sqlite" };
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(engine);
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.as_str() < before {
                std::fs::copy(&p, migs.join(&name)).unwrap();
            }
        }
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let db_file = data.join("metadata.db");
        let migrator = sqlx::migrate::Migrator::new(migs.as_path()).await.unwrap();
        let url = if on_postgres() {
            let admin = std::env::var("HSM_KMS_TEST_PG_URL").expect("HSM_KMS_TEST_PG_URL");
            let name = format!("legacy_{}", uuid::Uuid::new_v4().simple());
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            c.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            c.close().await.unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            let db = sqlx::PgPool::connect(&url).await.unwrap();
            migrator.run(&db).await.unwrap();
            db.close().await;
            url
        } else {
            std::fs::File::create(&db_file).unwrap();
            let db = db_pool(&db_file).await;
            migrator.run(&db).await.unwrap();
            db.close().await;
            String::new()
        };
        LegacyStore {
            dir,
            data,
            db_file,
            url,
        }
    }

    /// Runs `statements` on the legacy store, as a release before the
    /// migration under test would have written its rows.
    pub async fn execute(&self, statements: &[&str]) {
        let db = any_pool(&self.url, &self.db_file).await;
        for sql in statements {
            sqlx::query(sql)
                .execute(&db)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        db.close().await;
    }
}

/// A pool on a store written by the service, through sqlx's `Any` driver:
/// the SQLite file at `path` when `url` is empty, else the PostgreSQL
/// database. Queries for both engines use `$N` parameters.
pub async fn any_pool(url: &str, path: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.is_empty() {
        format!("sqlite://{}", path.display())
    } else {
        url.to_string()
    };
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("open the store")
}

/// Slot id of the Kryoptic test tokens.
pub const KRYOPTIC_SLOT: u64 = 42;

/// A Kryoptic config naming one SQLite token file under `dir` (a 0700
/// directory, the file made under umask 077), the token initialised with
/// `pkcs11-tool --init-token` and `--init-pin` as Kryoptic documents.
fn make_kryoptic_token(dir: &Path, label: &str, pin: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    let tokens = dir.join("tokens");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tokens)
        .expect("token dir");
    let conf = dir.join("kryoptic.conf");
    std::fs::write(
        &conf,
        format!(
            "[[slots]]\nslot = {KRYOPTIC_SLOT}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            tokens.join("token.sql").display()
        ),
    )
    .expect("kryoptic.conf");
    let slot = KRYOPTIC_SLOT.to_string();
    let steps: [&[&str]; 2] = [
        &[
            "--init-token",
            "--slot",
            &slot,
            "--label",
            label,
            "--so-pin",
            SO_PIN,
        ],
        &[
            "--slot",
            &slot,
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--init-pin",
            "--pin",
            pin,
        ],
    ];
    for args in steps {
        let out = Command::new("sh")
            .args(["-c", "umask 077 && exec pkcs11-tool --module \"$0\" \"$@\""])
            .arg(module())
            .args(args)
            .env("KRYOPTIC_CONF", &conf)
            .output()
            .expect(
                "pkcs11-tool (OpenSC) must be installed (scripts/test-kryoptic.sh installs it)",
            );
        assert!(
            out.status.success(),
            "pkcs11-tool {} failed: {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::env::set_var("KRYOPTIC_CONF", &conf);
    conf
}

/// A config for a token and data dir under `dir`.
pub fn config(dir: &Path) -> Config {
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, PIN).expect("pin file");
    let mut cfg = Config::default();
    cfg.hsm.module = module();
    cfg.hsm.token_label = Some("hsm-kms-test".into());
    cfg.hsm.pin_env = "HSM_KMS_TEST_PIN_UNSET".into();
    cfg.hsm.pin_file = Some(pin_file.display().to_string());
    cfg.store.data_dir = dir.join("data").display().to_string();
    cfg.store.url = test_store_url();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.scheduler_interval_secs = 3600;
    cfg
}

/// A running service with a first account.
pub struct Kms {
    /// Base URL, `http://127.0.0.1:port`.
    pub url: String,
    /// First account's access key.
    pub access_key: String,
    /// First account's secret key.
    pub secret_key: String,
    /// The engine, for assertions through the PKCS#11 layer and the store.
    pub engine: Engine,
    /// The config used.
    pub config: Config,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Temp dir holding the token and the store.
    pub dir: tempfile::TempDir,
}

/// An HTTP answer: status and JSON body (`Value::Null` if not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// `body.data`.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    /// Asserts a NAVER error envelope with this status and error code.
    pub fn assert_naver_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status, body: {}",
            self.body
        );
        assert_eq!(self.body["error"]["errorCode"], code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"].is_string(),
            "body: {}",
            self.body
        );
        assert!(
            self.body["error"]["details"].is_string(),
            "body: {}",
            self.body
        );
    }
    /// Asserts NAVER success and returns `data`.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "body: {}", self.body);
        assert_eq!(self.body["code"], "SUCCESS", "body: {}", self.body);
        self.data()
    }
}

/// Milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A signing timestamp (ms text) this process has not used before: now, or
/// one past the last one handed out. A signature covers method, path,
/// timestamp and access key, so two calls signed in the same millisecond
/// would be identical and the replay guard refuses the second on management
/// calls; well-behaved clients never reuse a timestamp, and neither do tests.
pub fn fresh_ts() -> String {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now_ms();
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    let ts = if prev >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    };
    ts.to_string()
}

impl Kms {
    /// Starts a fresh service (new token, new store, `init`).
    pub async fn start() -> Kms {
        Self::start_with(|_| {}).await
    }

    /// Starts a fresh service after `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Kms {
        assert!(
            !STARTED.swap(true, Ordering::SeqCst),
            "one service per test process: run the integration tests with `cargo nextest run`"
        );
        // Errors of the service show in a failing test's output (RUST_LOG for more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        make_token(dir.path(), "hsm-kms-test");
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let out = hsm_kms::server::init(&cfg, "default").await.expect("init");
        let creds = out.first_credentials.expect("first credentials");
        let running = hsm_kms::server::start(&cfg, std::future::pending())
            .await
            .expect("start");
        Kms {
            url: format!("http://{}", running.addr),
            access_key: creds.access_key.clone(),
            secret_key: creds.secret_key.to_string(),
            engine: running.engine,
            config: cfg,
            client: reqwest::Client::new(),
            dir,
        }
    }

    /// Creates another account with its own access key: (access key, secret).
    pub async fn second_account(&self, name: &str) -> (String, String) {
        self.engine.create_account(name).await.expect("account");
        let k = self
            .engine
            .create_access_key(name)
            .await
            .expect("access key");
        (k.access_key.clone(), k.secret_key.to_string())
    }

    /// A request signed with signature v2 by the first account.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_as(
            &self.access_key.clone(),
            &self.secret_key.clone(),
            method,
            path,
            body,
        )
        .await
    }

    /// The three v2 signature headers for a request signed at `ts` (ms text).
    pub fn signed_headers(
        ak: &str,
        sk: &str,
        method: &str,
        path: &str,
        ts: &str,
    ) -> Vec<(String, String)> {
        let sig = sign(
            SignatureVersion::V2,
            sk.as_bytes(),
            method,
            path,
            ts,
            ak,
            None,
        );
        vec![
            ("x-ncp-apigw-timestamp".to_string(), ts.to_string()),
            ("x-ncp-iam-access-key".to_string(), ak.to_string()),
            ("x-ncp-apigw-signature-v2".to_string(), sig),
        ]
    }

    /// A request by the first account with raw body bytes (e.g. malformed JSON).
    pub async fn call_raw_body(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let h = Self::signed_headers(
            &self.access_key,
            &self.secret_key,
            method,
            path,
            &fresh_ts(),
        );
        self.raw(method, path, &h, Some(body.to_vec())).await
    }

    /// `POST /kms/v1/keys/{tag}/{action}` by the first account.
    pub async fn op(&self, tag: &str, action: &str, body: Value) -> Reply {
        self.call("POST", &format!("/kms/v1/keys/{tag}/{action}"), Some(body))
            .await
    }

    /// Encrypts one plaintext and returns the ciphertext text.
    pub async fn encrypt(&self, tag: &str, plaintext: &[u8], context: Option<&[u8]>) -> String {
        let mut body = serde_json::json!({"plaintext": b64(plaintext)});
        if let Some(c) = context {
            body["context"] = b64(c).into();
        }
        let r = self.op(tag, "encrypt", body).await;
        r.ok()["ciphertext"]
            .as_str()
            .expect("ciphertext")
            .to_string()
    }

    /// Decrypt request; the reply is returned unchecked.
    pub async fn decrypt(&self, tag: &str, ciphertext: &str, context: Option<&[u8]>) -> Reply {
        let mut body = serde_json::json!({"ciphertext": ciphertext});
        if let Some(c) = context {
            body["context"] = b64(c).into();
        }
        self.op(tag, "decrypt", body).await
    }

    /// Decrypts and returns the plaintext bytes (asserting success).
    pub async fn decrypt_ok(&self, tag: &str, ciphertext: &str, context: Option<&[u8]>) -> Vec<u8> {
        let r = self.decrypt(tag, ciphertext, context).await;
        unb64(r.ok()["plaintext"].as_str().expect("plaintext"))
    }

    /// Path of the SQLite metadata file.
    pub fn db_path(&self) -> PathBuf {
        PathBuf::from(&self.config.store.data_dir).join("metadata.db")
    }

    /// A separate connection pool on the service's store (SQLite file or
    /// PostgreSQL database), for tests that move scheduled times into the
    /// past.
    pub async fn db(&self) -> sqlx::AnyPool {
        any_pool(&self.config.store.url, &self.db_path()).await
    }

    /// A request signed with signature v2 by the given access key.
    pub async fn call_as(
        &self,
        ak: &str,
        sk: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let ts = fresh_ts();
        let sig = sign(
            SignatureVersion::V2,
            sk.as_bytes(),
            method,
            path,
            &ts,
            ak,
            None,
        );
        let headers = vec![
            ("x-ncp-apigw-timestamp".to_string(), ts),
            ("x-ncp-iam-access-key".to_string(), ak.to_string()),
            ("x-ncp-apigw-signature-v2".to_string(), sig),
        ];
        self.raw(
            method,
            path,
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// A request with exactly these headers and body bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        send(&self.client, &self.url, method, path, headers, body).await
    }

    /// Creates a key and returns its keyTag.
    pub async fn create_key(&self, name: &str, key_type: &str, extra: Value) -> String {
        let mut body =
            serde_json::json!({"keyName": name, "keyType": key_type, "isAutoRotation": false});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.call("POST", "/kms/v1/keys", Some(body)).await;
        r.ok()["keyTag"].as_str().expect("keyTag").to_string()
    }
}

/// Sends a request with exactly these headers and body bytes to `url`.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Reply {
    let m = Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = client.request(m, format!("{url}{path}"));
    for (k, v) in headers {
        rb = rb.header(k, v);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let resp = rb.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        headers,
    }
}

/// Base64 (standard).
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Base64 decode (standard).
pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// A connection pool on a SQLite file written by the service.
pub async fn db_pool(path: &Path) -> sqlx::SqlitePool {
    use std::str::FromStr as _;
    let opts =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .expect("sqlite url")
            .busy_timeout(std::time::Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("open metadata.db")
}

/// API Gateway signature v1 headers (API 1.0 under `/keys/v1`) for a POST
/// to `path`, signed now with the account's access key and `api_key`.
#[allow(dead_code)]
pub fn v1_headers(kms: &Kms, api_key: &str, path: &str) -> Vec<(String, String)> {
    let ts = now_ms().to_string();
    let sig = sign(
        SignatureVersion::V1,
        kms.secret_key.as_bytes(),
        "POST",
        path,
        &ts,
        &kms.access_key,
        Some(api_key),
    );
    vec![
        ("x-ncp-apigw-timestamp".to_string(), ts),
        ("x-ncp-apigw-api-key".to_string(), api_key.to_string()),
        ("x-ncp-iam-access-key".to_string(), kms.access_key.clone()),
        ("x-ncp-apigw-signature-v1".to_string(), sig),
    ]
}

/// A v1-signed API 1.0 POST (signature over the path as sent).
#[allow(dead_code)]
pub async fn v1_call(kms: &Kms, api_key: &str, path: &str, body: Value) -> Reply {
    let h = v1_headers(kms, api_key, path);
    kms.raw("POST", path, &h, Some(body.to_string().into_bytes()))
        .await
}

impl Kms {
    /// The sum of a metric's samples in `/metrics` whose line starts with
    /// `name` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    /// The `hsm-kms` binary pointed at this service's token and store
    /// (every inherited `HSM_KMS_*` variable removed), for CLI commands.
    pub fn cli(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HSM_KMS_") {
                c.env_remove(k);
            }
        }
        let cfg = &self.config;
        c.env("HSM_KMS_HSM_MODULE", &cfg.hsm.module)
            .env("HSM_KMS_HSM_TOKEN_LABEL", "hsm-kms-test")
            .env("HSM_KMS_PIN", PIN)
            .env("HSM_KMS_STORE_DATA_DIR", &cfg.store.data_dir)
            .env("HSM_KMS_STORE_URL", &cfg.store.url)
            .env("HSM_KMS_NAVER_REGION", &cfg.naver.region)
            .env("HSM_KMS_LOG_LEVEL", "warn")
            .env("HSM_KMS_LOG_FORMAT", "text");
        c
    }
}
