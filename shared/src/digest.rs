//! Digests as a concept: which algorithms the service can compute ([`Algorithm`], and
//! [`REGISTRY`], everything known of each) and the digests of one hashed file ([`Digests`]).
//!
//! **The registry is the one place that spells an algorithm.** Names, aliases, labels, digest
//! lengths and header names live in [`REGISTRY`]; the api's help, headers and OpenAPI
//! document, `md5-client` and the page (through `/algorithms.json`) read them from there.
//! Adding an algorithm is a new [`Algorithm`] variant and its row: the compiler then walks
//! through the rest (the worker's hasher), and a test checks the rows' order. MD5 is computed
//! for every task and keeps its own field everywhere (the row's `result`, the log line's and
//! the answers' `md5`); the others are computed when a task asks for them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Md5Hex;

/// A digest algorithm the service can compute; [`Algorithm::info`] tells everything about it.
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

/// Everything the service and its clients know of one algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AlgorithmInfo {
    /// The algorithm this row describes.
    #[serde(skip)]
    pub algorithm: Algorithm,
    /// The name in the RFC 9530 registry where it has one (`crc64nvme` and `blake3` are not
    /// registered there), as URLs, `Repr-Digest`, answers and the log spell it.
    pub name: &'static str,
    /// Other names the command line takes: coreutils' spelling (`sha256`, as in `sha256sum`;
    /// `b3`, as in `b3sum`).
    pub aliases: &'static [&'static str],
    /// Names `Repr-Digest` still accepts for it (RFC 9530's deprecated `sha`).
    #[serde(skip)]
    pub legacy_names: &'static [&'static str],
    /// How a person reads it (the page's label).
    pub label: &'static str,
    /// The tag of a BSD-style sum line (`--tag`, `sha256sum --tag`): `SHA256 (file) = …`.
    pub tag: &'static str,
    /// Length of the digest in lowercase hex digits.
    pub hex_len: usize,
    /// Whether RFC 9530 lists it as active (not deprecated): the `File-Digest` answer field
    /// carries these.
    #[serde(skip)]
    pub active_in_rfc9530: bool,
    /// S3's header for it (`x-amz-checksum-…`), if S3 has one.
    #[serde(skip)]
    pub s3_header: Option<&'static str>,
    /// The digest of the five bytes `hello`, for examples.
    #[serde(skip)]
    pub example_hex: &'static str,
}

