//! The simulated model catalog and the wire shapes that describe models.

use serde::Serialize;

/// Adds `:latest` to a model name without a tag (`mistral` → `mistral:latest`).
///
/// The tag is what follows the last `:` after the last `/`, so a registry host with a
/// port (`host:5000/ns/model`) is not mistaken for a tag.
pub fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// `details` of a model, as `/api/tags`, `/api/ps` and `/api/show` write it.
#[derive(Debug, Clone, Serialize)]
pub struct Details {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Vec<String>,
    pub parameter_size: String,
    pub quantization_level: String,
}

/// One model the simulator has "pulled".
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub size: u64,
    pub digest: String,
    pub details: Details,
}

impl Model {
    /// The catalog entry for `name` (normalized), with realistic numbers for the two
    /// default models and generic ones for any other.
    pub fn named(name: &str) -> Model {
        let name = normalize(name);
        let (size, params) = match name.as_str() {
            "mistral:latest" => (4_113_301_824, "7.2B"),
            "llama3:latest" => (4_661_224_676, "8.0B"),
            _ => (3_826_793_677, "7B"),
        };
        Model {
            digest: fake_digest(&name),
            size,
            details: Details {
                parent_model: String::new(),
                format: "gguf".into(),
                family: "llama".into(),
                families: vec!["llama".into()],
                parameter_size: params.into(),
                quantization_level: "Q4_0".into(),
            },
            name,
        }
    }
}

/// A stable 64-hex-digit digest derived from the name (FNV-1a, repeated).
fn fake_digest(name: &str) -> String {
    let mut out = String::with_capacity(64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0u8..4 {
        for b in name.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// An entry of `GET /api/tags`.
#[derive(Serialize)]
pub struct TagEntry<'a> {
    pub name: &'a str,
    pub model: &'a str,
    pub modified_at: &'a str,
    pub size: u64,
    pub digest: &'a str,
    pub details: &'a Details,
}

/// An entry of `GET /api/ps`.
#[derive(Serialize)]
pub struct PsEntry<'a> {
    pub name: &'a str,
    pub model: &'a str,
    pub size: u64,
    pub digest: &'a str,
    pub details: &'a Details,
    pub expires_at: String,
    pub size_vram: u64,
    pub context_length: u64,
}

/// The answer of `POST /api/show`.
#[derive(Serialize)]
pub struct ShowResponse<'a> {
    pub license: &'a str,
    pub modelfile: String,
    pub parameters: &'a str,
    pub template: &'a str,
    pub details: &'a Details,
    pub model_info: serde_json::Value,
    pub capabilities: [&'a str; 1],
    pub modified_at: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_tags() {
        assert_eq!(normalize("mistral"), "mistral:latest");
        assert_eq!(normalize("mistral:7b"), "mistral:7b");
        assert_eq!(normalize("host:5000/ns/model"), "host:5000/ns/model:latest");
        assert_eq!(normalize("host:5000/ns/model:q4"), "host:5000/ns/model:q4");
    }

    #[test]
    fn digests_are_stable_hex() {
        let d = fake_digest("mistral:latest");
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d, fake_digest("mistral:latest"));
        assert_ne!(d, fake_digest("llama3:latest"));
    }
}
