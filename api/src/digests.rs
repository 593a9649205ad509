//! Digests in HTTP terms: which algorithms an upload asks for (`?digests=`, else `DIGESTS`), the
//! digests its client expects (`Repr-Digest`, `Content-MD5`, `x-amz-checksum-*`), and the
//! `File-Digest` field of a done task's answer.
//!
//! Everything here is read before a byte of the body is stored: a malformed or unknown value
//! is a 400 and nothing is left behind. The worker compares the expected digests with the
//! computed ones (`worker/src/job.rs`).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::Deserialize;

use shared::{Algorithm, DigestRequest, Digests};

use crate::error::ApiError;

/// Standard base64 as clients write it: padding required, unused trailing bits not checked (a
/// client that sets them still means the same bytes).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The query every upload route takes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DigestsQuery {
    /// Digests to compute besides MD5 (always computed), comma-separated names (the pattern lists
    /// them). Default: the server's DIGESTS.
    #[param(schema_with = list_schema)]
    pub digests: Option<String>,
}

/// The request headers that carry expected digests (documentation only: [`expected`] reads
/// them; each is optional, and never `null`), built from the registry: `Repr-Digest`,
/// `Content-MD5` and S3's header of each algorithm that has one.
/// Each pattern is the value's exact form (base64 of the digest's bytes); OpenAPI cannot say
/// that two headers naming the same algorithm must agree, so `Repr-Digest`'s pattern lists only
/// the algorithms no other header carries, and its description the rest.
pub struct ExpectedDigests;

impl utoipa::IntoParams for ExpectedDigests {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        let base64 =
            |algorithm: Algorithm| STANDARD.encode(hex::decode(algorithm.info().example_hex).expect("hex"));
        // `[A-Za-z0-9+/]{n}` and the padding of the base64 of `algorithm`'s digest.
        let base64_form = |algorithm: Algorithm| {
            let bytes = algorithm.hex_len() / 2;
            let padding = (3 - bytes % 3) % 3;
            format!("[A-Za-z0-9+/]{{{}}}{}", bytes.div_ceil(3) * 4 - padding, "=".repeat(padding))
        };
        let header_of =
            |algorithm: Algorithm| algorithm == Algorithm::Md5 || algorithm.info().s3_header.is_some();
        let only_repr: Vec<Algorithm> = Algorithm::ALL.iter().copied().filter(|&a| !header_of(a)).collect();
        let member = |algorithm: Algorithm| format!("{}=:{}:", algorithm.name(), base64_form(algorithm));
        // Each ordered, non-empty selection of `only_repr`, one member after another.
        let alternatives: Vec<String> = (0..only_repr.len())
            .map(|first| {
                let rest: String = only_repr[first + 1..]
                    .iter()
                    .map(|&algorithm| format!("(, {})?", member(algorithm)))
                    .collect();
                format!("{}{rest}", member(only_repr[first]))
            })
            .collect();
        let also: Vec<String> = Algorithm::ALL
            .iter()
            .filter(|&&algorithm| header_of(algorithm))
            .map(|&algorithm| {
                let info = algorithm.info();
                let names: Vec<String> =
                    info.legacy_names.iter().chain([&info.name]).map(|name| format!("`{name}`")).collect();
                match names.len() {
                    1 => names[0].clone(),
                    _ => format!("{} ({})", names.join(" or "), info.label),
                }
            })
            .collect();
        let repr_example: Vec<String> =
            only_repr.iter().take(1).map(|&a| format!("{}=:{}:", a.name(), base64(a))).collect();
        let mut params = vec![
            header(
                "Repr-Digest",
                format!(
                    "RFC 9530: the file's digests as a dictionary, {}; also {}. The task fails on a mismatch; an \
                     algorithm given twice with two values (here or in another header) is a 400.",
                    only_repr
                        .iter()
                        .map(|a| format!("`{}=:<base64>:`", a.name()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    also.join(", ")
                ),
                format!("^({})$", alternatives.join("|")),
                repr_example.concat(),
            ),
            header(
                "Content-MD5",
                "RFC 1864: the file's MD5, base64 (of the file, also in a multipart form).".to_owned(),
                format!("^{}$", base64_form(Algorithm::Md5)),
                base64(Algorithm::Md5),
            ),
        ];
        for &algorithm in Algorithm::ALL {
            let Some(name) = algorithm.info().s3_header else { continue };
            params.push(header(
                name,
                format!(
                    "S3: the file's {}, base64 of its {} bytes, as S3 sends it.",
                    algorithm.info().label,
                    algorithm.hex_len() / 2
                ),
                format!("^{}$", base64_form(algorithm)),
                base64(algorithm),
            ));
        }
        params
    }
}

/// An optional request header of a string matching `pattern`.
fn header(
    name: &str,
    description: String,
    pattern: String,
    example: String,
) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(description))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(pattern)),
        ))
        .example(Some(serde_json::Value::String(example)))
        .build()
}

