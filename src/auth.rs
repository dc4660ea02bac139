//! Tokens: HS256 JWTs signed with the server secret, the secret file itself, and users'
//! passwords (argon2id).
//!
//! Required claims: `sub`, `role`, `kind`, `iat`, `exp`, `iss` = `botd`. The algorithm
//! is pinned to HS256 and `exp` has 30 s of leeway. Every failure is the same 401 to the
//! caller; the reason is only for the daemon's own debug log.
//!
//! A user token (`kind: "user"`, from a login) is also checked against the users table,
//! through [`UserCheck`]: what it read is at most `auth.user_check_secs` old, so a deleted
//! user's tokens stop working and a changed role takes effect within that time.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer every token names.
pub const ISSUER: &str = "botd";
/// Leeway on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token may do, lowest first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who minted a token: a login (checked against the users table) or `botd token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    User,
    Service,
}

/// A token's claims; every field is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub kind: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

/// The signing and checking keys made from the secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(********)")
    }
}

/// Why a token was refused (never shown to the caller).
#[derive(Debug, thiserror::Error)]
#[error("token refused: {0}")]
pub struct TokenRefused(String);

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["sub", "exp", "iat", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `sub` valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, kind: TokenKind, ttl: Duration) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            kind,
            iat: now,
            exp: now + ttl.as_secs(),
            iss: ISSUER.to_owned(),
        };
        // Encoding HS256 with serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks signature, algorithm, issuer, expiry (with leeway) and every claim.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenRefused> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenRefused(format!("{:?}", e.kind())))?;
        if data.claims.sub.is_empty() {
            return Err(TokenRefused("empty sub".into()));
        }
        Ok(data.claims)
    }
}

/// The fewest characters a password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The most characters a password may have (argon2 reads all of it).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Checks API.md's password rule; the message names the rule, never the password.
pub fn check_password_rule(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(format!(
            "must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {n}"
        ));
    }
    Ok(())
}

/// Hashes a password with argon2id (default parameters, a random salt) into a PHC string.
/// Slow on purpose: call it off the async threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// Whether `password` matches a PHC string made by [`hash_password`]. Slow on purpose.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::phc::PasswordHash;
    use argon2::password_hash::PasswordVerifier;
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A hash no password is known to match: a login for an unknown user is checked against
/// it, so that it costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        hash_password(&hex::encode(bytes)).unwrap_or_default()
    })
}

/// What the users table said about one user, and when it was read.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    /// The user's role and creation time (ms), or `None` when there is no such user.
    user: Option<(Role, i64)>,
}

/// The users table as the token check sees it: each user's row read at most `max_age`
/// ago. Changes made through this daemon are forgotten at once.
pub struct UserCheck {
    /// `auth.user_check_secs`.
    max_age: Duration,
    /// By username; bounded by [`UserCheck::MAX_ENTRIES`] (cleared when full).
    seen: Mutex<HashMap<String, Seen>>,
}

/// Why a user token was refused, or the store failed.
#[derive(Debug, PartialEq, Eq)]
pub enum UserCheckError {
    /// The user is gone, or the token is older than the user (a name deleted and made again).
    Refused,
    /// The users table could not be read.
    Store(String),
}

