//! The per-request checksum of an append (tus `Upload-Checksum`): the algorithm and the value the
//! client expects, checked over the request's body before its bytes count.

use base64::Engine as _;
use sha1::Digest as _;

/// An algorithm of tus's checksum extension: `sha1` (which the protocol requires), `md5`, `sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// SHA-1.
    Sha1,
    /// MD5.
    Md5,
    /// SHA-256.
    Sha256,
}

impl ChecksumAlgorithm {
    /// The names, as `Tus-Checksum-Algorithm` lists them.
    pub const NAMES: &'static str = "sha1,md5,sha256";

    fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(ChecksumAlgorithm::Sha1),
            "md5" => Some(ChecksumAlgorithm::Md5),
            "sha256" => Some(ChecksumAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha256 => "sha256",
        }
    }
}

/// What an append's body must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    expected: Vec<u8>,
}

impl Checksum {
    /// Parses `<algorithm> <base64 digest>`; the error says what is wrong.
    pub fn parse(value: &str) -> Result<Checksum, String> {
        let (name, encoded) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| "Upload-Checksum must be \"<algorithm> <base64 digest>\"".to_owned())?;
        let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
            format!("unsupported checksum algorithm {name:?}; supported: {}", ChecksumAlgorithm::NAMES)
        })?;
        let expected = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|err| format!("the Upload-Checksum digest is not base64: {err}"))?;
        let length = match algorithm {
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Md5 => 16,
            ChecksumAlgorithm::Sha256 => 32,
        };
        if expected.len() != length {
            return Err(format!("a {name} digest is {length} bytes; this one is {}", expected.len()));
        }
        Ok(Checksum { algorithm, expected })
    }

    /// A hasher for this checksum.
    pub fn hasher(&self) -> ChunkHasher {
        match self.algorithm {
            ChecksumAlgorithm::Sha1 => ChunkHasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Md5 => ChunkHasher::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Sha256 => ChunkHasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// True when `hasher`, fed the whole body, matches.
    pub fn matches(&self, hasher: ChunkHasher) -> bool {
        let computed: Vec<u8> = match hasher {
            ChunkHasher::Sha1(h) => h.finalize().to_vec(),
            ChunkHasher::Md5(h) => h.finalize().to_vec(),
            ChunkHasher::Sha256(h) => h.finalize().to_vec(),
        };
        computed == self.expected
    }
}

/// The running hash of an append's body.
pub enum ChunkHasher {
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// MD5.
    Md5(md5::Md5),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl ChunkHasher {
    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ChunkHasher::Sha1(h) => h.update(bytes),
            ChunkHasher::Md5(h) => h.update(bytes),
            ChunkHasher::Sha256(h) => h.update(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_and_match_the_reference_digests() {
        // sha1("hello") and md5("hello"), base64.
        let sha1 = Checksum::parse("sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=").unwrap();
        let mut hasher = sha1.hasher();
        hasher.update(b"hel");
        hasher.update(b"lo");
        assert!(sha1.matches(hasher));
        let md5 = Checksum::parse("md5 XUFAKrxLKna5cZ2REBfFkg==").unwrap();
        let mut hasher = md5.hasher();
        hasher.update(b"hellO");
        assert!(!md5.matches(hasher));
        assert!(Checksum::parse("crc32 AAAA").unwrap_err().contains("unsupported"));
        assert!(Checksum::parse("sha1 !!!").unwrap_err().contains("base64"));
        assert!(Checksum::parse("sha256 XUFAKrxLKna5cZ2REBfFkg==").unwrap_err().contains("32 bytes"));
        assert!(Checksum::parse("sha1").is_err());
    }
}
