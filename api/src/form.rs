//! Reading an upload form: the body's type and boundary, each part's `Content-Disposition`
//! (RFC 7578, RFC 6266, RFC 5987) and the client's file name as display data, and what a
//! multipart parse error means for the client.
//!
//! **This module stores nothing and knows nothing about tasks**: it turns request bytes and
//! headers into names and problems.

use axum::http::{HeaderMap, header};

use crate::body::BodyLimit;
use crate::error::ApiError;

/// Slack allowed between `Content-Length` and the file size for multipart boundaries and part headers.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Most bytes the multipart parser may read while it looks for a part: the preamble before the
/// first boundary, a part's headers, and the read-ahead of the chunk that ends them (an HTTP/2
/// client may have a whole 256 KiB stream window queued).
pub const FORM_HEAD_BYTES: u64 = 512 * 1024;
/// Most bytes of one part's headers.
pub const PART_HEADERS_BYTES: usize = 8 * 1024;
/// Longest stored file name, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;

/// A part name the compatibility form skips: 1 to 100 of `A-Z a-z 0-9 _ . -` (the pattern its
/// OpenAPI schema states); anything else is refused.
fn is_plain_part_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What an upload form may hold besides its `file` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Nothing: any other part is a 400 (the v1 API).
    Strict,
    /// Other parts with plain names are skipped (the compatibility routes, as FastAPI did).
    Lenient,
}

impl Parts {
    /// `Ok(true)` for the `file` part, `Ok(false)` for a part this form skips, 400 for any other.
    pub fn is_file_part(self, part: &FormPart) -> Result<bool, ApiError> {
        let name = part.name.as_deref();
        if name == Some("file") {
            return Ok(true);
        }
        if self == Parts::Lenient && name.is_some_and(is_plain_part_name) {
            return Ok(false);
        }
        let name = name.unwrap_or_default().chars().take(100).collect::<String>();
        Err(ApiError::bad_request(format!(
            "unexpected form part {name:?}: the form takes one part, named \"file\""
        )))
    }
}

/// How an upload's body carries its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadBody {
    /// A `multipart/form-data` form with this boundary, the file in its `file` part.
    Form(String),
    /// The body is the file (`application/octet-stream`); its name comes from the request's
    /// `Content-Disposition` header.
    Raw {
        /// The file name, sanitized.
        file_name: String,
    },
}

/// How the body carries the file: a form, or (where `raw` allows it) the bare file; 415 for any
/// other body type.
pub fn upload_body(headers: &HeaderMap, raw: bool) -> Result<UploadBody, ApiError> {
    let refused =
        || if raw { ApiError::unsupported_upload_media_type() } else { ApiError::unsupported_media_type() };
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).ok_or_else(refused)?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if raw && essence.eq_ignore_ascii_case("application/octet-stream") {
        let name = headers
            .get(header::CONTENT_DISPOSITION)
            .and_then(|value| FormPart::parse_disposition(value.as_bytes()).file_name);
        return Ok(UploadBody::Raw { file_name: sanitize_file_name(name.as_deref()) });
    }
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Err(refused());
    }
    multer::parse_boundary(content_type)
        .map(UploadBody::Form)
        .map_err(|_| ApiError::bad_request("the multipart Content-Type has no boundary"))
}

/// What a failed body read means for the client: 408 for a body cut for stalling or trickling,
/// 400 for one cut for tiny chunks or broken off.
pub fn body_error(err: std::io::Error) -> ApiError {
    match BodyLimit::find(&err) {
        Some(cut) => body_limit_error(cut),
        None => ApiError::upload_interrupted(err),
    }
}

fn body_limit_error(cut: &BodyLimit) -> ApiError {
    match cut {
        BodyLimit::FormHeadTooLarge(_) => ApiError::bad_request(format!("malformed multipart body: {cut}")),
        BodyLimit::Fragmented { .. } => ApiError::bad_request(cut.to_string()),
        BodyLimit::Idle(_) | BodyLimit::TooSlow { .. } => ApiError::request_timeout(cut.to_string()),
    }
}

/// The request's `Content-Length`, when it has a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What a multipart parse error means for the client: 413 past the limit, 408 for a body cut
/// for stalling or trickling, 400 for anything malformed or interrupted.
pub fn multipart_error(err: multer::Error, limit: u64) -> ApiError {
    if let Some(cut) = BodyLimit::find(&err) {
        return body_limit_error(cut);
    }
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::payload_too_large(limit)
        }
        multer::Error::StreamReadFailed(cause) => ApiError::upload_interrupted(cause),
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

/// What a part's `Content-Disposition` says, read as RFC 7578 and RFC 6266 ask: parameter names
/// in any case, quoted or bare values, and `filename*=UTF-8''…` (RFC 5987) before `filename`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FormPart {
    /// The `name` parameter.
    pub name: Option<String>,
    /// The file name, decoded.
    pub file_name: Option<String>,
}

