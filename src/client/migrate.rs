//! `hsm-kms client migrate`: re-encrypts stored ciphertexts when moving
//! from NAVER Cloud KMS or NHN Secure Key Manager to hsm-kms. Key material
//! cannot leave the vendors' HSMs, so each ciphertext is decrypted by the
//! old service (the source) and encrypted by hsm-kms (the target) under the
//! same key identifier, which the operator recreated there with `admin
//! naver create-key --key-tag` / `admin nhn create-key --key-id`.
//!
//! Input, one item per line:
//! - `lines`: a ciphertext per line (blank lines are kept blank);
//! - `jsonl`: a JSON object per line with `ciphertext` and, optionally,
//!   `key` (its own key tag / key id) and `context` (NAVER, base64); every
//!   other field is kept.
//!
//! The output has the same lines in the same order with the new
//! ciphertexts. A line that fails stays blank (`lines`) or keeps its old
//! ciphertext with an `error` field (`jsonl`), and is reported on stderr.
//! The plaintexts exist only in memory, one at a time.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::http::Endpoint;
use super::naver::{self, read_input, Auth};
use super::nhn::Nhn;
use super::profile::{self, Selection, SOURCE_PREFIX, TARGET_PREFIX};
use super::{print_json, ClientArgs, ClientError, Outcome};

/// The API both ends speak.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dialect {
    /// NAVER Cloud KMS API 2.0 (key tags, `ncpkms:v{n}:` ciphertexts).
    Naver,
    /// NHN Secure Key Manager v1.2 (appkey, key ids).
    Nhn,
}

/// Input and output line format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One ciphertext per line.
    Lines,
    /// One JSON object per line (`ciphertext`, optional `key`, `context`).
    Jsonl,
}

/// `hsm-kms client migrate naver|nhn ...`
#[derive(Args)]
pub struct MigrateArgs {
    /// naver or nhn.
    #[arg(value_enum)]
    dialect: Dialect,
    /// The key: a NAVER key tag or an NHN key id, the same at both ends.
    /// Required for `lines`; `jsonl` records may name their own (`key`).
    #[arg(long)]
    key: Option<String>,
    /// NAVER: the context of every ciphertext (convergent keys), as text.
    /// `jsonl` records may carry their own (`context`, base64).
    #[arg(long)]
    context: Option<String>,
    /// File of ciphertexts (`-`: standard input).
    #[arg(long)]
    input: PathBuf,
    /// File to write the new ciphertexts to (replaced once all lines are
    /// done).
    #[arg(long)]
    output: PathBuf,
    /// Line format of input and output.
    #[arg(long, value_enum, default_value = "lines")]
    format: Format,
    /// Profile of the old service (default `source`, when the profile file has it).
    #[arg(long, env = "HSM_KMS_SOURCE_PROFILE")]
    source_profile: Option<String>,
    /// Profile of hsm-kms (default `target`, when the profile file has it).
    #[arg(long, env = "HSM_KMS_TARGET_PROFILE")]
    target_profile: Option<String>,
    /// NAVER: authentication at the source (default as for `client naver`).
    #[arg(long, value_enum)]
    source_auth: Option<Auth>,
    /// NAVER: authentication at the target.
    #[arg(long, value_enum)]
    target_auth: Option<Auth>,
    /// Stop at the first line that fails (nothing is written then).
    #[arg(long)]
    fail_fast: bool,
}

/// Both ends of a migration.
struct Ends {
    dialect: Dialect,
    source: Endpoint,
    target: Endpoint,
    source_auth: Auth,
    target_auth: Auth,
}

impl Ends {
    /// Decrypts at the source and encrypts at the target: the new
    /// ciphertext.
    async fn migrate(
        &self,
        key: &str,
        ciphertext: &str,
        context_b64: Option<&str>,
    ) -> Result<String, ClientError> {
        match self.dialect {
            Dialect::Naver => {
                let pt =
                    naver::decrypt(&self.source, self.source_auth, key, ciphertext, context_b64)
                        .await?;
                naver::encrypt(&self.target, self.target_auth, key, &pt, context_b64).await
            }
            Dialect::Nhn => {
                if context_b64.is_some() {
                    return Err(ClientError::Local("NHN ciphertexts have no context".into()));
                }
                let pt = Nhn::new(&self.source, None, true)
                    .decrypt(key, ciphertext)
                    .await?;
                Nhn::new(&self.target, None, true).encrypt(key, &pt).await
            }
        }
    }
}

/// The profile of one end: the one asked for, else `fallback` when the
/// profile file has it, else none (variables only).
fn selection<'a>(
    args: &'a ClientArgs,
    asked: Option<&'a str>,
    fallback: &'a str,
    prefix: &'a str,
) -> Selection<'a> {
    let has_fallback = asked.is_none()
        && profile::credentials(&Selection {
            file: args.profile_file.as_deref(),
            profile: Some(fallback),
            prefix: "HSM_KMS_UNUSED_",
            url: None,
        })
        .is_ok();
    Selection {
        file: args.profile_file.as_deref(),
        profile: asked.or(has_fallback.then_some(fallback)),
        prefix,
        url: None,
    }
}

