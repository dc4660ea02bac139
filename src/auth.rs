//! Tokens: HS256 JWTs signed with the server secret, and the secret file itself.
//!
//! Required claims: `sub`, `role`, `kind`, `iat`, `exp`, `iss` = `botd`. The algorithm
//! is pinned to HS256 and `exp` has 30 s of leeway. Every failure is the same 401 to the
//! caller; the reason is only for the daemon's own debug log.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer every token names.
pub const ISSUER: &str = "botd";
/// Leeway on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token may do, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