/// The schema of `?digests=`: a comma-separated list of [`Algorithm::ALL`]'s names.
fn list_schema() -> utoipa::openapi::Object {
    let names: Vec<&str> = Algorithm::ALL.iter().map(|algorithm| algorithm.name()).collect();
    let one = format!("({})", names.join("|"));
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(format!("^({one}(,{one})*)?$")))
        .build()
}

/// An algorithm's name in a path, for OpenAPI: one of [`Algorithm::ALL`]'s.
pub struct AlgorithmName;

impl utoipa::PartialSchema for AlgorithmName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Algorithm::ALL.iter().map(|algorithm| algorithm.name())))
            .into()
    }
}

impl utoipa::ToSchema for AlgorithmName {}

/// What an upload asks of its digests: `query`'s choice (or `defaults`) and the expected
/// digests of `headers`.
pub fn requested(
    query: &DigestsQuery,
    defaults: &[Algorithm],
    headers: &HeaderMap,
) -> Result<DigestRequest, ApiError> {
    let algorithms = match &query.digests {
        Some(list) => shared::digest::parse_list(list)
            .map_err(|err| ApiError::bad_request(format!("digests: {err}")))?,
        None => defaults.to_vec(),
    };
    Ok(DigestRequest { algorithms, expected: expected(headers)? })
}

/// The digests the client expects, from `Repr-Digest` (RFC 9530), `Content-MD5` (RFC 1864) and
/// S3's `x-amz-checksum-*` (the registry's `s3_header`s), each as lowercase hex. They describe
/// the whole file, whatever the upload protocol (a tus `Upload-Checksum` is per request).
pub fn expected(headers: &HeaderMap) -> Result<BTreeMap<Algorithm, String>, ApiError> {
    let mut expected = BTreeMap::new();
    let mut add = |algorithm: Algorithm, bytes: Vec<u8>, source: &str| -> Result<(), ApiError> {
        if bytes.len() * 2 != algorithm.hex_len() {
            return Err(ApiError::bad_request(format!(
                "{source}: a {algorithm} digest is {} bytes, this one {}",
                algorithm.hex_len() / 2,
                bytes.len()
            )));
        }
        let hex = hex::encode(bytes);
        match expected.insert(algorithm, hex.clone()) {
            Some(earlier) if earlier != hex => Err(ApiError::bad_request(format!(
                "two different expected {algorithm} digests: {earlier} and {hex}"
            ))),
            _ => Ok(()),
        }
    };
    for value in headers.get_all("repr-digest") {
        for (algorithm, bytes) in parse_repr_digest(value)? {
            add(algorithm, bytes, "Repr-Digest")?;
        }
    }
    if let Some(value) = single(headers, "content-md5")? {
        add(Algorithm::Md5, base64_value(value, "Content-MD5")?, "Content-MD5")?;
    }
    for (name, value) in headers {
        if !name.as_str().starts_with("x-amz-checksum-") {
            continue;
        }
        let algorithm = match Algorithm::from_s3_header(name.as_str()) {
            Some(algorithm) => algorithm,
            // Which checksum to use and how it was made: the value headers say it all.
            None if matches!(name.as_str(), "x-amz-checksum-algorithm" | "x-amz-checksum-type") => continue,
            None => {
                let known: Vec<&str> = Algorithm::ALL.iter().filter_map(|a| a.info().s3_header).collect();
                return Err(ApiError::bad_request(format!(
                    "{name} is not checked here; send one of {}",
                    known.join(", ")
                )));
            }
        };
        add(algorithm, base64_value(value, name.as_str())?, name.as_str())?;
    }
    Ok(expected)
}