impl UserCheck {
    const MAX_ENTRIES: usize = 100_000;

    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The claims with the role the users table gives now, or `Refused`. `read` looks the
    /// user up (role and `created_at` in ms) when what was seen is too old.
    pub async fn check<F, Fut>(&self, claims: Claims, read: F) -> Result<Claims, UserCheckError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<(Role, i64)>, String>>,
    {
        if claims.kind != TokenKind::User {
            return Ok(claims);
        }
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&claims.sub)
            .copied()
            .filter(|s| s.at.elapsed() < self.max_age);
        let user = match cached {
            Some(s) => s.user,
            None => {
                let user = read(claims.sub.clone())
                    .await
                    .map_err(UserCheckError::Store)?;
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= Self::MAX_ENTRIES {
                    seen.clear();
                }
                seen.insert(
                    claims.sub.clone(),
                    Seen {
                        at: Instant::now(),
                        user,
                    },
                );
                user
            }
        };
        match user {
            // A token minted before the user existed belongs to an earlier user of the name.
            Some((role, created_ms))
                if claims.iat.saturating_mul(1000) + 999 >= created_ms as u64 =>
            {
                Ok(Claims { role, ..claims })
            }
            _ => Err(UserCheckError::Refused),
        }
    }

    /// Drops what was seen of a user (after this daemon changed or deleted it).
    pub fn forget(&self, username: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(username);
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why the secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("auth.jwt_secret_file: cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("auth.jwt_secret_file: cannot create {path}: {error}")]
    Create { path: String, error: std::io::Error },
    #[error("{key}: the secret must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort { key: &'static str },
}

/// The secret: `auth.jwt_secret` if set, else the file's trimmed text. With `create`, a
/// missing file is made with 64 hex characters (32 random bytes), mode 0600.
pub fn load_secret(
    inline: Option<&str>,
    file: &Path,
    create: bool,
) -> Result<Option<Vec<u8>>, SecretError> {
    if let Some(secret) = inline {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                key: "auth.jwt_secret",
            });
        }
        return Ok(Some(secret.as_bytes().to_vec()));
    }
    let path = file.display().to_string();
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort {
                    key: "auth.jwt_secret_file",
                });
            }
            Ok(Some(secret.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut bytes = [0u8; 32];
            rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
            let text = hex::encode(bytes);
            write_private(file, &text).map_err(|error| SecretError::Create {
                path: path.clone(),
                error,
            })?;
            Ok(Some(text.into_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(SecretError::Read { path, error }),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = JwtKeys::new(SECRET);
        let t = keys.mint(
            "ci",
            Role::Operator,
            TokenKind::Service,
            Duration::from_secs(60),
        );
        let c = keys.verify(&t).unwrap();
        assert_eq!(c.sub, "ci");
        assert_eq!(c.role, Role::Operator);
        assert_eq!(c.kind, TokenKind::Service);
        assert_eq!(c.iss, ISSUER);
    }

    #[test]
    fn another_secret_or_garbage_is_refused() {
        let keys = JwtKeys::new(SECRET);
        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        let t = other.mint(
            "ci",
            Role::Admin,
            TokenKind::Service,
            Duration::from_secs(60),
        );
        assert!(keys.verify(&t).is_err());
        assert!(keys.verify("garbage").is_err());
        assert!(keys.verify("").is_err());
    }

    #[test]
    fn the_secret_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("botd.secret");
        assert!(load_secret(None, &path, false).unwrap().is_none());
        let first = load_secret(None, &path, true).unwrap().unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_secret(None, &path, true).unwrap().unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(!verify_password("not a hash", "correct horse battery"));
        assert!(!verify_password(decoy_hash(), ""));
        assert!(check_password_rule("short").is_err());
        assert!(check_password_rule(&"x".repeat(1025)).is_err());
        assert!(check_password_rule("twelve chars").is_ok());
        // Characters, not bytes.
        assert!(check_password_rule(&"é".repeat(12)).is_ok());
    }

    #[tokio::test]
    async fn a_user_token_takes_the_users_current_role_and_dies_with_the_user() {
        let check = UserCheck::new(Duration::from_secs(3600));
        let claims = |kind| Claims {
            sub: "ann".into(),
            role: Role::Admin,
            kind,
            iat: unix_now(),
            exp: unix_now() + 60,
            iss: ISSUER.into(),
        };
        let now_ms = (unix_now() * 1000) as i64;
        let c = check
            .check(claims(TokenKind::User), |_| async move {
                Ok(Some((Role::Viewer, now_ms)))
            })
            .await
            .unwrap();
        assert_eq!(c.role, Role::Viewer);
        // Cached: the store is not asked again.
        let c = check
            .check(claims(TokenKind::User), |_| async {
                Err("not asked".into())
            })
            .await
            .unwrap();
        assert_eq!(c.role, Role::Viewer);
        check.forget("ann");
        let e = check
            .check(claims(TokenKind::User), |_| async { Ok(None) })
            .await;
        assert_eq!(e, Err(UserCheckError::Refused));
        // A user made again after the token was minted does not inherit it.
        check.forget("ann");
        let later = now_ms + 10_000;
        let e = check
            .check(claims(TokenKind::User), |_| async move {
                Ok(Some((Role::Admin, later)))
            })
            .await;
        assert_eq!(e, Err(UserCheckError::Refused));
        // Service tokens are not users.
        let c = check
            .check(claims(TokenKind::Service), |_| async { Ok(None) })
            .await
            .unwrap();
        assert_eq!(c.role, Role::Admin);
    }

    #[test]
    fn a_short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            load_secret(None, &path, true),
            Err(SecretError::TooShort { .. })
        ));
        assert!(load_secret(Some("x"), &path, true).is_err());
    }
}
