//! `Md5Hex`: an MD5 as the service writes it everywhere (rows, log lines, answers): 32 lowercase
//! hex digits. Made only from a digest or by checking text, so an error message, an uppercase
//! or a truncated digest cannot pass for a result.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An MD5 digest as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "service", derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow))]
#[cfg_attr(feature = "service", diesel(sql_type = diesel::sql_types::Text))]
#[serde(try_from = "String", into = "String")]
pub struct Md5Hex(String);

impl Md5Hex {
    /// The hex form of a digest.
    pub fn from_digest(digest: [u8; 16]) -> Self {
        Md5Hex(hex::encode(digest))
    }

    /// The 32 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Text that is not 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an MD5 (32 lowercase hex digits): {0:?}")]
pub struct NotMd5Hex(String);

impl FromStr for Md5Hex {
    type Err = NotMd5Hex;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Md5Hex::try_from(text.to_owned())
    }
}

impl TryFrom<String> for Md5Hex {
    type Error = NotMd5Hex;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let valid = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid { Ok(Md5Hex(text)) } else { Err(NotMd5Hex(text.chars().take(64).collect())) }
    }
}

impl From<Md5Hex> for String {
    fn from(md5: Md5Hex) -> Self {
        md5.0
    }
}

impl fmt::Display for Md5Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A column of `text`, checked when read.
#[cfg(feature = "service")]
mod column {
    use std::io::Write as _;

    use diesel::deserialize::{self, FromSql};
    use diesel::pg::{Pg, PgValue};
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use diesel::sql_types::Text;

    use super::Md5Hex;

    impl ToSql<Text, Pg> for Md5Hex {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
            out.write_all(self.0.as_bytes())?;
            Ok(IsNull::No)
        }
    }

    impl FromSql<Text, Pg> for Md5Hex {
        fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
            let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
            Ok(text.parse()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_32_lowercase_hex_digits_are_an_md5() {
        let empty = Md5Hex::from_digest([
            0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e,
        ]);
        assert_eq!(empty.as_str(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!("d41d8cd98f00b204e9800998ecf8427e".parse::<Md5Hex>().unwrap(), empty);
        for bad in
            ["D41D8CD98F00B204E9800998ECF8427E", "d41d8cd98f00b204e9800998ecf8427", "", "the file is missing"]
        {
            assert!(bad.parse::<Md5Hex>().is_err(), "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&empty).unwrap(), "\"d41d8cd98f00b204e9800998ecf8427e\"");
        assert!(serde_json::from_str::<Md5Hex>("\"not an md5\"").is_err());
    }
}
