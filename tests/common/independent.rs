//! Signature checks by a library nobody here wrote: python3's `cryptography`
//! where it is installed, else the `openssl` command. Both read the public
//! key as the PEM the service hands out.

use std::process::Command;

/// How an RSA2048 signature is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaPadding {
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, a salt of exactly 222 bytes.
    Pss222,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Pkcs1,
}

const PY: &str = r#"
import sys
try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
except ImportError:
    sys.exit(3)
key = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
data = open(sys.argv[2], "rb").read()
sig = open(sys.argv[3], "rb").read()
pad = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=222)
       if sys.argv[4] == "pss" else padding.PKCS1v15())
try:
    key.verify(sig, data, pad, hashes.SHA256())
except Exception:
    sys.exit(1)
"#;

/// Whether `sig` is a valid RSA2048 signature of `data` (SHA-256, `pad`)
/// under the PEM public key `pem`.
pub fn rsa_verify(pem: &str, data: &[u8], sig: &[u8], pad: RsaPadding) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (k, d, s) = (
        dir.path().join("pub.pem"),
        dir.path().join("data"),
        dir.path().join("sig"),
    );
    std::fs::write(&k, pem).unwrap();
    std::fs::write(&d, data).unwrap();
    std::fs::write(&s, sig).unwrap();
    let mode = match pad {
        RsaPadding::Pss222 => "pss",
        RsaPadding::Pkcs1 => "pkcs1",
    };
    if let Ok(out) = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args([&k, &d, &s])
        .arg(mode)
        .output()
    {
        match out.status.code() {
            Some(0) => return true,
            Some(1) => return false,
            _ => {} // no python3 `cryptography`: openssl below
        }
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", "-sha256", "-verify"])
        .arg(&k)
        .args(["-signature"])
        .arg(&s);
    match pad {
        RsaPadding::Pss222 => cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:222",
            "-sigopt",
            "rsa_mgf1_md:sha256",
        ]),
        RsaPadding::Pkcs1 => cmd.args(["-sigopt", "rsa_padding_mode:pkcs1"]),
    };
    let out = cmd
        .arg(&d)
        .output()
        .expect("neither python3 cryptography nor openssl");
    out.status.success()
}

/// Whether `sig` (DER) is a valid ECDSA P-256 / SHA-256 signature of `data`
/// under the PEM public key `pem` (`openssl dgst`).
pub fn ecdsa_verify(pem: &str, data: &[u8], sig: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (k, d, s) = (
        dir.path().join("pub.pem"),
        dir.path().join("data"),
        dir.path().join("sig"),
    );
    std::fs::write(&k, pem).unwrap();
    std::fs::write(&d, data).unwrap();
    std::fs::write(&s, sig).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&k)
        .arg("-signature")
        .arg(&s)
        .arg(&d)
        .output()
        .expect("openssl")
        .status
        .success()
}
