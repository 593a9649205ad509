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

impl Digests {
    /// The first algorithm whose expected digest differs from the computed one, as
    /// `(algorithm, expected, computed)`; an expected algorithm that was not computed counts as
    /// a difference (computed `None`).
    pub fn mismatch<'a>(
        &'a self,
        expected: &'a BTreeMap<Algorithm, String>,
    ) -> Option<(Algorithm, &'a str, Option<&'a str>)> {
        expected.iter().find_map(|(&algorithm, want)| {
            let got = self.get(algorithm);
            (got != Some(want.as_str())).then_some((algorithm, want.as_str(), got))
        })
    }

    /// The digests as a JSON-style object in [`Algorithm::ALL`] order (MD5 included), for answers.
    pub fn as_object(&self) -> DigestObject<'_> {
        DigestObject(self)
    }
}

/// [`Digests::as_object`]: serializes as `{"md5": "…", "sha-256": "…", …}`.
#[derive(Debug, Clone, Copy)]
pub struct DigestObject<'a>(&'a Digests);

impl Serialize for DigestObject<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        for (algorithm, hex) in self.0.iter() {
            map.serialize_entry(algorithm.name(), hex)?;
        }
        map.end()
    }
}

/// A name that is not one of [`Algorithm::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown digest algorithm {0:?}; known: {known}", known = Algorithm::names())]
pub struct UnknownAlgorithm(pub String);

/// Parses a comma-separated list of algorithm names (`sha-256,crc64nvme`; spaces around names
/// and empty items are ignored), each once, in [`Algorithm::ALL`] order.
pub fn parse_list(list: &str) -> Result<Vec<Algorithm>, UnknownAlgorithm> {
    let mut algorithms = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        algorithms.push(Algorithm::from_name(name).ok_or_else(|| UnknownAlgorithm(name.to_owned()))?);
    }
    algorithms.sort_unstable();
    algorithms.dedup();
    Ok(algorithms)
}

/// A set of algorithms as a comma-separated list spells it (`DIGESTS`, `?digests=`): parsed by
/// [`parse_list`], written back the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlgorithmList(pub Vec<Algorithm>);

impl std::str::FromStr for AlgorithmList {
    type Err = UnknownAlgorithm;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        parse_list(list).map(AlgorithmList)
    }
}

impl std::fmt::Display for AlgorithmList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|algorithm| algorithm.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for AlgorithmList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What an upload asks of its digests: which to compute, and the values its client expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestRequest {
    /// The algorithms chosen (the upload's `digests=`, or the server's `DIGESTS`).
    pub algorithms: Vec<Algorithm>,
    /// The digests the client expects, as lowercase hex; the task fails if one differs.
    pub expected: BTreeMap<Algorithm, String>,
}

impl DigestRequest {
    /// Every algorithm the worker computes besides MD5 (the chosen ones and every expected
    /// one), by name, in [`Algorithm::ALL`] order: the task row's `algorithms`.
    pub fn algorithm_names(&self) -> Vec<String> {
        let mut all: Vec<Algorithm> = self.algorithms.iter().chain(self.expected.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
            .filter(|&algorithm| algorithm != Algorithm::Md5)
            .map(|a| a.name().to_owned())
            .collect()
    }

    /// The expected digests as the task row's `expected` (`None` when there are none).
    pub fn expected_json(&self) -> Option<serde_json::Value> {
        (!self.expected.is_empty()).then(|| serde_json::to_value(&self.expected).expect("a map of strings"))
    }
}

/// Reads a digest column (`{"<algorithm>": "<hex>"}`), skipping names this build does not know
/// (a row written by a newer api).
pub fn from_column(value: Option<&serde_json::Value>) -> BTreeMap<Algorithm, String> {
    let Some(serde_json::Value::Object(object)) = value else {
        return BTreeMap::new();
    };
    object
        .iter()
        .filter_map(|(name, hex)| Some((Algorithm::from_name(name)?, hex.as_str()?.to_owned())))
        .collect()
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

    #[test]
    fn a_list_reads_back_as_written() {
        let list: AlgorithmList = "crc64nvme, sha-256".parse().unwrap();
        assert_eq!(list.to_string(), "sha-256,crc64nvme");
        assert_eq!(list.to_string().parse::<AlgorithmList>().unwrap(), list);
        assert_eq!(serde_json::to_string(&list).unwrap(), "\"sha-256,crc64nvme\"");
    }

    #[test]
    fn lists_parse_to_known_algorithms_each_once() {
        assert_eq!(
            parse_list(" crc64nvme,sha-256,,sha-256 ").unwrap(),
            [Algorithm::Sha256, Algorithm::Crc64Nvme]
        );
        assert_eq!(parse_list("").unwrap(), []);
        let err = parse_list("sha-256,sha3-256").unwrap_err();
        assert_eq!(err, UnknownAlgorithm("sha3-256".into()));
        assert!(err.to_string().contains("known: md5, sha-1"), "{err}");
    }

    #[test]
    fn a_request_computes_the_chosen_and_the_expected_algorithms_and_a_mismatch_is_named() {
        let request = DigestRequest {
            algorithms: vec![Algorithm::Md5, Algorithm::Blake3],
            expected: BTreeMap::from([
                (Algorithm::Sha256, "ab".repeat(32)),
                (Algorithm::Md5, "00".repeat(16)),
            ]),
        };
        assert_eq!(request.algorithm_names(), ["sha-256", "blake3"]);
        let column = request.expected_json();
        assert_eq!(from_column(column.as_ref()), request.expected);

        let mut digests = Digests::md5_only("00".repeat(16).parse().unwrap());
        assert_eq!(
            digests.mismatch(&request.expected),
            Some((Algorithm::Sha256, "ab".repeat(32).as_str(), None))
        );
        digests.others.insert(Algorithm::Sha256, "ab".repeat(32));
        assert_eq!(digests.mismatch(&request.expected), None);
        digests.others.insert(Algorithm::Sha256, "cd".repeat(32));
        let cd = "cd".repeat(32);
        assert_eq!(
            digests.mismatch(&request.expected),
            Some((Algorithm::Sha256, "ab".repeat(32).as_str(), Some(cd.as_str())))
        );
        assert_eq!(
            serde_json::to_string(&digests.as_object()).unwrap(),
            format!("{{\"md5\":\"{}\",\"sha-256\":\"{cd}\"}}", "00".repeat(16))
        );
    }
}
