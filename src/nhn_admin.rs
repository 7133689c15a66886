//! `hsm-kms admin nhn ...`: what the NHN console does for Secure Key
//! Manager: projects, appkeys, User Access Keys, key stores with their
//! authentication switches and export policy, and client certificates
//! (issued by the project CA in the token, delivered as PKCS#12 files).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use hsm_kms::core::nhn::UserAccessKeyRequirement;
use hsm_kms::core::nhn::{appkey_fingerprint, KeyStoreSettings};
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
    /// Create an appkey for a project; prints it.
    CreateAppkey {
        /// Project name.
        #[arg(long)]
        project: String,
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
            NhnCmd::CreateAppkey { project } => ("NhnCreateAppkey", format!("project={project}")),
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
        NhnCmd::CreateAppkey { project } => {
            let appkey = engine.nhn_create_appkey(&project).await?;
            println!("appkey={appkey}");
            println!("appkey_fingerprint={}", appkey_fingerprint(&appkey));
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
        } => {
            let id = engine
                .nhn_create_key_store(
                    &project,
                    KeyStoreSettings {
                        name: name.clone(),
                        description,
                        ip4_auth_use: ip4_auth,
                        mac_auth_use: mac_auth,
                        certificate_auth_use: certificate_auth,
                        allow_export,
                    },
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
