//! `hsm-kms audit`: walk the audit chain with the token (`verify`), write
//! it for an auditor (`export`), check an export offline (`verify-export`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use hsm_kms::config::Config;
use hsm_kms::core::audit::{self, export, Break, ChainReport};
use hsm_kms::server;

/// `hsm-kms audit ...`
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Walk the chain with the token: every record's chain value (link,
    /// seal or per-record HMAC), sequence continuity, checkpoint
    /// signatures, and that the log reaches the newest checkpoint. Prints `OK` and exits 0, or prints the first
    /// break (`BREAK seq=N kind=K ...`) and exits 1.
    Verify {
        /// Start at this sequence number, trusting the stored chain value
        /// of the record before it (default: the chain's start).
        #[arg(long, value_name = "SEQ")]
        from: Option<i64>,
    },
    /// Write every record with its chain value and seal, and every signed
    /// checkpoint, as JSON lines (format `hsm-kms-audit-export/2`).
    Export {
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check an export offline (no token, no store) with the attestation
    /// public key (`hsm-kms attest public-key`): checkpoint signatures,
    /// sequence continuity, the links of records sealed per batch, a log
    /// that ends on a seal, checkpoints against the records' chain values,
    /// records reaching the newest checkpoint. Seals and per-record HMACs
    /// need the token: `--seals` checks them too (on the service, with its
    /// config), as `audit verify` does for the store. Exit 0 and `OK`, or exit 1
    /// and `BREAK ...` / `REFUSED ...`.
    VerifyExport {
        /// The export file.
        file: PathBuf,
        /// The attestation public key (PEM).
        #[arg(long, value_name = "PEM")]
        public_key: PathBuf,
        /// Also check the export's seals and per-record HMACs in the token
        /// (the service's config, token and PIN: for the operator, on an
        /// auditor's file).
        #[arg(long)]
        seals: bool,
    },
}

fn print_break(b: &Break) {
    println!("BREAK seq={} kind={} {}", b.seq, b.kind.as_str(), b.detail);
}

fn print_report(r: &ChainReport) {
    if r.unchained > 0 {
        println!(
            "unchained before seq {}: {} records written before the audit chain existed (not covered)",
            r.start_seq, r.unchained
        );
    }
    println!(
        "checked {} records from seq {}{}; {} checkpoints{}",
        r.checked,
        r.from,
        r.last_seq
            .map(|s| format!(" to seq {s}"))
            .unwrap_or_default(),
        r.checkpoints,
        r.last_checkpoint
            .map(|s| format!(" (newest at seq {s})"))
            .unwrap_or_default()
    );
    println!(
        "formats: {} records with an in-token HMAC each (per record), {} records linked under {} in-token seals (per batch)",
        r.hmac_records, r.linked_records, r.seals
    );
}

/// Runs `hsm-kms audit ...`.
pub async fn run(cfg: &Config, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { from } => {
            let (hsm, store) = server::open(cfg).await?;
            let t = std::time::Instant::now();
            let report = audit::verify_chain(&hsm, &store, from).await?;
            print_report(&report);
            eprintln!("walked in {:.3} s", t.elapsed().as_secs_f64());
            match &report.first_break {
                None => println!("OK"),
                Some(b) => {
                    print_break(b);
                    std::process::exit(1);
                }
            }
        }
        AuditCmd::Export { out } => {
            let (hsm, store) = server::open(cfg).await?;
            let (records, checkpoints) = match &out {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = export::export(&hsm, &store, &mut w).await?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    let n = export::export(&hsm, &store, &mut w).await?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
            };
            eprintln!(
                "exported {records} records and {checkpoints} checkpoints{}",
                out.as_ref()
                    .map(|p| format!(" -> {}", p.display()))
                    .unwrap_or_default()
            );
        }
        AuditCmd::VerifyExport {
            file,
            public_key,
            seals,
        } => verify_export(cfg, &file, &public_key, seals).await?,
    }
    Ok(())
}

async fn verify_export(
    cfg: &Config,
    file: &Path,
    public_key: &Path,
    seals: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let pem = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    match export::verify_export(&bytes, &pem) {
        Ok(mut r) => {
            println!(
                "{} records ({} chained), {} checkpoints with a valid signature",
                r.records, r.chained, r.checkpoints_ok
            );
            if seals {
                let (hsm, store) = server::open(cfg).await?;
                let k = export::verify_export_keyed(&hsm, &store, &bytes).await?;
                println!(
                    "in the token: {} seals and {} per-record HMACs checked",
                    k.seals, k.hmacs
                );
                r.first_break = [r.first_break.take(), k.first_break]
                    .into_iter()
                    .flatten()
                    .min_by_key(|b| b.seq);
            }
            match &r.first_break {
                None => {
                    println!("OK {}", file.display());
                    Ok(())
                }
                Some(b) => {
                    print_break(b);
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            println!("REFUSED {}: {e}", file.display());
            std::process::exit(1);
        }
    }
}
