//! The real `hsm-kms` binary as a subprocess, configured only through
//! `HSM_KMS_*` environment variables, for tests that kill it (SIGKILL) and
//! start it again on the same token and store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{make_token_with_pin, send, Kms, Reply, PIN};

/// Label of the token the subprocesses use.
pub const TOKEN_LABEL: &str = "hsm-kms-test";

/// A token and data dir shared by successive runs of the binary.
pub struct Site {
    /// Temp dir holding everything.
    pub dir: tempfile::TempDir,
    /// The token's config (`SOFTHSM2_CONF` or `KRYOPTIC_CONF`, see
    /// [`super::token_conf_var`]).
    pub softhsm_conf: PathBuf,
    /// The store's data dir.
    pub data_dir: PathBuf,
    /// The PostgreSQL store's URL; empty on SQLite.
    pub store_url: String,
    /// First account's access key, from `hsm-kms init`.
    pub access_key: String,
    /// First account's secret key, from `hsm-kms init`.
    pub secret_key: String,
    /// What `hsm-kms init` wrote on stderr.
    pub init_stderr: String,
    pin: String,
    env: Vec<(String, String)>,
    runs: usize,
}

/// A running `hsm-kms serve`.
pub struct Server {
    /// The child process.
    pub child: Child,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Credentials.
    pub access_key: String,
    /// Credentials.
    pub secret_key: String,
}

/// One object as `hsm-kms admin list-objects` prints it.
#[derive(Debug, Clone)]
pub struct ObjectLine {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex.
    pub id: String,
    /// Object class.
    pub class: String,
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_hsm-kms")
}

impl Site {
    /// Makes a token and runs `hsm-kms init`.
    pub fn init() -> Site {
        Self::init_with(PIN, &[])
    }

    /// Makes a token whose user PIN is `pin` and runs `hsm-kms init`; every
    /// command of the site (init, serve, admin) gets `env` on top of the
    /// defaults.
    pub fn init_with(pin: &str, env: &[(&str, &str)]) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let softhsm_conf = make_token_with_pin(dir.path(), TOKEN_LABEL, pin);
        let data_dir = dir.path().join("data");
        let mut site = Site {
            dir,
            softhsm_conf,
            data_dir,
            store_url: super::test_store_url(),
            access_key: String::new(),
            secret_key: String::new(),
            init_stderr: String::new(),
            pin: pin.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runs: 0,
        };
        let out = site
            .command()
            .arg("init")
            .output()
            .expect("run hsm-kms init");
        assert!(
            out.status.success(),
            "hsm-kms init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        site.init_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            if let Some(v) = line.strip_prefix("access_key=") {
                site.access_key = v.to_string();
            } else if let Some(v) = line.strip_prefix("secret_key=") {
                site.secret_key = v.to_string();
            }
        }
        assert!(!site.access_key.is_empty() && !site.secret_key.is_empty());
        site
    }

    /// Runs the binary with `args` on the site and returns its stdout and
    /// stderr; panics with its stderr unless it exits successfully.
    pub fn admin(&self, args: &[&str]) -> (String, String) {
        let out = self.command().args(args).output().expect("run hsm-kms");
        assert!(
            out.status.success(),
            "hsm-kms {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A command for the binary with the site's environment and nothing
    /// inherited that could change its config.
    pub fn command(&self) -> Command {
        self.command_of(binary())
    }

    /// [`Site::command`] for another build of the binary (`program`).
    pub fn command_of(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("HSM_KMS_") {
                c.env_remove(k);
            }
        }
        c.env(super::token_conf_var(), &self.softhsm_conf)
            .env("HSM_KMS_HSM_MODULE", super::module())
            .env("HSM_KMS_HSM_TOKEN_LABEL", TOKEN_LABEL)
            .env("HSM_KMS_PIN", &self.pin)
            .env("HSM_KMS_STORE_DATA_DIR", &self.data_dir)
            .env("HSM_KMS_STORE_URL", &self.store_url)
            .env("HSM_KMS_SERVER_LISTEN", "127.0.0.1:0")
            .env("HSM_KMS_LOG_LEVEL", "warn")
            .env("HSM_KMS_LOG_FORMAT", "text");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `hsm-kms serve` with extra environment variables and waits
    /// until it listens.
    pub async fn serve(&mut self, extra_env: &[(&str, &str)]) -> Server {
        self.serve_with_binary(binary(), extra_env).await
    }

    /// [`Site::serve`] with another build of the binary (`program`, e.g. a
    /// release build for throughput figures).
    pub async fn serve_with_binary(&mut self, program: &str, extra_env: &[(&str, &str)]) -> Server {
        self.try_serve_with_binary(program, extra_env)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Site::serve_with_binary`], returning why the process exited
    /// instead of panicking when it exits before it listens (a test that
    /// restarts a node the way a supervisor does).
    pub async fn try_serve_with_binary(
        &mut self,
        program: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Server, String> {
        self.runs += 1;
        let addr_file = self.dir.path().join(format!("addr-{}", self.runs));
        let log = std::fs::File::create(self.dir.path().join(format!("serve-{}.log", self.runs)))
            .expect("log file");
        let mut cmd = self.command_of(program);
        cmd.arg("serve")
            .arg("--addr-file")
            .arg(&addr_file)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hsm-kms serve");
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_string();
                }
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Err(format!(
                    "hsm-kms serve exited with {status}: {}",
                    self.log(self.runs)
                ));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "hsm-kms serve did not start: {}",
                self.log(self.runs)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Server {
            child,
            url: format!("http://{addr}"),
            client: reqwest::Client::new(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        })
    }

    /// The log of run `n` of `serve`.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("serve-{n}.log"))).unwrap_or_default()
    }

    /// The service's objects on the token, from `hsm-kms admin list-objects`
    /// (which does not reconcile).
    pub fn token_objects(&self) -> Vec<ObjectLine> {
        let out = self
            .command()
            .args(["admin", "list-objects"])
            .output()
            .expect("run hsm-kms admin list-objects");
        assert!(
            out.status.success(),
            "admin list-objects failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("JSON line");
                ObjectLine {
                    label: v["label"].as_str().unwrap().to_string(),
                    id: v["id"].as_str().unwrap().to_string(),
                    class: v["class"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    /// The SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("metadata.db")
    }

    /// A pool on the store (SQLite file or PostgreSQL database).
    pub async fn db(&self) -> sqlx::AnyPool {
        super::any_pool(&self.store_url, &self.db_path()).await
    }
}

impl Server {
    /// A v2-signed request by the first account.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let h = Kms::signed_headers(
            &self.access_key,
            &self.secret_key,
            method,
            path,
            &super::fresh_ts(),
        );
        send(
            &self.client,
            &self.url,
            method,
            path,
            &h,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
