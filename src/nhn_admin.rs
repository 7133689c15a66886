//! `hsm-kms admin nhn ...`: what the NHN console does for Secure Key
//! Manager: projects, appkeys, User Access Keys, key stores with their
//! authentication switches and export policy, and client certificates
//! (issued by the project CA in the token, delivered as PKCS#12 files).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use hsm_kms::core::nhn::UserAccessKeyRequirement;
use hsm_kms::core::nhn::{appkey_fingerprint, KeyStoreSettings, NhnKeyType};
use hsm_kms::core::Engine;
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum NhnCmd {
    /// Create a project. Its management calls need a User Access Key unless
    /// --require-user-access-key false.
    CreateProject {
        /// Project name.
        name: String,
        /// Management calls (credentials, key creation and deletion, secret
        /// updates, key-store queries) need a valid User Access Key.
        #[arg(long, value_name = "true|false", default_value_t = true, num_args = 0..=1,
              default_missing_value = "true", action = clap::ArgAction::Set)]
        require_user_access_key: bool,
        /// Data calls (encrypt, decrypt, sign, verify, reads) need one too.
        #[arg(long, value_name = "true|false", default_value_t = false, num_args = 0..=1,
              default_missing_value = "true", action = clap::ArgAction::Set)]
        require_user_access_key_on_data: bool,
    },
    /// Change which calls of a project need a User Access Key; a running
    /// server applies it within a second.
    UpdateProject {
        /// Project name.
        name: String,
        /// Management calls need a User Access Key.
        #[arg(long, value_name = "true|false")]
        require_user_access_key: Option<bool>,
        /// Data calls need one too.
        #[arg(long, value_name = "true|false")]
        require_user_access_key_on_data: Option<bool>,
    },
    /// Create an appkey for a project; prints it. With --appkey, register
    /// the appkey the project had at NHN instead (8 to 64 letters and
    /// digits; refused if any project has or had it).
    CreateAppkey {
        /// Project name.
        #[arg(long)]
        project: String,
        /// The appkey to register (bring your own); random when absent.
        #[arg(long)]
        appkey: Option<String>,
    },
    /// Revoke an appkey; a running server refuses it within a second.
    RevokeAppkey {
        /// The appkey.
        appkey: String,
    },
    /// Replace an appkey by a new one of the same project (printed) and
    /// revoke the old one. For a switch without downtime: create-appkey,
    /// move the clients, then revoke-appkey.
    RotateAppkey {
        /// The appkey to replace.
        appkey: String,
    },
    /// Create a User Access Key; prints the Secret Access Key once.
    CreateUserAccessKey {
        /// Project name.
        #[arg(long)]
        project: String,
    },
    /// Register a User Access Key issued by NHN (bring your own): the id
    /// from --id, the Secret Access Key from the environment variable named
    /// by --secret-env or from --secret-file (its first line), never from
    /// the command line. Refused if the id is registered (active or revoked).
    ImportUserAccessKey {
        /// Project name.
        #[arg(long)]
        project: String,
        /// The User Access Key id.
        #[arg(long)]
        id: String,
        /// Environment variable holding the Secret Access Key.
        #[arg(long, default_value = "HSM_KMS_NHN_SECRET_ACCESS_KEY")]
        secret_env: String,
        /// File holding the Secret Access Key (first line); instead of --secret-env.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Revoke a User Access Key.
    RevokeUserAccessKey {
        /// The User Access Key id.
        access_key: String,
    },
    /// Create a key store.
    CreateKeyStore {
        /// Project name.
        #[arg(long)]
        project: String,
        /// Key store name.
        #[arg(long)]
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Turn on IPv4 authentication (ip4AuthUse).
        #[arg(long)]
        ip4_auth: bool,
        /// Turn on MAC authentication (macAuthUse).
        #[arg(long)]
        mac_auth: bool,
        /// Turn on client-certificate authentication (certificateAuthUse).
        #[arg(long)]
        certificate_auth: bool,
        /// Export policy: keys created in this store can be read back
        /// (symmetric-key and privateKey queries). Off by default.
        #[arg(long)]
        allow_export: bool,
        /// The keyStoreId to give it (bring your own: the id the key store
        /// had at NHN); the next free id when absent. Refused if taken.
        #[arg(long)]
        id: Option<i64>,
    },
    /// Create a key in a key store, as the API's key creation does. With
    /// --key-id, under the key id the key had at NHN (32 hexadecimal
    /// digits; refused if any key has or had it). A secret's value comes
    /// from the environment variable named by --secret-env or from
    /// --secret-file, never from the command line.
    CreateKey {
        /// Project name.
        #[arg(long)]
        project: String,
        /// Key store name.
        #[arg(long)]
        key_store: String,
        /// Key type.
        #[arg(long = "type", value_enum)]
        key_type: KeyKind,
        /// Key name.
        #[arg(long)]
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// The key id to give it (bring your own); random when absent.
        #[arg(long)]
        key_id: Option<String>,
        /// Automatic rotation period in days (symmetric and asymmetric keys; 0 = off).
        #[arg(long, default_value_t = 0)]
        auto_rotation_period: i64,
        /// Environment variable holding a secret's value.
        #[arg(long)]
        secret_env: Option<String>,
        /// File holding a secret's value (its whole content, less one final newline).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Change the switches of a key store (keys keep the export setting they
    /// were created with).
    UpdateKeyStore {
        /// Project name.
        #[arg(long)]
        project: String,
        /// Key store name.
        #[arg(long)]
        name: String,
        /// ip4AuthUse.
        #[arg(long)]
        ip4_auth: Option<bool>,
        /// macAuthUse.
        #[arg(long)]
        mac_auth: Option<bool>,
        /// certificateAuthUse.
        #[arg(long)]
        certificate_auth: Option<bool>,
        /// Export policy for keys created from now on.
        #[arg(long)]
        allow_export: Option<bool>,
    },
    /// Issue a client certificate for a key store and write its PKCS#12 file.
    /// The password is read from the environment variable named by
    /// --password-env (never from the command line).
    IssueCertificate {
        /// Project name.
        #[arg(long)]
        project: String,
        /// Key store name.
        #[arg(long)]
        key_store: String,
        /// Certificate name.
        #[arg(long)]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 365)]
        lifetime_days: i64,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Environment variable holding the PKCS#12 password.
        #[arg(long, default_value = "HSM_KMS_CERT_PASSWORD")]
        password_env: String,
        /// Where to write the PKCS#12 file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the PKCS#12 file of a certificate issued through the API.
    ExportCertificate {
        /// Project name.
        #[arg(long)]
        project: String,
        /// Key store name.
        #[arg(long)]
        key_store: String,
        /// Certificate name.
        #[arg(long)]
        name: String,
        /// Where to write the PKCS#12 file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// NHN key types, as `admin nhn create-key --type` names them.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KeyKind {
    /// Confidential data.
    Secret,
    /// AES-256.
    Symmetric,
    /// RSA-2048.
    Asymmetric,
}

impl KeyKind {
    fn nhn(self) -> NhnKeyType {
        match self {
            KeyKind::Secret => NhnKeyType::Secret,
            KeyKind::Symmetric => NhnKeyType::Symmetric,
            KeyKind::Asymmetric => NhnKeyType::Asymmetric,
        }
    }
}

/// A secret from an environment variable or a file, never from argv.
/// `first_line`: only the file's first line (credentials); otherwise the
/// whole file less one final newline (a secret's value).
fn read_secret(
    env: Option<&str>,
    file: Option<&PathBuf>,
    first_line: bool,
    what: &str,
) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        );
        let value = if first_line {
            text.lines().next().unwrap_or_default()
        } else {
            text.strip_suffix('\n').unwrap_or(&text)
        };
        return Ok(Zeroizing::new(value.to_string()));
    }
    let Some(var) = env else {
        anyhow::bail!("give {what} with --secret-env VAR or --secret-file PATH");
    };
    std::env::var(var)
        .map(Zeroizing::new)
        .with_context(|| format!("set {var} to {what} (or use --secret-file)"))
}

