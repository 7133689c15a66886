//! Token generators, token sets and token authentication (NAVER API 2.0
//! token auth), and the per-key IP ACL that gates token requests.
//!
//! Tokens are JWTs signed ES256 in the token (`jwt.rs`), shown once; the
//! store keeps their SHA-256 hashes. A token acts for the account that
//! created its set, only on its key, and only while the generator that
//! issued it is active and has not been replaced. Tokens issued before JWTs
//! (`ncpkms_` and 256 random bits) keep working until they expire.

use crate::store::NaverRepo;
use std::net::IpAddr;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::accounts::now;
use super::jwt::{looks_like_jwt, Claims, TokenSigner, MAX_TOKEN_LEN};
use super::{Engine, Error, KeyId, KeyUid, Result};
use crate::store::{NewToken, TokenParent};

/// Largest token lifetime in hours (two years).
pub const MAX_TOKEN_HOURS: i64 = 17_520;
/// Default access-token lifetime in hours.
pub const DEFAULT_ACCESS_HOURS: i64 = 72;
/// Default refresh-token lifetime in hours.
pub const DEFAULT_REFRESH_HOURS: i64 = 2_160;
/// Prefix of the tokens issued before tokens became JWTs; such tokens keep
/// working until they expire.
pub const LEGACY_TOKEN_PREFIX: &str = "ncpkms_";

/// Largest token lifetime in minutes (v3's `accessTokenMinutes`: 730 days).
pub const MAX_TOKEN_MINUTES: i64 = 1_051_200;

/// A token lifetime: a number of hours or unlimited (`"UL"`), or minutes
/// (API v3's `accessTokenMinutes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Hours, 1 to 17520.
    Hours(i64),
    /// Minutes, 1 to 1051200 (API v3).
    Minutes(i64),
    /// Never expires.
    Unlimited,
}

impl Lifetime {
    /// Checks the range.
    pub fn checked(self, field: &str) -> Result<Self> {
        match self {
            Lifetime::Hours(h) if !(1..=MAX_TOKEN_HOURS).contains(&h) => Err(Error::InvalidInput(
                format!("{field} must be between 1 and {MAX_TOKEN_HOURS} hours, or \"UL\""),
            )),
            Lifetime::Minutes(m) if !(1..=MAX_TOKEN_MINUTES).contains(&m) => {
                Err(Error::InvalidInput(format!(
                    "{field} must be between 1 and {MAX_TOKEN_MINUTES} minutes"
                )))
            }
            l => Ok(l),
        }
    }
}

/// What kind of token a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Access token: crypto calls.
    Access,
    /// Refresh token: Create Access Token and Renew Token Set.
    Refresh,
}

super::stored_names!(TokenKind {
    Access => "access",
    Refresh => "refresh",
});

/// Whether a key's token generator issues tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorStatus {
    /// Issues tokens (NAVER `ENABLED`).
    Active,
    /// Disabled; its tokens are refused.
    Inactive,
}
super::stored_names!(GeneratorStatus {
    Active => "ACTIVE",
    Inactive => "INACTIVE",
});

/// A token set as returned once to the client.
pub struct TokenSet {
    /// The refresh token, if the set has one.
    pub refresh_token: Option<Zeroizing<String>>,
    /// The access token.
    pub access_token: Zeroizing<String>,
}

