//! `hsm-kms-bench` (built with `--features bench`, from the runtime
//! dependencies alone): raw PKCS#11 throughput through the crate's `hsm`
//! layer, the baseline of `scripts/bench.sh`: AES-256-GCM encryption of 256 bytes, RSA-2048
//! PKCS#1 v1.5 SHA-256 signing and ECDSA P-256 signing of 256 bytes, on one
//! thread and on two threads, each thread looping on one logged-in session.
//!
//! The AES figure includes the `C_GenerateRandom` call for the 96-bit IV,
//! exactly as the service's Encrypt does; the ECDSA figure includes the
//! SHA-256 taken outside the token and the DER encoding.
//!
//! Usage: `hsm-kms-bench [--config FILE] [--secs N]` (the PIN as for the
//! server: `HSM_KMS_PIN` or `hsm.pin_file`). The keys it makes carry the
//! label prefix `hsm-kms-bench/` (not the service's `hsm-kms/`) and are
//! destroyed at the end. Prints one line per measurement:
//! `raw <op> threads=<n> ops_per_sec=<x>`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hsm_kms::config::Config;
use hsm_kms::hsm::{Hsm, KeySpec, KeyUsage, SignAlg};

const PAYLOAD: usize = 256;

#[derive(Clone, Copy)]
enum Op {
    AesGcm,
    RsaSign,
    EcdsaSign,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AesGcm => "aes-gcm-encrypt-256B",
            Op::RsaSign => "rsa2048-sign",
            Op::EcdsaSign => "ecdsa-p256-sign",
        }
    }
}

/// Runs `op` on `threads` threads for `secs`; returns operations per second.
fn measure(hsm: &Hsm, op: Op, id: &[u8], threads: usize, secs: f64) -> anyhow::Result<f64> {
    let data = vec![0x5au8; PAYLOAD];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let hsm = hsm.clone();
                let data = data.clone();
                scope.spawn(move || {
                    hsm.run_blocking(|s| {
                        let mut n: u64 = 0;
                        while Instant::now() < deadline {
                            match op {
                                Op::AesGcm => {
                                    s.aes_gcm_encrypt(id, &data, &[], None)?;
                                }
                                Op::RsaSign => {
                                    s.sign(id, SignAlg::RsaPkcs1Sha256, &data)?;
                                }
                                Op::EcdsaSign => {
                                    s.sign(id, SignAlg::EcdsaP256Sha256, &data)?;
                                }
                            }
                            n += 1;
                        }
                        Ok(n)
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| match w.join() {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => Err(anyhow::anyhow!("benchmark thread panicked")),
            })
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(counts.iter().sum::<u64>() as f64 / elapsed)
}

fn main() -> anyhow::Result<()> {
    let mut config: Option<PathBuf> = std::env::var_os("HSM_KMS_CONFIG").map(PathBuf::from);
    let mut secs = 3.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--secs" => {
                secs = args
                    .next()
                    .context("--secs needs a value")?
                    .parse()
                    .context("--secs must be a number")?
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: hsm-kms-bench [--config FILE] [--secs N]"
            ),
        }
    }
    let cfg = Config::load(config.as_deref())?;
    // Two threads at most on this benchmark; the pool needs two sessions.
    let mut hcfg = cfg.hsm_config()?;
    hcfg.max_sessions = hcfg.max_sessions.max(2);
    let hsm = Hsm::open(&hcfg).context("cannot open the token")?;

    let keys = [
        (Op::AesGcm, KeySpec::Aes256 { extractable: false }),
        (
            Op::RsaSign,
            KeySpec::Rsa2048 {
                usage: KeyUsage::Sign,
                extractable: false,
            },
        ),
        (Op::EcdsaSign, KeySpec::EcP256),
    ];
    let mut made = Vec::new();
    for (op, spec) in keys {
        let id = hsm.run_blocking(|s| {
            let id = s.random(16)?;
            s.generate(spec, &format!("hsm-kms-bench/{}", op.name()), &id)?;
            Ok(id)
        })?;
        made.push((op, id));
    }

    let mut result = Ok(());
    'ops: for (op, id) in &made {
        // Warm the handle cache and the token's code paths.
        if let Err(e) = measure(&hsm, *op, id, 1, 0.2) {
            result = Err(e);
            break;
        }
        for threads in [1usize, 2] {
            match measure(&hsm, *op, id, threads, secs) {
                Ok(rate) => println!("raw {} threads={threads} ops_per_sec={rate:.0}", op.name()),
                Err(e) => {
                    result = Err(e);
                    break 'ops;
                }
            }
        }
    }
    for (_, id) in &made {
        hsm.run_blocking(|s| s.destroy_id(id))?;
    }
    result
}