fn write_private(path: &PathBuf, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

impl NhnCmd {
    /// The audit-trail action name and target (names only: never an
    /// appkey, access key or password) of this command.
    pub fn audit(&self) -> (&'static str, String) {
        match self {
            NhnCmd::CreateProject { name, .. } => ("NhnCreateProject", format!("project={name}")),
            NhnCmd::UpdateProject { name, .. } => ("NhnUpdateProject", format!("project={name}")),
            NhnCmd::CreateAppkey { project, appkey } => (
                if appkey.is_some() {
                    "NhnImportAppkey"
                } else {
                    "NhnCreateAppkey"
                },
                format!("project={project}"),
            ),
            NhnCmd::ImportUserAccessKey { project, id, .. } => (
                "NhnImportUserAccessKey",
                format!("project={project} userAccessKey={id}"),
            ),
            NhnCmd::CreateKey {
                project,
                key_store,
                name,
                ..
            } => (
                "NhnCreateKey",
                format!("project={project} keyStore={key_store} name={name}"),
            ),
            // Appkeys are bearer credentials: named by their fingerprint.
            NhnCmd::RevokeAppkey { appkey } => (
                "NhnRevokeAppkey",
                format!("appkey={}", appkey_fingerprint(appkey)),
            ),
            NhnCmd::RotateAppkey { appkey } => (
                "NhnRotateAppkey",
                format!("appkey={}", appkey_fingerprint(appkey)),
            ),
            NhnCmd::CreateUserAccessKey { project } => {
                ("NhnCreateUserAccessKey", format!("project={project}"))
            }
            // The id is not secret (the Secret Access Key is).
            NhnCmd::RevokeUserAccessKey { access_key } => (
                "NhnRevokeUserAccessKey",
                format!("userAccessKey={access_key}"),
            ),
            NhnCmd::CreateKeyStore { project, name, .. } => (
                "NhnCreateKeyStore",
                format!("project={project} keyStore={name}"),
            ),
            NhnCmd::UpdateKeyStore { project, name, .. } => (
                "NhnUpdateKeyStore",
                format!("project={project} keyStore={name}"),
            ),
            NhnCmd::IssueCertificate {
                project,
                key_store,
                name,
                ..
            } => (
                "NhnIssueCertificate",
                format!("project={project} keyStore={key_store} certificate={name}"),
            ),
            NhnCmd::ExportCertificate {
                project,
                key_store,
                name,
                ..
            } => (
                "NhnExportCertificate",
                format!("project={project} keyStore={key_store} certificate={name}"),
            ),
        }
    }
}

/// Runs `hsm-kms admin nhn ...`.
pub async fn run(engine: &Engine, cmd: NhnCmd) -> anyhow::Result<()> {
    match cmd {
        NhnCmd::CreateProject {
            name,
            require_user_access_key,
            require_user_access_key_on_data,
        } => {
            let id = engine
                .nhn_create_project_with(
                    &name,
                    UserAccessKeyRequirement {
                        management: require_user_access_key,
                        data: require_user_access_key_on_data,
                    },
                )
                .await?;
            println!("project={name} id={id}");
            if !require_user_access_key {
                eprintln!(
                    "warning: project {name} takes management calls with the appkey alone; \
                     anyone holding an appkey can change its key stores and destroy its keys"
                );
            }
        }
        NhnCmd::UpdateProject {
            name,
            require_user_access_key,
            require_user_access_key_on_data,
        } => {
            let p = engine
                .nhn_update_project(
                    &name,
                    require_user_access_key,
                    require_user_access_key_on_data,
                )
                .await?;
            println!(
                "project={name} require_user_access_key={} require_user_access_key_on_data={}",
                p.require.management, p.require.data
            );
        }
        NhnCmd::CreateAppkey { project, appkey } => {
            let appkey = match appkey {
                Some(a) => {
                    engine.nhn_import_appkey(&project, &a).await?;
                    a
                }
                None => engine.nhn_create_appkey(&project).await?,
            };
            println!("appkey={appkey}");
            println!("appkey_fingerprint={}", appkey_fingerprint(&appkey));
        }
        NhnCmd::ImportUserAccessKey {
            project,
            id,
            secret_env,
            secret_file,
        } => {
            let secret = read_secret(
                Some(&secret_env),
                secret_file.as_ref(),
                true,
                "the Secret Access Key",
            )?;
            engine
                .nhn_import_user_access_key(&project, &id, &secret)
                .await?;
            println!("user_access_key={id}");
        }
        NhnCmd::CreateKey {
            project,
            key_store,
            key_type,
            name,
            description,
            key_id,
            auto_rotation_period,
            secret_env,
            secret_file,
        } => {
            let kind = key_type.nhn();
            let secret = match kind {
                NhnKeyType::Secret => Some(read_secret(
                    secret_env.as_deref(),
                    secret_file.as_ref(),
                    false,
                    "the secret's value",
                )?),
                _ => {
                    anyhow::ensure!(
                        secret_env.is_none() && secret_file.is_none(),
                        "--secret-env / --secret-file are for --type secret"
                    );
                    None
                }
            };
            let p = engine.nhn_project(&project).await?;
            let v = engine
                .nhn_create_key_with_id(
                    &p,
                    &key_store,
                    kind,
                    &name,
                    &description,
                    secret.as_ref().map(|s| s.as_str()),
                    auto_rotation_period,
                    "ADMIN",
                    key_id.as_deref(),
                )
                .await?;
            println!(
                "keyId={} type={} keyStore={key_store}",
                v.entry.key.uid,
                kind.as_str()
            );
        }
        NhnCmd::RevokeAppkey { appkey } => {
            engine.nhn_revoke_appkey(&appkey).await?;
            println!("revoked appkey_fingerprint={}", appkey_fingerprint(&appkey));
        }
        NhnCmd::RotateAppkey { appkey } => {
            let new = engine.nhn_rotate_appkey(&appkey).await?;
            println!("appkey={new}");
            println!("appkey_fingerprint={}", appkey_fingerprint(&new));
            println!("revoked appkey_fingerprint={}", appkey_fingerprint(&appkey));
        }
        NhnCmd::CreateUserAccessKey { project } => {
            let k = engine.nhn_create_user_access_key(&project).await?;
            println!("user_access_key={}", k.access_key);
            println!("secret_access_key={}", k.secret.as_str());
            eprintln!("The Secret Access Key is shown once; store it now.");
        }
        NhnCmd::RevokeUserAccessKey { access_key } => {
            engine.nhn_revoke_user_access_key(&access_key).await?;
            println!("revoked {access_key}");
        }
        NhnCmd::CreateKeyStore {
            project,
            name,
            description,
            ip4_auth,
            mac_auth,
            certificate_auth,
            allow_export,
            id,
        } => {
            let id = engine
                .nhn_create_key_store_with_id(
                    &project,
                    KeyStoreSettings {
                        name: name.clone(),
                        description,
                        ip4_auth_use: ip4_auth,
                        mac_auth_use: mac_auth,
                        certificate_auth_use: certificate_auth,
                        allow_export,
                    },
                    id,
                )
                .await?;
            println!("key_store={name} keyStoreId={id}");
        }
        NhnCmd::UpdateKeyStore {
            project,
            name,
            ip4_auth,
            mac_auth,
            certificate_auth,
            allow_export,
        } => {
            engine
                .nhn_update_key_store(
                    &project,
                    &name,
                    ip4_auth,
                    mac_auth,
                    certificate_auth,
                    allow_export,
                )
                .await?;
            println!("updated {name}");
        }
        NhnCmd::IssueCertificate {
            project,
            key_store,
            name,
            lifetime_days,
            description,
            password_env,
            out,
        } => {
            let password = Zeroizing::new(
                std::env::var(&password_env)
                    .with_context(|| format!("set {password_env} to the PKCS#12 password"))?,
            );
            let p = engine.nhn_project(&project).await?;
            engine
                .nhn_add_certificate(
                    &p,
                    &key_store,
                    &name,
                    &password,
                    lifetime_days,
                    &description,
                    "ADMIN",
                )
                .await?;
            let p12 = engine
                .nhn_export_certificate(&project, &key_store, &name)
                .await?;
            write_private(&out, &p12)?;
            println!("certificate={name} pkcs12={}", out.display());
        }
        NhnCmd::ExportCertificate {
            project,
            key_store,
            name,
            out,
        } => {
            let p12 = engine
                .nhn_export_certificate(&project, &key_store, &name)
                .await?;
            write_private(&out, &p12)?;
            println!("certificate={name} pkcs12={}", out.display());
        }
    }
    Ok(())
}
