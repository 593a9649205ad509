//! Digests as a concept: which algorithms the service computes ([`Algorithm`]) and the digests
//! of one hashed file ([`Digests`]).
//!
//! Adding an algorithm is a new [`Algorithm`] variant: the compiler then walks through every
//! place that must know it (its name, its length, where [`Digests`] keeps it, the worker's
//! hasher). Today the service computes MD5 only, and the row, the log line and the answers
//! keep their `md5` field.

use serde::{Deserialize, Serialize};

use crate::Md5Hex;

/// A digest algorithm the service computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// MD5 (RFC 1321), computed for every task.
    Md5,
}

impl Algorithm {
    /// Every algorithm, in the order answers list them.
    pub const ALL: &'static [Algorithm] = &[Algorithm::Md5];

    /// The name in the RFC 9530 registry (`md5`, `sha-256`, …), as URLs and headers spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
        }
    }

    /// Length of the digest in lowercase hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The digests of one hashed file: MD5 always, each as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// The MD5.
    pub md5: Md5Hex,
}

impl Digests {
    /// The digest of `algorithm`, if this file has one.
    pub fn get(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => Some(self.md5.as_str()),
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
        Ok(fields.md5.map(|md5| Digests { md5 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_has_a_registry_name_and_a_digest_of_its_length() {
        let digests = Digests { md5: "d41d8cd98f00b204e9800998ecf8427e".parse().unwrap() };
        for &algorithm in Algorithm::ALL {
            let hex = digests.get(algorithm).expect("a file has every algorithm it was hashed with");
            assert_eq!(hex.len(), algorithm.hex_len(), "{algorithm}");
        }
        assert_eq!(digests.iter().map(|(algorithm, _)| algorithm.name()).collect::<Vec<_>>(), ["md5"]);
    }
}
