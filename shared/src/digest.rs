//! Digests as a concept: which algorithms the service can compute ([`Algorithm`]) and the
//! digests of one hashed file ([`Digests`]).
//!
//! Adding an algorithm is a new [`Algorithm`] variant: the compiler then walks through every
//! place that must know it (its name, its length, the worker's hasher). MD5 is computed for
//! every task and keeps its own field everywhere (the row's `result`, the log line's and the
//! answers' `md5`); the others are computed when a task asks for them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Md5Hex;

/// A digest algorithm the service can compute, named as in the RFC 9530 registry where the
/// registry has a name (`crc64nvme` and `blake3` are not registered there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// MD5 (RFC 1321), computed for every task.
    Md5,
    /// SHA-1 (RFC 3174).
    Sha1,
    /// SHA-256 (FIPS 180-4).
    Sha256,
    /// SHA-512 (FIPS 180-4).
    Sha512,
    /// CRC-32C (Castagnoli, as iSCSI and S3 use it), big-endian hex.
    Crc32c,
    /// CRC-64/NVME (S3's full-object CRC64NVME), big-endian hex.
    Crc64Nvme,
    /// BLAKE3, 256-bit output.
    Blake3,
}

impl Algorithm {
    /// Every algorithm, in the order answers list them.
    pub const ALL: &'static [Algorithm] = &[
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Blake3,
    ];

    /// The name in the RFC 9530 registry (`md5`, `sha-256`, …), as URLs and headers spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha-1",
            Algorithm::Sha256 => "sha-256",
            Algorithm::Sha512 => "sha-512",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Crc64Nvme => "crc64nvme",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Length of the digest in lowercase hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 | Algorithm::Blake3 => 64,
            Algorithm::Sha512 => 128,
            Algorithm::Crc32c => 8,
            Algorithm::Crc64Nvme => 16,
        }
    }

    /// The algorithm named `name` (exactly as [`Algorithm::name`] spells it).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.iter().copied().find(|algorithm| algorithm.name() == name)
    }

    /// Every name, comma-separated, for a message that lists the known ones.
    pub fn names() -> String {
        Algorithm::ALL.iter().map(|algorithm| algorithm.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Algorithm::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown digest algorithm {name:?}; known: {}",
                Algorithm::names()
            ))
        })
    }
}

/// The digests of one hashed file: MD5 always, and those of the other algorithms it was hashed
/// with, each as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// The MD5.
    pub md5: Md5Hex,
    /// The other algorithms' digests (never MD5).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub others: BTreeMap<Algorithm, String>,
}

impl Digests {
    /// The digests of a file hashed with MD5 alone.
    pub fn md5_only(md5: Md5Hex) -> Self {
        Digests { md5, others: BTreeMap::new() }
    }

    /// The digest of `algorithm`, if this file has one.
    pub fn get(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => Some(self.md5.as_str()),
            other => self.others.get(&other).map(String::as_str),
        }
    }

    /// Every digest this file has, with its algorithm, in [`Algorithm::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Algorithm, &str)> {
        Algorithm::ALL.iter().filter_map(|&algorithm| Some((algorithm, self.get(algorithm)?)))
    }
}

/// `Option<Digests>` as flattened fields that are always present: a file's digests, or `null`
/// for each (a failed task's log line has `"md5": null`, as it always had).
pub mod nullable_fields {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Digests;
    use crate::Md5Hex;

    #[derive(Serialize, Deserialize)]
    struct Fields {
        md5: Option<Md5Hex>,
    }

    /// Writes each digest field, `null` when there are none.
    pub fn serialize<S: Serializer>(digests: &Option<Digests>, serializer: S) -> Result<S::Ok, S::Error> {
        Fields { md5: digests.as_ref().map(|digests| digests.md5.clone()) }.serialize(serializer)
    }

    /// Reads the digest fields; `None` when the MD5 is `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Digests>, D::Error> {
        let fields = Fields::deserialize(deserializer)?;
        Ok(fields.md5.map(Digests::md5_only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_has_a_registry_name_and_a_digest_of_its_length() {
        let digests = Digests::md5_only("d41d8cd98f00b204e9800998ecf8427e".parse().unwrap());
        assert_eq!(digests.get(Algorithm::Md5).map(str::len), Some(Algorithm::Md5.hex_len()));
        assert_eq!(digests.iter().map(|(algorithm, _)| algorithm.name()).collect::<Vec<_>>(), ["md5"]);
        for &algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(algorithm.name()), Some(algorithm));
            let json = serde_json::to_string(&algorithm).unwrap();
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), algorithm);
        }
        assert_eq!(Algorithm::from_name("SHA-256"), None, "names are exact");
        let unknown = serde_json::from_str::<Algorithm>("\"sha3\"").unwrap_err().to_string();
        assert!(
            unknown.contains("known: md5, sha-1, sha-256, sha-512, crc32c, crc64nvme, blake3"),
            "{unknown}"
        );
    }
}