/// One input line, read.
struct Item {
    /// The JSON record (`jsonl`).
    record: Option<serde_json::Map<String, Value>>,
    ciphertext: String,
    key: String,
    context_b64: Option<String>,
}

fn parse_line(m: &MigrateArgs, line: &str) -> Result<Option<Item>, String> {
    let default_context = m
        .context
        .as_ref()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_bytes()));
    let key = |k: Option<&str>| -> Result<String, String> {
        k.or(m.key.as_deref())
            .map(str::to_string)
            .ok_or_else(|| "no key: give --key or a `key` field".to_string())
    };
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    match m.format {
        Format::Lines => Ok(Some(Item {
            record: None,
            ciphertext: line.to_string(),
            key: key(None)?,
            context_b64: default_context,
        })),
        Format::Jsonl => {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
            let Value::Object(record) = v else {
                return Err("not a JSON object".into());
            };
            let ciphertext = record
                .get("ciphertext")
                .and_then(Value::as_str)
                .ok_or("no `ciphertext` string")?
                .to_string();
            let key = key(record.get("key").and_then(Value::as_str))?;
            let context_b64 = match record.get("context") {
                None | Some(Value::Null) => default_context,
                Some(Value::String(c)) => Some(c.clone()),
                Some(_) => return Err("`context` must be a base64 string".into()),
            };
            Ok(Some(Item {
                record: Some(record),
                ciphertext,
                key,
                context_b64,
            }))
        }
    }
}

/// Runs `hsm-kms client migrate ...`.
pub async fn run(
    args: &ClientArgs,
    m: &MigrateArgs,
    timeout: Duration,
) -> Result<Outcome, ClientError> {
    let source = profile::endpoint(
        &selection(args, m.source_profile.as_deref(), "source", SOURCE_PREFIX),
        timeout,
    )?;
    let target = profile::endpoint(
        &selection(args, m.target_profile.as_deref(), "target", TARGET_PREFIX),
        timeout,
    )?;
    if m.format == Format::Lines && m.key.is_none() {
        return Err(ClientError::Local(
            "--key is required with --format lines".into(),
        ));
    }
    if m.dialect == Dialect::Nhn && m.context.is_some() {
        return Err(ClientError::Local("NHN ciphertexts have no context".into()));
    }
    let ends = Ends {
        dialect: m.dialect,
        source_auth: Auth::resolve(m.source_auth, &source),
        target_auth: Auth::resolve(m.target_auth, &target),
        source,
        target,
    };
    let input = read_input(Some(&m.input))?;
    let input = String::from_utf8(input)
        .map_err(|_| ClientError::Local(format!("{}: not UTF-8 text", m.input.display())))?;

    let (mut migrated, mut failed, mut blank) = (0usize, 0usize, 0usize);
    let mut first_error: Option<ClientError> = None;
    let mut out = String::with_capacity(input.len() + input.len() / 4);
    for (n, line) in input.lines().enumerate() {
        let n = n + 1;
        let item = match parse_line(m, line) {
            Ok(Some(item)) => item,
            Ok(None) => {
                blank += 1;
                out.push('\n');
                continue;
            }
            Err(why) => {
                failed += 1;
                eprintln!("line {n}: {why}");
                if m.fail_fast {
                    return Err(ClientError::Local(format!("line {n}: {why}")));
                }
                // An unreadable line is copied as it was (jsonl) or left blank.
                if m.format == Format::Jsonl {
                    out.push_str(line);
                }
                out.push('\n');
                continue;
            }
        };
        let result = ends
            .migrate(&item.key, &item.ciphertext, item.context_b64.as_deref())
            .await;
        match (result, item.record) {
            (Ok(ct), None) => {
                migrated += 1;
                out.push_str(&ct);
            }
            (Ok(ct), Some(mut record)) => {
                migrated += 1;
                record.insert("ciphertext".into(), json!(ct));
                out.push_str(&Value::Object(record).to_string());
            }
            (Err(e), record) => {
                failed += 1;
                eprintln!("line {n}: {e}");
                if m.fail_fast {
                    return Err(e);
                }
                if let Some(mut record) = record {
                    record.insert("error".into(), json!(e.to_string()));
                    out.push_str(&Value::Object(record).to_string());
                }
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        out.push('\n');
    }
    write_output(&m.output, out.as_bytes())?;
    print_json(&json!({
        "migrated": migrated,
        "failed": failed,
        "blank": blank,
        "output": m.output.display().to_string(),
    }));
    Ok(match (failed, migrated, first_error) {
        (0, _, _) => Outcome::Success,
        // Nothing went through: the cause of the first failure says why
        // (credentials, an unknown key, the server down).
        (_, 0, Some(e)) => e.outcome(),
        _ => Outcome::Partial,
    })
}

/// Writes the output through a temporary file beside it, then renames it
/// into place: a reader never sees half a file.
fn write_output(path: &Path, data: &[u8]) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}
