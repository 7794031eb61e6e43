//! Hand-written JSON for the bodies built for every challenge: the push payloads and the
//! outcome. Keys and punctuation are the caller's literals, written as they are; string
//! values are escaped exactly as `serde_json` escapes them, so a body is byte for byte
//! what serializing the same fields with serde would give, without serde's per-field
//! work (every key escaped anew, every value through a serializer call). Anything
//! nested and rare (a request context) is written by serde into the same buffer.

use serde::Serialize;

/// A JSON document being written.
pub struct Json(Vec<u8>);

/// Whether `b` must be escaped inside a JSON string (serde_json escapes these only:
/// control characters, the quote and the backslash).
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

impl Json {
    /// An empty document whose buffer holds `capacity` bytes before it grows.
    pub fn with_capacity(capacity: usize) -> Json {
        Json(Vec::with_capacity(capacity))
    }

    /// Appends `literal` as it is: keys, punctuation and constant values of the
    /// caller's, valid JSON by construction.
    pub fn raw(&mut self, literal: &'static str) -> &mut Json {
        self.0.extend_from_slice(literal.as_bytes());
        self
    }

    /// Appends `s` as a JSON string, quoted and escaped.
    pub fn str(&mut self, s: &str) -> &mut Json {
        let bytes = s.as_bytes();
        self.0.reserve(bytes.len() + 2);
        self.0.push(b'"');
        // Whole chunks are tested without an early exit, which the compiler vectorizes;
        // most values (ids, tokens, kinds, times) need no escape at all.
        let clean = bytes
            .chunks(16)
            .all(|c| !c.iter().fold(false, |any, &b| any | needs_escape(b)));
        if clean {
            self.0.extend_from_slice(bytes);
        } else {
            self.escaped(bytes);
        }
        self.0.push(b'"');
        self
    }

    /// Appends `s` as a JSON string, or `null`.
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Json {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    /// Appends an integer.
    pub fn int(&mut self, n: i64) -> &mut Json {
        self.0
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// Appends `v` as serde serializes it (for nested values that are rare on the path).
    pub fn serde<T: Serialize + ?Sized>(&mut self, v: &T) -> &mut Json {
        // Serializing the daemon's own typed values into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, v);
        self
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The slow path of [`Json::str`]: `bytes` with what must be escaped, escaped.
    fn escaped(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !needs_escape(b) {
                continue;
            }
            self.0.extend_from_slice(&bytes[start..i]);
            match b {
                b'"' => self.0.extend_from_slice(b"\\\""),
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                b'\x08' => self.0.extend_from_slice(b"\\b"),
                b'\t' => self.0.extend_from_slice(b"\\t"),
                b'\n' => self.0.extend_from_slice(b"\\n"),
                b'\x0c' => self.0.extend_from_slice(b"\\f"),
                b'\r' => self.0.extend_from_slice(b"\\r"),
                _ => self.0.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]),
            }
            start = i + 1;
        }
        self.0.extend_from_slice(&bytes[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_str(s: &str) -> String {
        let mut j = Json::with_capacity(0);
        j.str(s);
        String::from_utf8(j.into_vec()).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.extend(
            [
                "",
                "plain",
                "Payment of €125.40 to Mario Rossi",
                "quote \" backslash \\ slash / tab \t newline \n nul \0 del \x7f",
                "\u{2028}\u{2029} emoji 🙂 and ünïcödé",
                "a long value with an escape at the very end, past the first chunks\n",
                "\"at the start, then sixteen and more bytes of clean text",
            ]
            .map(String::from),
        );
        for s in cases {
            assert_eq!(as_str(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn every_byte_position_of_an_escape_is_found() {
        for len in 0..40 {
            for at in 0..len {
                let mut s = "x".repeat(len);
                s.replace_range(at..at + 1, "\u{1}");
                assert_eq!(as_str(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    /// The hand-written bodies write these enums by name: the names are serde's.
    #[test]
    fn enum_names_are_what_serde_writes() {
        use crate::challenge::model::{Channel, Kind, OutcomeKind};
        let serde = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for k in Kind::ALL {
            assert_eq!(k.as_str(), serde(serde_json::to_value(k).unwrap()));
        }
        for o in OutcomeKind::ALL {
            assert_eq!(o.as_str(), serde(serde_json::to_value(o).unwrap()));
        }
        for c in [Channel::Push, Channel::Sms, Channel::Offline] {
            assert_eq!(c.as_str(), serde(serde_json::to_value(c).unwrap()));
        }
    }

    #[test]
    fn a_document_is_the_parts_in_order() {
        let mut j = Json::with_capacity(8);
        j.raw("{\"a\":")
            .int(-42)
            .raw(",\"b\":")
            .opt_str(None)
            .raw(",\"c\":")
            .opt_str(Some("x\"y"))
            .raw(",\"d\":")
            .serde(&[1, 2, 3])
            .raw(",\"e\":")
            .int(i64::MIN)
            .raw("}");
        assert_eq!(
            String::from_utf8(j.into_vec()).unwrap(),
            format!(
                r#"{{"a":-42,"b":null,"c":"x\"y","d":[1,2,3],"e":{}}}"#,
                i64::MIN
            )
        );
    }
}
