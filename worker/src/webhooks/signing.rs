//! Standard Webhooks 1.0 signing: `webhook-signature` is `v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">`, one per secret, space-separated.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// A signing secret, `whsec_<base64 key>`; never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_…")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (a key of 24 to 64 bytes, as the spec recommends).
    pub fn parse(raw: &str) -> Result<WebhookSecret, String> {
        let encoded = raw
            .trim()
            .strip_prefix("whsec_")
            .ok_or_else(|| "a webhook secret starts with whsec_ followed by base64".to_owned())?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|err| format!("the webhook secret after whsec_ is not base64: {err}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("a webhook secret's key is 24 to 64 bytes; this one is {}", key.len()));
        }
        Ok(WebhookSecret(key))
    }
}

/// The `webhook-signature` value for a message under every secret.
pub fn signature(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes a key of any length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and its reference libraries' tests).
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(std::slice::from_ref(&secret), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let other = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        let both = signature(&[secret, other], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert!(both.starts_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,"), "{both}");
        assert_eq!(
            format!("{:?}", WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()),
            "whsec_…"
        );
    }

    #[test]
    fn malformed_secrets_are_refused_with_the_reason() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(WebhookSecret::parse("whsec_***").unwrap_err().contains("base64"));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err().contains("24 to 64"));
    }
}
