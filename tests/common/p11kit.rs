//! `p11-kit server` exporting a test token on a Unix socket, the stand-in
//! for a network HSM (tests/network_hsm.rs, tests/cluster.rs). The tests need
//! p11-kit 0.25.5 (Debian 12's 0.24.1 forwards no AES-GCM); the scripts that
//! run them build it with `scripts/p11-kit.sh` and set `P11_KIT_BIN` and
//! `P11_KIT_CLIENT_MODULE`.
//!
//! The server forks one `p11-kit remote` per client connection, each loading
//! the token's module on its own and running that connection's calls one at
//! a time. Killing the server means killing its process group: a dead
//! listener alone would leave the connections served.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::TOKEN_LABEL;

/// The p11-kit build to use, from the environment `scripts/p11-kit.sh` sets.
pub fn p11kit_paths() -> (PathBuf, PathBuf) {
    let get = |k: &str| {
        let v = std::env::var_os(k).unwrap_or_else(|| {
            panic!("{k} is not set: run scripts/test-network-hsm.sh or scripts/test-cluster.sh (they build p11-kit 0.25.5)")
        });
        let p = PathBuf::from(v);
        assert!(p.exists(), "{k}={} does not exist", p.display());
        p
    };
    (get("P11_KIT_BIN"), get("P11_KIT_CLIENT_MODULE"))
}

/// `p11-kit server` exporting the site's token on a Unix socket, in its own
/// process group so that it and its per-connection children die together.
pub struct P11KitServer {
    bin: PathBuf,
    softhsm_conf: PathBuf,
    socket: PathBuf,
    log_dir: PathBuf,
    runs: usize,
    child: Option<Child>,
}

impl P11KitServer {
    pub fn new(bin: PathBuf, softhsm_conf: PathBuf, dir: &Path) -> P11KitServer {
        P11KitServer {
            bin,
            softhsm_conf,
            socket: dir.join("p11-kit.sock"),
            log_dir: dir.to_path_buf(),
            runs: 0,
            child: None,
        }
    }

    /// `P11_KIT_SERVER_ADDRESS` for the client module.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// Starts the server (on the same socket path every time) and waits
    /// until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "p11-kit server already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_dir.join(format!("p11-kit-{}.log", self.runs)))
            .expect("p11-kit log");
        let child = Command::new(&self.bin)
            .arg("server")
            .arg("--foreground")
            .arg("--provider")
            .arg(super::module())
            .arg("--name")
            .arg(&self.socket)
            .arg(format!("pkcs11:token={TOKEN_LABEL}"))
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn p11-kit server");
        self.child = Some(child);
        let start = Instant::now();
        // A stale socket file from a killed server refuses connections until
        // the new server has replaced it. A probe connection costs one
        // short-lived `p11-kit remote` child.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("p11-kit server exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "p11-kit server did not listen on {}: {}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the server's whole process group (the listener and every
    /// `p11-kit remote` serving a connection) and reaps the listener.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("p11-kit server not running");
        let status = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill of the p11-kit process group failed");
        child.wait().expect("reap p11-kit server");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("p11-kit-{}.log", self.runs)))
            .unwrap_or_default()
    }
}

impl Drop for P11KitServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
    }
}