impl FormPart {
    /// Parses a part's headers; 400 when they are larger than [`PART_HEADERS_BYTES`].
    pub fn parse(headers: &HeaderMap) -> Result<FormPart, ApiError> {
        let header_bytes: usize =
            headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
        if header_bytes > PART_HEADERS_BYTES {
            return Err(ApiError::bad_request(format!(
                "malformed multipart body: the part's headers exceed {PART_HEADERS_BYTES} bytes"
            )));
        }
        Ok(headers
            .get(header::CONTENT_DISPOSITION)
            .map(|value| FormPart::parse_disposition(value.as_bytes()))
            .unwrap_or_default())
    }

    /// Parses one `Content-Disposition` value.
    pub fn parse_disposition(value: &[u8]) -> FormPart {
        let value = String::from_utf8_lossy(value);
        let mut part = FormPart::default();
        let mut extended_name = None;
        for param in split_params(&value).into_iter().skip(1) {
            let Some((key, raw)) = param.split_once('=') else { continue };
            let key = key.trim().to_ascii_lowercase();
            let raw = raw.trim();
            match key.as_str() {
                "name" => part.name = Some(unquote(raw)),
                "filename" => part.file_name = Some(unquote(raw)),
                "filename*" => extended_name = decode_extended(raw),
                _ => {}
            }
        }
        if extended_name.is_some() {
            part.file_name = extended_name;
        }
        part
    }
}

/// Splits on `;` outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let mut params = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                params.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    params.push(&value[start..]);
    params
}

fn unquote(raw: &str) -> String {
    match raw.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"').unwrap_or(inner);
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    out.extend(chars.next());
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => raw.to_owned(),
    }
}

/// `charset'language'percent-encoded` (RFC 5987); UTF-8 and ISO-8859-1, as the RFC requires.
fn decode_extended(raw: &str) -> Option<String> {
    let mut pieces = raw.splitn(3, '\'');
    let charset = pieces.next()?.trim();
    let _language = pieces.next()?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(pieces.next()?).collect();
    if charset.eq_ignore_ascii_case("utf-8") {
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

/// Characters that change how a name displays without being visible themselves: bidirectional
/// overrides and isolates (which can make `invoice\u{202E}fdp.exe` read as `invoiceexe.pdf`),
/// zero-width characters, the byte-order mark and the Unicode line and paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}')
}

/// The client's file name as display data: last path component, no control or invisible
/// formatting characters, at most 255 characters; `upload` when nothing is left.
pub fn sanitize_file_name(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String =
        last.chars().filter(|&c| !c.is_control() && !is_invisible(c)).take(MAX_FILE_NAME_CHARS).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload".to_owned()
    } else {
        cleaned.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_carry_a_path() {
        assert_eq!(sanitize_file_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(sanitize_file_name(Some("C:\\Users\\me\\report.pdf")), "report.pdf");
        assert_eq!(sanitize_file_name(Some("a\nb\u{0}c.txt")), "abc.txt");
        assert_eq!(sanitize_file_name(Some("..")), "upload");
        assert_eq!(sanitize_file_name(None), "upload");
        assert_eq!(sanitize_file_name(Some(&"x".repeat(1000))).len(), 255);
    }

    #[test]
    fn file_names_lose_invisible_and_bidirectional_characters() {
        assert_eq!(sanitize_file_name(Some("invoice\u{202E}fdp.exe")), "invoicefdp.exe");
        assert_eq!(
            sanitize_file_name(Some("a\u{200B}b\u{200C}c\u{200D}d\u{FEFF}e\u{2028}f\u{2029}g.txt")),
            "abcdefg.txt"
        );
        assert_eq!(sanitize_file_name(Some("\u{2066}x\u{2069}.pdf")), "x.pdf");
        assert_eq!(sanitize_file_name(Some("résumé 你好.pdf")), "résumé 你好.pdf");
    }

    #[test]
    fn content_disposition_parameters_are_case_insensitive_and_filename_star_wins() {
        let part = FormPart::parse_disposition(b"form-data; NAME=\"file\"; FileName=\"a;b.txt\"");
        assert_eq!(part, FormPart { name: Some("file".into()), file_name: Some("a;b.txt".into()) });
        let part = FormPart::parse_disposition(
            b"form-data; name=\"file\"; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt",
        );
        assert_eq!(part.file_name.as_deref(), Some("\u{20AC} rates.txt"));
        let part = FormPart::parse_disposition(b"form-data; name=file; filename*=iso-8859-1'en'caf%E9.txt");
        assert_eq!(part.file_name.as_deref(), Some("caf\u{e9}.txt"));
        let part = FormPart::parse_disposition(b"form-data; name=\"fi\\\"le\"");
        assert_eq!(part.name.as_deref(), Some("fi\"le"));
        assert_eq!(FormPart::parse_disposition(b"form-data; filename=x").name, None);
    }
}
