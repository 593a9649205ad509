//! Request headers both resumable protocols read: numbers, structured-field booleans, tus
//! `Upload-Metadata`, whether a body follows, and HTTP dates.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::form::{FormPart, sanitize_file_name};

/// Longest `Upload-Metadata` kept, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A non-negative integer header (`Upload-Offset`, `Upload-Length`); 400 when malformed.
pub fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!("{name} must be a non-negative integer")));
    }
    text.parse().map(Some).map_err(|_| ApiError::bad_request(format!("{name} is out of range")))
}

/// A structured-field boolean header (`?1` or `?0`, RFC 8941); 400 when malformed.
pub fn boolean(headers: &HeaderMap, name: &str) -> Result<Option<bool>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    match value.to_str().unwrap_or("").trim() {
        "?1" => Ok(Some(true)),
        "?0" => Ok(Some(false)),
        _ => Err(ApiError::bad_request(format!("{name} must be ?1 or ?0 (a structured-field boolean)"))),
    }
}

/// The structured-field spelling of `value`.
pub fn sf_boolean(value: bool) -> HeaderValue {
    HeaderValue::from_static(if value { "?1" } else { "?0" })
}

/// True when the request has a body to read (a non-zero `Content-Length`, or chunked).
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// The body's media type, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// tus `Upload-Metadata` (`key base64value,key2,…`), checked; returns it as sent and the file
/// name it gives (`filename`, else `name`), or the `Content-Disposition` header's.
pub fn metadata(headers: &HeaderMap) -> Result<(Option<String>, String), ApiError> {
    let disposition = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|value| FormPart::parse_disposition(value.as_bytes()).file_name);
    let Some(value) = headers.get("upload-metadata") else {
        return Ok((None, sanitize_file_name(disposition.as_deref())));
    };
    let raw = value.to_str().map_err(|_| ApiError::bad_request("Upload-Metadata must be ASCII"))?;
    if raw.len() > MAX_METADATA_BYTES {
        return Err(ApiError::bad_request(format!(
            "Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let mut file_name = None;
    let mut name = None;
    for pair in raw.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::bad_request("Upload-Metadata keys must be non-empty ASCII without spaces"));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| ApiError::bad_request(format!("Upload-Metadata value of {key:?} is not base64")))?;
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        match key {
            "filename" => file_name = Some(decoded),
            "name" => name = Some(decoded),
            _ => {}
        }
    }
    let chosen = file_name.or(name).or(disposition);
    Ok((Some(raw.to_owned()), sanitize_file_name(chosen.as_deref())))
}

/// An HTTP date (RFC 9110), as `Upload-Expires` wants it.
pub fn http_date(at: DateTime<Utc>) -> HeaderValue {
    let system = std::time::SystemTime::from(at);
    HeaderValue::from_str(&httpdate::fmt_http_date(system)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn metadata_gives_the_file_name_and_refuses_what_is_malformed() {
        // "report.pdf", "application/pdf"
        let (raw, name) = metadata(&headers(&[(
            "upload-metadata",
            "filename cmVwb3J0LnBkZg==,filetype YXBwbGljYXRpb24vcGRm,is_confidential",
        )]))
        .unwrap();
        assert_eq!(name, "report.pdf");
        assert!(raw.unwrap().starts_with("filename "));
        let (_, name) = metadata(&headers(&[("upload-metadata", "name Li4vZXRjL3Bhc3N3ZA==")])).unwrap();
        assert_eq!(name, "passwd", "a path in the name is dropped");
        let (raw, name) =
            metadata(&headers(&[("content-disposition", "attachment; filename=\"a.txt\"")])).unwrap();
        assert_eq!((raw, name.as_str()), (None, "a.txt"));
        assert!(metadata(&headers(&[("upload-metadata", "filename !!notbase64")])).is_err());
        assert!(metadata(&headers(&[("upload-metadata", &"k dg==,".repeat(1000))])).is_err());
    }

    #[test]
    fn numbers_and_booleans_are_strict() {
        assert_eq!(number(&headers(&[("upload-offset", "42")]), "upload-offset").unwrap(), Some(42));
        assert_eq!(number(&HeaderMap::new(), "upload-offset").unwrap(), None);
        for bad in ["-1", "1e3", "", " 4 2", "99999999999999999999999"] {
            assert!(number(&headers(&[("upload-offset", bad)]), "upload-offset").is_err(), "{bad:?}");
        }
        assert_eq!(boolean(&headers(&[("upload-complete", "?1")]), "upload-complete").unwrap(), Some(true));
        assert!(boolean(&headers(&[("upload-complete", "true")]), "upload-complete").is_err());
    }
}
