//! The challenge body as read before validation, in one pass and with few allocations:
//! strings borrowed from the body where they hold no escapes, the objects of a known
//! shape (a device, the transaction, `sms`) captured by key, anything else kept whole as
//! a `serde_json::Value` so that a refusal can show what it got. An object keeps the
//! last value of a repeated key, as a map would; unknown keys are skipped.
//!
//! Nothing here judges a value: `model::parse_challenge` checks each field on its own so
//! that a refusal names the field.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// One JSON value, not yet judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Loose<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Negative(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An object or an array, kept whole.
    Tree(serde_json::Value),
}

impl Loose<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a non-negative integer, as `serde_json::Value::as_u64` reads it.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Loose::Unsigned(n) => Some(*n),
            _ => None,
        }
    }
    /// The value as a `serde_json::Value` (for a refusal's message).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Loose::Null => serde_json::Value::Null,
            Loose::Bool(b) => (*b).into(),
            Loose::Unsigned(n) => (*n).into(),
            Loose::Negative(n) => (*n).into(),
            Loose::Float(f) => (*f).into(),
            Loose::Str(s) => s.as_ref().into(),
            Loose::Tree(v) => v.clone(),
        }
    }
}

/// Shown as JSON, exactly as the `serde_json::Value` it stands for.
impl fmt::Display for Loose<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_value(), f)
    }
}

/// The visitor methods of a value that is not an object or an array, each made into a
/// [`Loose`] and then into the visitor's own type.
macro_rules! visit_scalars {
    () => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Loose::Bool(v).into())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Loose::Unsigned(v).into())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(match u64::try_from(v) {
                Ok(n) => Loose::Unsigned(n),
                Err(_) => Loose::Negative(v),
            }
            .into())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Loose::Float(v).into())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Loose::Null.into())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Loose::Null.into())
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Loose::Str(Cow::Borrowed(v)).into())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Loose::Str(Cow::Owned(v.to_owned())).into())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Loose::Str(Cow::Owned(v)).into())
        }
    };
}

/// An object or array met where a scalar, a shaped object or a list was not expected.
fn whole_map<'de, A: MapAccess<'de>>(map: A) -> Result<Loose<'de>, A::Error> {
    serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Loose::Tree)
}

fn whole_seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<Loose<'de>, A::Error> {
    serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Loose::Tree)
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    visit_scalars!();
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        whole_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        whole_seq(seq)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// An object key, borrowed where it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The keys an object of a known shape is read for.
pub trait Keys {
    /// At most [`MAX_KEYS`].
    const KEYS: &'static [&'static str];
}

/// The most keys a [`Keys`] shape may name.
pub const MAX_KEYS: usize = 8;

/// A value that should be an object of shape `K`: the object's values for `K`'s keys, or
/// whatever else it was.
///
/// Not boxed: the object lives only while the body is judged, and a box would be the
/// allocation per object this module is there to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Shaped<'a, K> {
    Object(Fields<'a, K>),
    Other(Loose<'a>),
}

/// The values of an object for the keys of `K`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields<'a, K> {
    values: [Option<Loose<'a>>; MAX_KEYS],
    keys: PhantomData<K>,
}

impl<'a, K: Keys> Fields<'a, K> {
    /// The value under `key`, one of `K::KEYS`; `None` when the object has no such key.
    pub fn get(&self, key: &str) -> Option<&Loose<'a>> {
        let i = K::KEYS.iter().position(|k| *k == key);
        debug_assert!(i.is_some(), "{key} is not one of {:?}", K::KEYS);
        i.and_then(|i| self.values[i].as_ref())
    }
}

impl<'a, K> From<Loose<'a>> for Shaped<'a, K> {
    fn from(v: Loose<'a>) -> Self {
        Shaped::Other(v)
    }
}

impl<'de: 'a, 'a, K: Keys> Deserialize<'de> for Shaped<'a, K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<'de, K: Keys> Visitor<'de> for V<K> {
            type Value = Shaped<'de, K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                const { assert!(K::KEYS.len() <= MAX_KEYS) };
                let mut values: [Option<Loose<'de>>; MAX_KEYS] = Default::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match K::KEYS.iter().position(|k| *k == key) {
                        Some(i) => values[i] = Some(map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Shaped::Object(Fields {
                    values,
                    keys: PhantomData,
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                whole_seq(seq).map(Shaped::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A value that should be an array of `T`: its items, or whatever else it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed<'a, T> {
    List(Vec<T>),
    Other(Loose<'a>),
}

impl<'a, T> From<Loose<'a>> for Listed<'a, T> {
    fn from(v: Loose<'a>) -> Self {
        Listed::Other(v)
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Listed<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Listed<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                whole_map(map).map(Listed::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The body is at most 16 KiB: the list is bounded by it.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Listed::List(items))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Pair;
    impl Keys for Pair {
        const KEYS: &'static [&'static str] = &["a", "b"];
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body = br#"["plain", "esc\"aped"]"#;
        let Listed::List(items) = serde_json::from_slice::<Listed<Loose>>(body).unwrap() else {
            panic!("a list");
        };
        assert!(matches!(&items[0], Loose::Str(Cow::Borrowed("plain"))));
        assert!(matches!(&items[1], Loose::Str(Cow::Owned(s)) if s == "esc\"aped"));
    }

    #[test]
    fn every_value_reads_and_shows_as_serde_json_does() {
        for text in [
            "null",
            "true",
            "0",
            "1",
            "-7",
            "1.0",
            "2.5e3",
            "18446744073709551615",
            "18446744073709551616",
            r#""x\u00e9""#,
            r#"{"k":[1,{"z":null}]}"#,
            "[1,\"a\"]",
        ] {
            let loose: Loose = serde_json::from_str(text).unwrap();
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(loose.to_value(), value, "{text}");
            assert_eq!(loose.to_string(), value.to_string(), "{text}");
            assert_eq!(loose.as_u64(), value.as_u64(), "{text}");
            assert_eq!(loose.as_str(), value.as_str(), "{text}");
        }
    }

    #[test]
    fn a_shaped_object_keeps_its_keys_last_wins_and_skips_the_rest() {
        let s: Shaped<Pair> =
            serde_json::from_str(r#"{"a": 1, "zz": {"deep": [1]}, "a": "two", "b": null}"#)
                .unwrap();
        let Shaped::Object(f) = s else {
            panic!("an object")
        };
        assert_eq!(f.get("a"), Some(&Loose::Str("two".into())));
        assert_eq!(f.get("b"), Some(&Loose::Null));
        let s: Shaped<Pair> = serde_json::from_str(r#"{}"#).unwrap();
        assert!(matches!(s, Shaped::Object(f) if f.get("a").is_none()));
        for other in ["[1]", "\"a\"", "3", "null"] {
            let s: Shaped<Pair> = serde_json::from_str(other).unwrap();
            assert_eq!(
                s,
                Shaped::Other(serde_json::from_str::<Loose>(other).unwrap())
            );
        }
    }

    #[test]
    fn a_list_of_anything_else_is_kept_whole() {
        let l: Listed<Shaped<Pair>> = serde_json::from_str(r#"[{"a":1}, 2]"#).unwrap();
        let Listed::List(items) = l else {
            panic!("a list")
        };
        assert!(matches!(&items[0], Shaped::Object(_)));
        assert_eq!(items[1], Shaped::Other(Loose::Unsigned(2)));
        let l: Listed<Loose> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert!(matches!(l, Listed::Other(Loose::Tree(_))));
        assert!(serde_json::from_str::<Listed<Loose>>("[1,").is_err());
    }
}