/// The one value of header `name`, if any; two are a 400.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!("{name} may be sent once")));
    }
    Ok(first)
}

/// A header's value as standard base64 (with padding).
fn base64_value(value: &HeaderValue, source: &str) -> Result<Vec<u8>, ApiError> {
    let text = value.to_str().map_err(|_| ApiError::bad_request(format!("{source}: not ASCII")))?;
    LENIENT
        .decode(text.trim())
        .map_err(|_| ApiError::bad_request(format!("{source}: {text:?} is not base64")))
}

/// The members of a `Repr-Digest` dictionary: `algorithm=:base64:`, comma-separated, each
/// optionally with parameters (ignored). The registry's `sha` is SHA-1.
fn parse_repr_digest(value: &HeaderValue) -> Result<Vec<(Algorithm, Vec<u8>)>, ApiError> {
    let malformed = |why: &str| {
        ApiError::bad_request(format!(
            "Repr-Digest: {why}; expected `<algorithm>=:<base64>:`, comma-separated (RFC 9530)"
        ))
    };
    let text = value.to_str().map_err(|_| malformed("not ASCII"))?;
    let mut members = Vec::new();
    for member in text.split(',').map(str::trim) {
        let member = member.split(';').next().unwrap_or_default();
        let (key, bytes) = member.split_once('=').ok_or_else(|| malformed("a member has no value"))?;
        let key = key.trim();
        let encoded = bytes
            .trim()
            .strip_prefix(':')
            .and_then(|rest| rest.strip_suffix(':'))
            .ok_or_else(|| malformed("a value is not a byte sequence (`:…:`)"))?;
        let algorithm = Algorithm::from_repr_digest_key(key).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Repr-Digest: {key:?} is not checked here; known: {}",
                Algorithm::names()
            ))
        })?;
        let bytes = LENIENT.decode(encoded).map_err(|_| malformed("a value is not base64"))?;
        members.push((algorithm, bytes));
    }
    Ok(members)
}

