//! `hsm-kms admin naver ...`: what the NAVER console does that its API
//! cannot, for operators moving from NAVER Cloud KMS: a key created under
//! the key tag it had there, so that applications keep their configuration.

use clap::Subcommand;
use hsm_kms::core::{CreateKeyRequest, Engine, KeyType};

#[derive(Subcommand)]
pub enum NaverCmd {
    /// Create a key, as Create Key does. With --key-tag, under the key tag
    /// the key had at NAVER (64 hexadecimal digits, optionally after a
    /// region prefix kr- or jpn-, either case, kept in lower case); refused
    /// if any key has or had that tag.
    CreateKey {
        /// Account name.
        #[arg(long, default_value = "default")]
        account: String,
        /// Key name (3 to 15 letters, digits, '-' or '_', starting with a letter).
        #[arg(long)]
        key_name: String,
        /// AES256, RSA2048 or ECDSA.
        #[arg(long, default_value = "AES256")]
        key_type: String,
        /// The key tag to give it (bring your own); random when absent.
        #[arg(long)]
        key_tag: Option<String>,
        /// Memo.
        #[arg(long, default_value = "")]
        memo: String,
        /// Convergent encryption (AES256 only).
        #[arg(long)]
        convergent: bool,
        /// Automatic rotation every this many days (1 to 730).
        #[arg(long)]
        rotation_period: Option<i64>,
    },
}

impl NaverCmd {
    /// The audit-trail action name and target of this command.
    pub fn audit(&self) -> (&'static str, String) {
        match self {
            NaverCmd::CreateKey {
                account,
                key_name,
                key_tag,
                ..
            } => (
                if key_tag.is_some() {
                    "AdminImportKeyTag"
                } else {
                    "AdminCreateKey"
                },
                format!("account={account} keyName={key_name}"),
            ),
        }
    }
}

/// Runs `hsm-kms admin naver ...`.
pub async fn run(engine: &Engine, cmd: NaverCmd) -> anyhow::Result<()> {
    match cmd {
        NaverCmd::CreateKey {
            account,
            key_name,
            key_type,
            key_tag,
            memo,
            convergent,
            rotation_period,
        } => {
            let account_id = engine
                .account_id(&account)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account named {account}"))?;
            let key_type = KeyType::parse(&key_type)
                .ok_or_else(|| anyhow::anyhow!("--key-type must be AES256, RSA2048 or ECDSA"))?;
            let e = engine
                .create_key_tagged(
                    account_id,
                    CreateKeyRequest {
                        name: key_name,
                        key_type,
                        memo,
                        is_convergent: convergent,
                        is_auto_rotation: rotation_period.is_some(),
                        rotation_period,
                        protection_type: "COMMON_HSM".into(),
                    },
                    key_tag.as_deref(),
                )
                .await?;
            println!(
                "keyTag={} keyName={} keyType={}",
                e.key.uid, e.key.name, e.key.key_type
            );
        }
    }
    Ok(())
}
