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

    /// Appends `unix_ms` as an RFC 3339 UTC time string, as chrono writes it
    /// (`SecondsFormat::Millis`, or `AutoSi` for [`Millis::IfAny`]), through `fallback`
    /// for a time outside the years 0000–9999.
    pub fn time(&mut self, unix_ms: i64, millis: Millis, fallback: fn(i64) -> String) -> &mut Json {
        self.0.push(b'"');
        if !rfc3339_into(&mut self.0, unix_ms, millis) {
            self.0.extend_from_slice(fallback(unix_ms).as_bytes());
        }
        self.0.push(b'"');
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

/// How a time's fraction of a second is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Millis {
    /// Always three digits (`…:00.000Z`).
    Always,
    /// Three digits when they are not all zero (`…:00Z`, `…:00.113Z`).
    IfAny,
}

/// Appends `unix_ms` as `YYYY-MM-DDTHH:MM:SS[.mmm]Z`; false (nothing written) outside
/// the years 0000–9999. The date is the proleptic Gregorian calendar's, from the days
/// since the epoch (H. Hinnant's `civil_from_days`).
fn rfc3339_into(out: &mut Vec<u8>, unix_ms: i64, millis: Millis) -> bool {
    let (secs, ms) = (unix_ms.div_euclid(1000), unix_ms.rem_euclid(1000));
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return false;
    }
    // Every part is in range here: each digit is `n / 10^k % 10` of a known width.
    let digit = |n: i64| b'0' + (n % 10) as u8;
    let (hour, minute, second) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    out.extend_from_slice(&[
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        digit(month / 10),
        digit(month),
        b'-',
        digit(day / 10),
        digit(day),
        b'T',
        digit(hour / 10),
        digit(hour),
        b':',
        digit(minute / 10),
        digit(minute),
        b':',
        digit(second / 10),
        digit(second),
    ]);
    if millis == Millis::Always || ms != 0 {
        out.extend_from_slice(&[b'.', digit(ms / 100), digit(ms / 10), digit(ms)]);
    }
    out.push(b'Z');
    true
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

    /// Every time written as chrono writes it, or through the fallback outside its range.
    #[test]
    fn times_are_written_as_chrono_writes_them() {
        use chrono::{DateTime, SecondsFormat};
        use rand::Rng;
        let chrono = |ms: i64, f: SecondsFormat| {
            DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(f, true))
        };
        let (first, last) = (-62_167_219_200_000i64, 253_402_300_799_999i64);
        let mut rng = rand::thread_rng();
        let mut cases = vec![
            0,
            -1,
            1,
            999,
            1000,
            first,
            last,
            951_782_400_000,
            1_795_462_920_000,
        ];
        // Around leap days and year ends, then anywhere.
        for y in [1900i64, 2000, 2024, 2100] {
            let t = DateTime::parse_from_rfc3339(&format!("{y}-03-01T00:00:00Z")).unwrap();
            let ms = t.timestamp_millis();
            cases.extend([ms - 1, ms, ms - 86_400_000, ms - 86_400_001]);
        }
        cases.extend((0..20_000).map(|_| rng.gen_range(first..=last)));
        for ms in cases {
            for (m, f) in [
                (Millis::Always, SecondsFormat::Millis),
                (Millis::IfAny, SecondsFormat::AutoSi),
            ] {
                let mut j = Json::with_capacity(0);
                j.time(ms, m, |_| "fallback".into());
                let want = format!("\"{}\"", chrono(ms, f).unwrap());
                assert_eq!(String::from_utf8(j.into_vec()).unwrap(), want, "{ms} {m:?}");
            }
        }
        for ms in [first - 1, last + 1, i64::MIN, i64::MAX] {
            let mut j = Json::with_capacity(0);
            j.time(ms, Millis::Always, |_| "fallback".into());
            assert_eq!(j.into_vec(), b"\"fallback\"", "{ms}");
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
