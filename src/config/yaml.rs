//! Lenient serde building blocks for the raw configuration, so one mistake never hides the next.
//!
//! `serde(deny_unknown_fields)` and strictly typed leaves stop at the first problem; SPEC §3 and
//! DESIGN rule 8 want every problem reported at once. So the raw structs hold:
//! - [`Value`]: any YAML value as written (scalar, list or mapping), typed later by validation;
//! - [`Table`] / [`List`]: a section that must be a mapping / a list, or a note of what was found;
//! - [`UnknownKeys`]: used with `#[serde(flatten)]` to collect the keys a struct does not know.
//!
//! Only YAML syntax errors (and the few structural ones serde-saphyr itself refuses, such as
//! duplicate keys) still abort the parse; they carry a line and column.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Any YAML value, kept as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    /// Keys in document order; non-string keys are kept in their written form.
    Map(Vec<(String, Value)>),
}

impl Value {
    pub fn str(s: &str) -> Self {
        Value::Str(s.to_owned())
    }

    /// The value as a problem message shows it: strings quoted, containers by kind.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing (null)".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The value used as a mapping key: strings as is, scalars as written.
    fn into_key(self) -> String {
        match self {
            Value::Str(s) => s,
            Value::Null => "~".to_owned(),
            other => other.describe(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::str(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Value, Value>()? {
            entries.push((key.into_key(), value));
        }
        Ok(Value::Map(entries))
    }
}

/// A section that must be a mapping. `null` (a key with nothing after it) means all defaults.
#[derive(Debug, Clone)]
pub enum Table<T> {
    Given(T),
    /// Not a mapping: what was found instead, for the problem message.
    Wrong(String),
}

impl<T: Default> Default for Table<T> {
    fn default() -> Self {
        Table::Given(T::default())
    }
}

/// A section that must be a list. `null` means an empty list.
#[derive(Debug, Clone)]
pub enum List<T> {
    Given(Vec<T>),
    /// Not a list: what was found instead, for the problem message.
    Wrong(String),
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List::Given(Vec::new())
    }
}

/// The `visit_*` methods shared by [`Table`] and [`List`]: every scalar is the wrong shape.
macro_rules! wrong_scalars {
    ($wrong:path) => {
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrong(Value::Bool(v).describe()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrong(Value::Int(v.into()).describe()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrong(Value::Int(v.into()).describe()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrong(Value::Float(v).describe()))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrong(Value::str(v).describe()))
        }
    };
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TableVisitor(PhantomData))
    }
}

struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_unit<E>(self) -> Result<Table<T>, E> {
        Ok(Table::default())
    }
    fn visit_none<E>(self) -> Result<Table<T>, E> {
        Ok(Table::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Table::Given)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Table<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Table::Wrong("a list".to_owned()))
    }
    wrong_scalars!(Table::Wrong);
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_unit<E>(self) -> Result<List<T>, E> {
        Ok(List::default())
    }
    fn visit_none<E>(self) -> Result<List<T>, E> {
        Ok(List::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<List<T>, A::Error> {
        Vec::<T>::deserialize(SeqAccessDeserializer::new(seq)).map(List::Given)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<List<T>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(List::Wrong("a mapping".to_owned()))
    }
    wrong_scalars!(List::Wrong);
}

/// The keys of a mapping that its struct does not declare, in document order.
///
/// Used as `#[serde(flatten)] unknown: UnknownKeys`: serde hands a struct with a flattened field
/// every key it does not recognise, so the struct itself never fails on one.
#[derive(Debug, Clone, Default)]
pub struct UnknownKeys(pub Vec<String>);

impl<'de> Deserialize<'de> for UnknownKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UnknownKeysVisitor)
    }
}

struct UnknownKeysVisitor;

impl<'de> Visitor<'de> for UnknownKeysVisitor {
    type Value = UnknownKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UnknownKeys, A::Error> {
        let mut keys = Vec::new();
        while let Some((key, IgnoredAny)) = map.next_entry::<Value, IgnoredAny>()? {
            keys.push(key.into_key());
        }
        Ok(UnknownKeys(keys))
    }
}
