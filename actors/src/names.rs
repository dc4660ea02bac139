//! Validated names: parsed once at the edge, so nothing unvalidated reaches an actor.
//!
//! The rules are API.md's: bot and user names `^[a-z0-9][a-z0-9_-]{0,62}$`, pool names the
//! same with at most 56 characters (their bots are `{pool}-{n}`), conversations
//! `^[A-Za-z0-9._:-]{1,128}$`, models `^[A-Za-z0-9._:/-]{1,200}$`.

use std::fmt;

/// Why a name was refused; the message says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

fn check_slug(kind: &str, s: &str, max: usize) -> Result<(), NameError> {
    let bytes = s.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= max
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "{kind} must match ^[a-z0-9][a-z0-9_-]{{0,{}}}$",
            max - 1
        )))
    }
}

fn check_charset(kind: &str, s: &str, max: usize, extra: &[u8]) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        let extra: String = extra.iter().map(|&b| b as char).collect();
        Err(NameError(format!(
            "{kind} must be 1 to {max} characters of A-Z a-z 0-9 {extra}"
        )))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, |$s:ident| $check:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl $name {
            pub fn parse($s: &str) -> Result<Self, NameError> {
                $check?;
                Ok(Self($s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A bot's name: `^[a-z0-9][a-z0-9_-]{0,62}$`.
    BotName,
    |s| check_slug("a bot name", s, 63)
);
name_type!(
    /// A pool's name: like a bot's, at most 56 characters.
    PoolName,
    |s| check_slug("a pool name", s, 56)
);
name_type!(
    /// A user's name: like a bot's.
    Username,
    |s| check_slug("a username", s, 63)
);
name_type!(
    /// A conversation id: `^[A-Za-z0-9._:-]{1,128}$`.
    Conversation,
    |s| check_charset("conversation", s, 128, b"._:-")
);
name_type!(
    /// An Ollama model name: `^[A-Za-z0-9._:/-]{1,200}$`.
    ModelName,
    |s| check_charset("model", s, 200, b"._:/-")
);

impl Conversation {
    /// The conversation a message names none: `default`.
    pub fn default_name() -> Self {
        Self("default".to_owned())
    }
}

impl BotName {
    /// The name of a pool's `n`th managed bot: `{pool}-{n}`. Always valid: a pool name
    /// has at most 56 characters, so `-` and up to six digits fit in 63.
    pub fn pool_member(pool: &PoolName, n: u32) -> Self {
        Self(format!("{}-{}", pool.as_str(), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_names_follow_the_api_rule() {
        for ok in ["a", "0", "support-1", "a_b-c", &"x".repeat(63)] {
            assert!(BotName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a.b", "é", &"x".repeat(64)] {
            assert!(BotName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_names_leave_room_for_member_numbers() {
        assert!(PoolName::parse(&"p".repeat(56)).is_ok());
        assert!(PoolName::parse(&"p".repeat(57)).is_err());
        let pool = PoolName::parse(&"p".repeat(56)).unwrap();
        let member = BotName::pool_member(&pool, 999_999);
        assert!(BotName::parse(member.as_str()).is_ok());
    }

    #[test]
    fn conversations_and_models_have_their_own_charsets() {
        assert!(Conversation::parse("c-42 x").is_err());
        assert!(Conversation::parse("c-42:x.Y_z").is_ok());
        assert!(Conversation::parse("c-42:x.Y").is_ok());
        assert!(Conversation::parse(&"c".repeat(129)).is_err());
        assert!(ModelName::parse("library/mistral:7b-instruct").is_ok());
        assert!(ModelName::parse("mistral latest").is_err());
        assert!(ModelName::parse("").is_err());
    }
}