/// The `File-Digest` field of a done task's answer: its digests under the algorithms RFC 9530
/// lists as active (the registry's `active_in_rfc9530`), in `Repr-Digest` syntax. Named apart from
/// `Repr-Digest` because they are the digests of the uploaded file, not of the JSON answer that
/// carries them; `None` when the task has neither.
pub fn file_digest_header(digests: &Digests) -> Option<HeaderValue> {
    let members: Vec<String> = Algorithm::ALL
        .iter()
        .filter(|algorithm| algorithm.info().active_in_rfc9530)
        .filter_map(|&algorithm| {
            let bytes = hex::decode(digests.get(algorithm)?).ok()?;
            Some(format!("{algorithm}=:{}:", STANDARD.encode(bytes)))
        })
        .collect();
    (!members.is_empty())
        .then(|| HeaderValue::from_str(&members.join(", ")).expect("base64 is a valid value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    // SHA-256, MD5, SHA-1, CRC-32C and CRC-64/NVME of "hello".
    const SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const MD5: &str = "5d41402abc4b2a76b9719d911017c592";

    #[test]
    fn every_header_form_gives_hex() {
        let got = expected(&headers(&[
            ("repr-digest", "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:;q=1, sha=:qvTGHdzF6KLavt4PO0gs2a6pQ00=:"),
            ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
            ("x-amz-checksum-crc32c", "mnG7TA=="),
        ]))
        .unwrap();
        assert_eq!(got[&Algorithm::Sha256], SHA256);
        assert_eq!(got[&Algorithm::Md5], MD5);
        assert_eq!(got[&Algorithm::Sha1], "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(got[&Algorithm::Crc32c], "9a71bb4c");
        assert_eq!(expected(&HeaderMap::new()).unwrap(), BTreeMap::new());
        // Unused trailing bits set ('R' instead of 'Q' before the padding): the same bytes.
        let lenient = expected(&headers(&[("x-amz-checksum-crc32c", "mnG7TB==")])).unwrap();
        assert_eq!(lenient[&Algorithm::Crc32c], "9a71bb4c");
    }

    #[test]
    fn malformed_unknown_or_contradictory_values_are_refused_with_the_reason() {
        for (pairs, says) in [
            (vec![("repr-digest", "sha-256=LPJN")], "byte sequence"),
            (vec![("repr-digest", "sha-256")], "no value"),
            (vec![("repr-digest", "sha-384=:AAAA:")], "\"sha-384\" is not checked here"),
            (vec![("repr-digest", "sha-256=:!!!!:")], "not base64"),
            (vec![("repr-digest", "sha-256=:AAAA:")], "32 bytes, this one 3"),
            (
                vec![
                    ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
                    ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
                ],
                "once",
            ),
            (vec![("x-amz-checksum-crc32", "mnG7TA==")], "x-amz-checksum-crc32 is not checked"),
            (
                vec![
                    ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
                    ("repr-digest", "md5=:AAAAAAAAAAAAAAAAAAAAAA==:"),
                ],
                "two different expected md5",
            ),
        ] {
            let err = expected(&headers(&pairs)).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{pairs:?}");
            assert!(err.detail().contains(says), "{pairs:?}: {}", err.detail());
        }
    }

    #[test]
    fn a_choice_replaces_the_default_and_an_unknown_name_lists_the_known() {
        let defaults = [Algorithm::Sha1];
        let none = DigestsQuery::default();
        assert_eq!(requested(&none, &defaults, &HeaderMap::new()).unwrap().algorithms, defaults);
        let chosen = DigestsQuery { digests: Some("crc64nvme,sha-256".into()) };
        assert_eq!(
            requested(&chosen, &defaults, &HeaderMap::new()).unwrap().algorithms,
            [Algorithm::Sha256, Algorithm::Crc64Nvme]
        );
        let unknown = DigestsQuery { digests: Some("sha256".into()) };
        let err = requested(&unknown, &defaults, &HeaderMap::new()).unwrap_err();
        assert!(err.detail().contains("known: md5, sha-1, sha-256"), "{}", err.detail());
    }

    #[test]
    fn the_answer_field_has_the_active_algorithms_only() {
        let mut digests = Digests::md5_only(MD5.parse().unwrap());
        assert_eq!(file_digest_header(&digests), None);
        digests.others.insert(Algorithm::Sha256, SHA256.into());
        digests.others.insert(Algorithm::Crc32c, "9a71bb4c".into());
        assert_eq!(
            file_digest_header(&digests).unwrap(),
            "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:"
        );
    }

    #[test]
    fn the_documented_names_are_the_algorithms_own() {
        let doc = serde_json::to_value(crate::routes::api_document()).unwrap();
        let names: Vec<&str> = Algorithm::ALL.iter().map(|algorithm| algorithm.name()).collect();
        let lookup = &doc["paths"]["/api/v1/digests/{algorithm}/{hex}"]["get"]["parameters"][0];
        assert_eq!(lookup["schema"]["enum"], serde_json::json!(names), "{lookup}");
        for path in ["/api/v1/hashes", "/api/v1/uploads"] {
            let parameters = doc["paths"][path]["post"]["parameters"].as_array().unwrap();
            let digests = parameters.iter().find(|p| p["name"] == "digests").unwrap();
            assert_eq!(digests["required"], false);
            let pattern = digests["schema"]["pattern"].as_str().unwrap();
            assert!(pattern.contains(&names.join("|")), "{pattern}");
        }
    }
}