/// The registry: one row per [`Algorithm`], in the order answers list them.
pub const REGISTRY: [AlgorithmInfo; 7] = [
    AlgorithmInfo {
        algorithm: Algorithm::Md5,
        name: "md5",
        aliases: &[],
        legacy_names: &[],
        label: "MD5",
        tag: "MD5",
        hex_len: 32,
        active_in_rfc9530: false,
        s3_header: None,
        example_hex: "5d41402abc4b2a76b9719d911017c592",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Sha1,
        name: "sha-1",
        aliases: &["sha1"],
        legacy_names: &["sha"],
        label: "SHA-1",
        tag: "SHA1",
        hex_len: 40,
        active_in_rfc9530: false,
        s3_header: Some("x-amz-checksum-sha1"),
        example_hex: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Sha256,
        name: "sha-256",
        aliases: &["sha256"],
        legacy_names: &[],
        label: "SHA-256",
        tag: "SHA256",
        hex_len: 64,
        active_in_rfc9530: true,
        s3_header: Some("x-amz-checksum-sha256"),
        example_hex: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Sha512,
        name: "sha-512",
        aliases: &["sha512"],
        legacy_names: &[],
        label: "SHA-512",
        tag: "SHA512",
        hex_len: 128,
        active_in_rfc9530: true,
        s3_header: None,
        example_hex: "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca7\
                      2323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Crc32c,
        name: "crc32c",
        aliases: &[],
        legacy_names: &[],
        label: "CRC32C",
        tag: "CRC32C",
        hex_len: 8,
        active_in_rfc9530: false,
        s3_header: Some("x-amz-checksum-crc32c"),
        example_hex: "9a71bb4c",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Crc64Nvme,
        name: "crc64nvme",
        aliases: &[],
        legacy_names: &[],
        label: "CRC64NVME",
        tag: "CRC64NVME",
        hex_len: 16,
        active_in_rfc9530: false,
        s3_header: Some("x-amz-checksum-crc64nvme"),
        example_hex: "ae8b14860a799888",
    },
    AlgorithmInfo {
        algorithm: Algorithm::Blake3,
        name: "blake3",
        aliases: &["b3"],
        legacy_names: &[],
        label: "BLAKE3",
        tag: "BLAKE3",
        hex_len: 64,
        active_in_rfc9530: false,
        s3_header: None,
        example_hex: "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
    },
];

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

    /// Its row of the [`REGISTRY`].
    pub fn info(self) -> &'static AlgorithmInfo {
        &REGISTRY[self as usize]
    }

    /// The name in the RFC 9530 registry (`md5`, `sha-256`, …), as URLs and headers spell it.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Length of the digest in lowercase hex digits.
    pub fn hex_len(self) -> usize {
        self.info().hex_len
    }

    /// The tag of a BSD-style sum line (`SHA256`).
    pub fn tag(self) -> &'static str {
        self.info().tag
    }

    /// The algorithm named `name` (exactly as [`Algorithm::name`] spells it).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.iter().copied().find(|algorithm| algorithm.name() == name)
    }

    /// The algorithm a command line names: its name or an alias, in any case.
    pub fn from_any_name(name: &str) -> Option<Algorithm> {
        let name = name.to_ascii_lowercase();
        Algorithm::ALL
            .iter()
            .copied()
            .find(|algorithm| algorithm.name() == name || algorithm.info().aliases.contains(&name.as_str()))
    }

    /// The algorithm of a `Repr-Digest` key: its name, or a name the RFC 9530 registry keeps for
    /// old senders.
    pub fn from_repr_digest_key(key: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|algorithm| algorithm.name() == key || algorithm.info().legacy_names.contains(&key))
    }

    /// The algorithm of a BSD-style line's tag (`SHA256`).
    pub fn from_tag(tag: &str) -> Option<Algorithm> {
        Algorithm::ALL.iter().copied().find(|algorithm| algorithm.tag() == tag)
    }

    /// The algorithm of an S3 checksum header (`x-amz-checksum-sha256`), lowercase.
    pub fn from_s3_header(header: &str) -> Option<Algorithm> {
        Algorithm::ALL.iter().copied().find(|algorithm| algorithm.info().s3_header == Some(header))
    }

    /// True when `hex` is a digest of this algorithm: its length, lowercase hex digits.
    pub fn is_digest(self, hex: &str) -> bool {
        hex.len() == self.hex_len() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn each_algorithm_has_its_own_row_with_names_no_other_row_uses() {
        assert_eq!(REGISTRY.len(), Algorithm::ALL.len());
        let mut seen = std::collections::HashSet::new();
        for (index, &algorithm) in Algorithm::ALL.iter().enumerate() {
            let info = algorithm.info();
            assert_eq!(info.algorithm, algorithm, "REGISTRY's row {index} is not {algorithm:?}'s");
            assert_eq!(algorithm as usize, index, "ALL lists {algorithm:?} out of order");
            for name in [info.name].iter().chain(info.aliases).chain(info.legacy_names) {
                assert!(seen.insert(*name), "{name} names two algorithms");
            }
            assert!(
                algorithm.is_digest(info.example_hex),
                "{algorithm:?}'s example is not one of its digests"
            );
            assert!(
                Algorithm::from_any_name(&info.tag.to_ascii_lowercase()).is_some(),
                "{algorithm:?}'s tag is no name"
            );
        }
    }

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
