//! The digest algorithms the service computes, as the command line names them: coreutils'
//! spelling (`sha256`, as in `sha256sum`) or the service's (`sha-256`), and the tag a BSD-style
//! line (`--tag`) carries. Every name comes from the service's registry (`shared::digest`).

pub use shared::Algorithm;

/// MD5, what `hash` prints unless `-a` says otherwise.
pub const MD5: Algorithm = Algorithm::Md5;

/// The algorithm a bare digest of `hex_len` digits is taken for in a sum file, as
/// `sha256sum -c` would (64 digits: SHA-256; BLAKE3 and the CRCs need `-a` or a tag).
pub fn guess(hex_len: usize) -> Option<Algorithm> {
    match hex_len {
        32 => Some(MD5),
        40 | 64 | 128 => Algorithm::ALL.iter().copied().find(|algorithm| algorithm.hex_len() == hex_len),
        _ => None,
    }
}

/// The name the command line shows first: coreutils' where it has one (`sha256`), else the
/// service's.
pub fn command_line_name(algorithm: Algorithm) -> &'static str {
    algorithm.info().aliases.first().copied().unwrap_or(algorithm.name())
}

/// Every algorithm as the command line shows it, comma-separated.
pub fn command_line_names() -> String {
    Algorithm::ALL.iter().map(|&algorithm| command_line_name(algorithm)).collect::<Vec<_>>().join(", ")
}

/// clap's parser for `-a`.
pub fn parse(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_any_name(name)
        .ok_or_else(|| format!("unknown algorithm {name:?}; known: {}", command_line_names()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_tags_name_the_same_algorithm() {
        assert_eq!(parse("sha256").unwrap().name(), "sha-256");
        assert_eq!(parse("SHA-256").unwrap().name(), "sha-256");
        assert_eq!(parse("b3").unwrap().name(), "blake3");
        assert_eq!(Algorithm::from_tag("SHA512").unwrap().name(), "sha-512");
        assert!(
            parse("sha3").unwrap_err().contains("known: md5, sha1, sha256, sha512, crc32c, crc64nvme, b3")
        );
        assert_eq!(guess(64).unwrap().name(), "sha-256");
        assert_eq!(guess(16), None);
        assert!(MD5.is_digest("d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!MD5.is_digest("D41D8CD98F00B204E9800998ECF8427E"));
    }
}
