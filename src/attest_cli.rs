//! `hsm-kms attest`: the signed attestation report (JSON or HTML), the
//! attestation public key, and the offline check of a report.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use hsm_kms::config::Config;
use hsm_kms::core::attest::{self, Scope};
use hsm_kms::server;

/// `hsm-kms attest [--key TAG | --nhn-key ID | --all] [--format json|html]
/// [--out FILE]`, or one of its subcommands.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AttestArgs {
    #[command(subcommand)]
    cmd: Option<AttestCmd>,
    /// One NAVER key, by keyTag.
    #[arg(long, value_name = "TAG", conflicts_with_all = ["nhn_key", "all"])]
    key: Option<String>,
    /// One NHN key, by keyId.
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    nhn_key: Option<String>,
    /// Every key version, service key, NHN project CA key and unknown
    /// object (the default).
    #[arg(long)]
    all: bool,
    /// `json` (signed; for `attest verify`) or `html` (one self-contained
    /// page for people, with the signed JSON inside).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Html,
}

#[derive(Subcommand)]
enum AttestCmd {
    /// Print the attestation public key (PEM SubjectPublicKeyInfo), read
    /// from the token.
    PublicKey {
        /// Write it here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a JSON report offline (no token, no store): its signature
    /// with the given public key, and its own consistency. Exit 0 and one
    /// `OK` line, or exit 1 and one `REFUSED` line.
    Verify {
        /// The report (JSON, as `hsm-kms attest` writes it).
        report: PathBuf,
        /// The attestation public key (PEM file, as `attest public-key` prints it).
        #[arg(long, value_name = "PEM")]
        public_key: PathBuf,
    },
}

/// Runs `hsm-kms attest ...`.
pub async fn run(cfg: &Config, args: AttestArgs) -> anyhow::Result<()> {
    match args.cmd {
        Some(AttestCmd::Verify { report, public_key }) => verify(&report, &public_key),
        Some(AttestCmd::PublicKey { out }) => {
            let (hsm, store) = server::open(cfg).await?;
            let pem = attest::public_key_pem(&hsm, &store).await?;
            write_out(out.as_deref(), pem.as_bytes())
        }
        None => {
            let scope = match (args.key, args.nhn_key) {
                (Some(t), _) => Scope::NaverKey(t),
                (None, Some(id)) => Scope::NhnKey(id),
                (None, None) => Scope::All,
            };
            let (hsm, store) = server::open(cfg).await?;
            let signed = attest::attest(&hsm, &store, &scope).await?;
            let json = attest::to_file_bytes(&signed)?;
            let bytes = match args.format {
                Format::Json => json,
                Format::Html => {
                    crate::attest_html::render(&signed, &String::from_utf8_lossy(&json))
                        .into_bytes()
                }
            };
            write_out(args.out.as_deref(), &bytes)?;
            let s = &signed.report.summary;
            eprintln!(
                "attestation report: {} key versions, {} objects, {} flags{}",
                s.versions,
                s.objects,
                s.flags,
                args.out
                    .as_ref()
                    .map(|p| format!(" -> {}", p.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// `attest verify`: one line, exit 0 or 1.
fn verify(report: &Path, public_key: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(report).with_context(|| format!("reading {}", report.display()))?;
    let pem = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    match attest::verify(&bytes, &pem) {
        Ok(v) => {
            let s = &v.report.summary;
            println!(
                "OK {}: signature valid (key sha256 {}), consistent; generated {}, scope {}, {} key versions, {} objects, {} flags",
                report.display(),
                v.key_sha256,
                v.report.generated_at,
                v.report.scope,
                s.versions,
                s.objects,
                s.flags
            );
            Ok(())
        }
        Err(e) => {
            println!("REFUSED {}: {e}", report.display());
            std::process::exit(1);
        }
    }
}

fn write_out(out: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match out {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(bytes)?;
            o.flush()?;
            Ok(())
        }
    }
}
