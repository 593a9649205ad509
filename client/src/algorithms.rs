//! The digest algorithms the service computes, as the command line names them: coreutils'
//! spelling (`sha256`, as in `sha256sum`) or the service's (`sha-256`), and the tag a BSD-style
//! line (`--tag`) carries.

/// One algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Algorithm {
    /// The service's name (RFC 9530 registry spelling): `?digests=`, `Repr-Digest`, answers.
    pub name: &'static str,
    /// The tag of a BSD-style line: `SHA256 (path) = …`.
    pub tag: &'static str,
    /// The digest's length in hex digits.
    pub hex_len: usize,
    /// Other names the command line takes.
    aliases: &'static [&'static str],
}

/// MD5, what `hash` prints unless `-a` says otherwise.
pub const MD5: Algorithm = Algorithm { name: "md5", tag: "MD5", hex_len: 32, aliases: &[] };

/// Every algorithm, in the order the service lists them.
pub const ALL: [Algorithm; 7] = [
    MD5,
    Algorithm { name: "sha-1", tag: "SHA1", hex_len: 40, aliases: &["sha1"] },
    Algorithm { name: "sha-256", tag: "SHA256", hex_len: 64, aliases: &["sha256"] },
    Algorithm { name: "sha-512", tag: "SHA512", hex_len: 128, aliases: &["sha512"] },
    Algorithm { name: "crc32c", tag: "CRC32C", hex_len: 8, aliases: &[] },
    Algorithm { name: "crc64nvme", tag: "CRC64NVME", hex_len: 16, aliases: &[] },
    Algorithm { name: "blake3", tag: "BLAKE3", hex_len: 64, aliases: &["b3"] },
];

impl Algorithm {
    /// The algorithm `name` names (either spelling, any case).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let name = name.to_ascii_lowercase();
        ALL.into_iter().find(|algorithm| algorithm.name == name || algorithm.aliases.contains(&name.as_str()))
    }

    /// The algorithm of a BSD-style line's tag (`SHA256`).
    pub fn from_tag(tag: &str) -> Option<Algorithm> {
        ALL.into_iter().find(|algorithm| algorithm.tag == tag)
    }

    /// The algorithm a bare digest of `hex_len` digits is taken for in a sum file, as
    /// `sha256sum -c` would (64 digits: SHA-256; BLAKE3 and the CRCs need `-a` or a tag).
    pub fn guess(hex_len: usize) -> Option<Algorithm> {
        match hex_len {
            32 => Some(MD5),
            40 | 64 | 128 => ALL.into_iter().find(|algorithm| algorithm.hex_len == hex_len),
            _ => None,
        }
    }

    /// True when `hex` is a digest of this algorithm: its length, lowercase hex digits.
    pub fn is_digest(self, hex: &str) -> bool {
        hex.len() == self.hex_len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

/// clap's parser for `-a`.
pub fn parse(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name).ok_or_else(|| {
        format!(
            "unknown algorithm {name:?}; known: {}",
            ALL.iter()
                .map(|algorithm| algorithm.aliases.first().unwrap_or(&algorithm.name))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_tags_name_the_same_algorithm() {
        assert_eq!(parse("sha256").unwrap().name, "sha-256");
        assert_eq!(parse("SHA-256").unwrap().name, "sha-256");
        assert_eq!(parse("b3").unwrap().name, "blake3");
        assert_eq!(Algorithm::from_tag("SHA512").unwrap().name, "sha-512");
        assert!(
            parse("sha3").unwrap_err().contains("known: md5, sha1, sha256, sha512, crc32c, crc64nvme, b3")
        );
        assert_eq!(Algorithm::guess(64).unwrap().name, "sha-256");
        assert_eq!(Algorithm::guess(16), None);
        assert!(MD5.is_digest("d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!MD5.is_digest("D41D8CD98F00B204E9800998ECF8427E"));
    }
}