/// Who a verified token acts for.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// Account.
    pub account_id: i64,
    /// The token's public id (for the activity log).
    pub token_id: String,
    /// The key it is scoped to.
    pub key_id: KeyId,
    /// Its token set.
    pub set_id: String,
    /// Its hash (a refresh token must still be unrevoked when tokens are
    /// made from it).
    pub hash: Vec<u8>,
    /// The key's tag, for the claims of the tokens it makes.
    pub key_tag: String,
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A token's public id: 64 random bits, hex (the activity log's caller and
/// the JWT's `jti`).
fn new_token_id() -> String {
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

impl Engine {
    fn token_expiry(&self, l: Lifetime, at: i64) -> Option<i64> {
        match l {
            Lifetime::Unlimited => None,
            Lifetime::Hours(h) => Some(at + h * self.inner.token_hour_ms),
            Lifetime::Minutes(m) => Some(at + m * self.inner.token_hour_ms / 60),
        }
    }

    /// The key that signs tokens, read from the store and the token on
    /// first use (and again while it is missing, so that a running server
    /// picks up the key `hsm-kms init` adds to an older installation).
    async fn token_signer(&self) -> Result<&TokenSigner> {
        self.inner
            .token_signer
            .get_or_try_init(|| async {
                TokenSigner::load(self.hsm(), self.store())
                    .await?
                    .ok_or_else(|| {
                        Error::Unavailable(
                            "this installation has no token-signing key: the operator must run \
                             `hsm-kms init` (the upgrade step that adds the service keys an \
                             installation lacks)"
                                .into(),
                        )
                    })
            })
            .await
    }

    /// The public key that verifies this installation's tokens (DER
    /// SubjectPublicKeyInfo), for clients and auditors that check a
    /// token's signature themselves.
    pub async fn token_public_key_der(&self) -> Result<Vec<u8>> {
        self.token_signer().await?.public_key_der()
    }

    /// Makes one token of `set_id` for key `key_tag`: its JWT and the row
    /// the store keeps (its hash).
    async fn new_token(
        &self,
        key_tag: &str,
        set_id: &str,
        kind: TokenKind,
        life: Lifetime,
    ) -> Result<(Zeroizing<String>, NewToken)> {
        let at = now();
        let expires_at = self.token_expiry(life, at);
        let token_id = new_token_id();
        let claims = Claims {
            key_tag: key_tag.to_string(),
            token_set_id: set_id.to_string(),
            kind: kind.as_str().to_string(),
            iat: at.div_euclid(1000),
            exp: Claims::exp_of(expires_at),
            jti: token_id.clone(),
        };
        let token = self.token_signer().await?.sign(self.hsm(), &claims).await?;
        let row = NewToken {
            hash: hash(&token),
            token_id,
            kind: kind.as_str(),
            expires_at,
        };
        Ok((token, row))
    }

    /// The generator of a key owned by `account_id`.
    pub async fn token_generator(&self, account_id: i64, uid: &KeyUid) -> Result<TokenGenerator> {
        let e = self.owned_key(account_id, uid).await?;
        self.store()
            .generator(e.key.id)
            .await?
            .ok_or(Error::NotFound("token generator"))
    }

    /// Creates the key's generator; fails if one is already active.
    pub async fn create_token_generator(&self, account_id: i64, uid: &KeyUid) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        if let Some(g) = self.store().generator(e.key.id).await? {
            if g.status == GeneratorStatus::Active {
                return Err(Error::Conflict(
                    "the key already has an active token generator".into(),
                ));
            }
        }
        self.store()
            .put_generator(e.key.id, &uuid::Uuid::new_v4().to_string())
            .await?;
        self.forget_generator(e.key.id);
        Ok(())
    }

    /// Replaces the generator: every token it issued stops working.
    pub async fn replace_token_generator(&self, account_id: i64, uid: &KeyUid) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        match self.store().generator(e.key.id).await? {
            Some(g) if g.status == GeneratorStatus::Active => {}
            _ => return Err(Error::NotFound("active token generator")),
        }
        self.store()
            .put_generator(e.key.id, &uuid::Uuid::new_v4().to_string())
            .await?;
        self.forget_generator(e.key.id);
        Ok(())
    }

    /// Disables the generator: every token it issued stops working.
    pub async fn delete_token_generator(&self, account_id: i64, uid: &KeyUid) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        if !self.store().disable_generator(e.key.id).await? {
            return Err(Error::NotFound("active token generator"));
        }
        self.forget_generator(e.key.id);
        Ok(())
    }

    fn forget_generator(&self, key_id: KeyId) {
        self.inner.generators.remove(&key_id);
    }

    async fn active_generator(&self, key_id: KeyId) -> Result<Option<TokenGenerator>> {
        let seen = match self.inner.generators.get(&key_id) {
            Ok(g) => return Ok(g),
            Err(generation) => generation,
        };
        let g = self
            .store()
            .generator(key_id)
            .await?
            .filter(|g| g.status == GeneratorStatus::Active);
        self.inner.generators.fill(key_id, g.clone(), seen);
        Ok(g)
    }

    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        key_id: KeyId,
        key_tag: &str,
        account_id: i64,
        access: Lifetime,
        refresh: Option<Lifetime>,
        set_id: Option<String>,
        parent: TokenParent<'_>,
    ) -> Result<TokenSet> {
        let g = self
            .active_generator(key_id)
            .await?
            .ok_or_else(|| Error::InvalidState("the key has no active token generator".into()))?;
        let set_id = set_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (at, at_row) = self
            .new_token(key_tag, &set_id, TokenKind::Access, access)
            .await?;
        let mut rows = vec![at_row];
        let refresh_token = match refresh {
            Some(l) => {
                let (rt, rt_row) = self
                    .new_token(key_tag, &set_id, TokenKind::Refresh, l)
                    .await?;
                rows.push(rt_row);
                Some(rt)
            }
            None => None,
        };
        // A new set (one with a refresh token: Create Token Set, and Renew
        // Token Set, which keeps the set it renews) counts against the key's
        // limit of live sets; an access token joins an existing set.
        let max_sets = self.limits().token_sets_per_key;
        let cap = refresh.is_some().then_some(max_sets);
        let live = match self
            .store()
            .insert_tokens(
                key_id,
                &g.generator_id,
                account_id,
                &set_id,
                &rows,
                parent,
                cap,
            )
            .await
        {
            Ok(live) => live,
            Err(crate::store::StoreError::LimitReached(_)) => {
                return Err(Error::LimitExceeded(format!(
                    "the key has reached its limit of {max_sets} live token sets \
                     (limits.max_token_sets_per_key); revoke or let some expire"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        if !live {
            // A parent found revoked (by an older release's renewal) must
            // not be trusted from the cache again.
            if let TokenParent::Live(h) = parent {
                self.inner.tokens.remove(h);
            }
            return Err(Error::Unauthenticated("the token was revoked".into()));
        }
        Ok(TokenSet {
            refresh_token,
            access_token: at,
        })
    }

    /// Create Token Set (account auth).
    pub async fn create_token_set(
        &self,
        account_id: i64,
        uid: &KeyUid,
        access: Lifetime,
        refresh: Lifetime,
    ) -> Result<TokenSet> {
        let access = access.checked("accessTokenHours")?;
        let refresh = refresh.checked("refreshTokenHours")?;
        let e = self.owned_key(account_id, uid).await?;
        self.issue(
            e.key.id,
            &e.key.uid,
            account_id,
            access,
            Some(refresh),
            None,
            TokenParent::None,
        )
        .await
    }

    /// Create Access Token from a verified refresh token.
    pub async fn create_access_token(
        &self,
        auth: &TokenAuth,
        access: Lifetime,
    ) -> Result<Zeroizing<String>> {
        let access = access.checked("accessTokenHours")?;
        let set = self
            .issue(
                auth.key_id,
                &auth.key_tag,
                auth.account_id,
                access,
                None,
                Some(auth.set_id.clone()),
                TokenParent::Live(&auth.hash),
            )
            .await?;
        Ok(set.access_token)
    }

    /// Renew Token Set from a verified refresh token: a new set, counted
    /// against `limits.max_token_sets_per_key`. The presented refresh token
    /// and its set stay valid (NAVER: "Recreating a token set does not
    /// automatically discard existing token sets"), until they expire or the
    /// generator is replaced or deleted; concurrent renewals each get a set.
    pub async fn renew_token_set(
        &self,
        auth: &TokenAuth,
        access: Lifetime,
        refresh: Lifetime,
    ) -> Result<TokenSet> {
        let access = access.checked("accessTokenHours")?;
        let refresh = refresh.checked("refreshTokenHours")?;
        self.issue(
            auth.key_id,
            &auth.key_tag,
            auth.account_id,
            access,
            Some(refresh),
            None,
            TokenParent::Live(&auth.hash),
        )
        .await
    }

    /// Verifies a token of `kind` for the key `uid`, from `client`. Every
    /// failure is `Unauthenticated`, except an address outside the key's
    /// IP ACL, which is `Forbidden`.
    pub async fn authenticate_token(
        &self,
        token: &str,
        kind: TokenKind,
        uid: &KeyUid,
        client: IpAddr,
    ) -> Result<TokenAuth> {
        let bad = |m: &str| Error::Unauthenticated(m.to_string());
        let legacy = token.starts_with(LEGACY_TOKEN_PREFIX);
        if token.len() > MAX_TOKEN_LEN || !(legacy || looks_like_jwt(token)) {
            return Err(bad("malformed token"));
        }
        let h = hash(token);
        // A token found in the cache was verified when it was put there (the
        // hash covers the whole JWT, signature included): the hot path costs
        // no signature check. The store's row decides either way.
        let row: StoredToken = match self.inner.tokens.get(&h) {
            Ok(r) => r,
            Err(seen) => {
                if !legacy {
                    self.check_jwt(token, kind, uid).await?;
                }
                let r = self
                    .store()
                    .token_by_hash(&h)
                    .await?
                    .ok_or_else(|| bad("unknown token"))?;
                self.inner.tokens.fill(h.clone(), r.clone(), seen);
                r
            }
        };
        if row.revoked_at.is_some() {
            return Err(bad("the token was revoked"));
        }
        if row.kind != kind {
            return Err(bad(&format!("this call needs a {} token", kind.as_str())));
        }
        if row.expires_at.is_some_and(|t| t <= now()) {
            return Err(bad("the token has expired"));
        }
        let e = self
            .key_entry(uid)
            .await
            .map_err(|_| bad("the token is not valid for this key"))?;
        if e.key.id.get() != row.key_id || e.key.status == super::KeyStatus::Deleted {
            return Err(bad("the token is not valid for this key"));
        }
        let g = self.active_generator(e.key.id).await?;
        let valid_gen = g
            .as_ref()
            .map(|g| bool::from(g.generator_id.as_bytes().ct_eq(row.generator_id.as_bytes())))
            .unwrap_or(false);
        if !valid_gen {
            return Err(bad(
                "the token generator that issued this token was disabled or replaced",
            ));
        }
        self.check_acl(e.key.id, client).await?;
        Ok(TokenAuth {
            account_id: row.account_id,
            token_id: row.token_id,
            key_id: e.key.id,
            set_id: row.set_id,
            hash: h,
            key_tag: e.key.uid.to_string(),
        })
    }

    /// The checks a JWT passes before the store is asked about it: its
    /// form and ES256 signature under this installation's token key, then
    /// its claims (kind, key, expiry). A valid signature is never enough:
    /// [`Engine::authenticate_token`] then reads the token's row (revoked?
    /// generator replaced? expired to the millisecond?).
    async fn check_jwt(&self, token: &str, kind: TokenKind, uid: &KeyUid) -> Result<()> {
        let bad = |m: &str| Error::Unauthenticated(m.to_string());
        let claims = self
            .token_signer()
            .await?
            .verify(token)
            .map_err(|e| bad(&e.to_string()))?;
        if claims.kind != kind.as_str() {
            return Err(bad(&format!("this call needs a {} token", kind.as_str())));
        }
        if claims.key_tag != uid.as_str() {
            return Err(bad("the token is not valid for this key"));
        }
        if claims
            .exp
            .is_some_and(|exp| exp.saturating_mul(1000) <= now())
        {
            return Err(bad("the token has expired"));
        }
        Ok(())
    }

    // ---- IP ACL ----

    async fn check_acl(&self, key_id: KeyId, client: IpAddr) -> Result<()> {
        let (on, nets) = match self.inner.acls.get(&key_id) {
            Ok(v) => v,
            Err(seen) => {
                let (on, rules) = self.store().acl(key_id).await?;
                let nets: Vec<ipnet::IpNet> =
                    rules.iter().filter_map(|r| parse_rule(r).ok()).collect();
                self.inner.acls.fill(key_id, (on, nets.clone()), seen);
                (on, nets)
            }
        };
        let client = match client {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if on && !nets.iter().any(|n| n.contains(&client)) {
            return Err(Error::Forbidden(format!(
                "{client} is not allowed by the key's IP ACL"
            )));
        }
        Ok(())
    }

    /// Turns the key's IP ACL on or off. Once on, only listed addresses may
    /// use tokens of the key (none while the list is empty).
    pub async fn set_acl(&self, account_id: i64, uid: &KeyUid, on: bool) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        self.store().set_acl_enabled(e.key.id, on).await?;
        self.inner.acls.remove(&e.key.id);
        Ok(())
    }

    /// The key's ACL: (enabled, rules).
    pub async fn acl(&self, account_id: i64, uid: &KeyUid) -> Result<(bool, Vec<String>)> {
        let e = self.owned_key(account_id, uid).await?;
        Ok(self.store().acl(e.key.id).await?)
    }

    /// Adds or removes ACL rules (IPv4 addresses or CIDR ranges).
    pub async fn change_acl_rules(
        &self,
        account_id: i64,
        uid: &KeyUid,
        rules: &[String],
        add: bool,
    ) -> Result<Vec<String>> {
        if rules.is_empty() || rules.len() > 100 {
            return Err(Error::InvalidInput(
                "ipList must hold 1 to 100 entries".into(),
            ));
        }
        let mut canon = Vec::with_capacity(rules.len());
        for r in rules {
            let n = parse_rule(r).map_err(Error::InvalidInput)?;
            let rule = if n.prefix_len() == 32 {
                n.addr().to_string()
            } else {
                n.to_string()
            };
            // `1.2.3.4` and `1.2.3.4/32` are one rule, and count once.
            if !canon.contains(&rule) {
                canon.push(rule);
            }
        }
        let e = self.owned_key(account_id, uid).await?;
        if add {
            let (_, existing) = self.store().acl(e.key.id).await?;
            let new = canon.iter().filter(|r| !existing.contains(r)).count();
            if existing.len() + new > 100 {
                return Err(Error::InvalidInput(
                    "a key's IP ACL holds at most 100 rules".into(),
                ));
            }
            self.store().add_acl_rules(e.key.id, &canon).await?;
        } else {
            self.store().delete_acl_rules(e.key.id, &canon).await?;
        }
        self.inner.acls.remove(&e.key.id);
        Ok(self.store().acl(e.key.id).await?.1)
    }
}

/// Parses an IPv4 address or IPv4 CIDR range.
pub fn parse_rule(r: &str) -> std::result::Result<ipnet::IpNet, String> {
    let r = r.trim();
    let net = if r.contains('/') {
        r.parse::<ipnet::Ipv4Net>()
            .map_err(|_| format!("{r} is not an IPv4 address or CIDR range"))?
            .trunc()
    } else {
        let a: std::net::Ipv4Addr = r
            .parse()
            .map_err(|_| format!("{r} is not an IPv4 address or CIDR range"))?;
        ipnet::Ipv4Net::from(a)
    };
    Ok(ipnet::IpNet::V4(net))
}

/// A key's token generator, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenGenerator {
    /// Key.
    pub key_id: i64,
    /// Current generator id.
    pub generator_id: String,
    /// Issuing or disabled.
    #[sqlx(try_from = "String")]
    pub status: GeneratorStatus,
    /// When it was (re)enabled, ms.
    pub enabled_at: i64,
    /// When it was disabled, ms.
    pub disabled_at: Option<i64>,
    /// Tokens issued by the current generator.
    pub issued_count: i64,
}

/// A token as stored (its hash, never the token).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredToken {
    /// Public id.
    pub token_id: String,
    /// Key it is scoped to.
    pub key_id: i64,
    /// Generator that issued it.
    pub generator_id: String,
    /// Account on whose behalf it acts.
    pub account_id: i64,
    /// Access or refresh.
    #[sqlx(try_from = "String")]
    pub kind: TokenKind,
    /// Token set.
    pub set_id: String,
    /// Expiry, ms; `None` for unlimited.
    pub expires_at: Option<i64>,
    /// Revocation time, ms.
    pub revoked_at: Option<i64>,
}
