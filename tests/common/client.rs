//! `hsm-kms client ...` as a subprocess: a HOME of its own (so no profile
//! of the machine is read), no inherited `HSM_KMS_*` variable, and its
//! exit code, JSON output and messages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One run of the client.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output parsed as JSON (`Null` when it is not).
    pub json: Value,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts exit code 0 and returns the JSON output.
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.code, 0,
            "client failed: {}\n{}",
            self.stdout, self.stderr
        );
        &self.json
    }

    /// Asserts this exit code.
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A client environment: its HOME and variables.
pub struct Client {
    /// The HOME of the runs (a temp dir).
    pub home: tempfile::TempDir,
    /// Variables of every run.
    pub env: Vec<(String, String)>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with an empty HOME and no variables.
    pub fn new() -> Client {
        Client {
            home: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    /// Adds a variable to every run.
    pub fn with(mut self, k: &str, v: &str) -> Client {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// The default profile file, `$HOME/.config/hsm-kms/profiles.toml`.
    pub fn default_profile(&self) -> PathBuf {
        self.home.path().join(".config/hsm-kms/profiles.toml")
    }

    /// Writes a profile file with this mode.
    pub fn write_profile(&self, path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("profile dir");
        }
        std::fs::write(path, text).expect("profile file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// `hsm-kms client ARGS` with these extra variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HSM_KMS_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.home.path()).arg("client").args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run hsm-kms client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `hsm-kms client ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }
}

/// A profile table in TOML: `[name]` and `key = "value"` lines.
pub fn profile(name: &str, fields: &[(&str, &str)]) -> String {
    let mut s = format!("[{name}]\n");
    for (k, v) in fields {
        s.push_str(&format!("{k} = {}\n", toml_string(v)));
    }
    s
}

fn toml_string(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}
