//! Maps whose values carry their own key, serialized as plain lists of the values.
//!
//! Serializing the values only means a map key can never disagree with the value's own key,
//! and every serde format handles it (JSON object keys must be strings; a list has no keys).

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that knows its key in the map that holds it.
pub trait Keyed {
    type Key: Ord + Clone + Display;
    fn key(&self) -> Self::Key;
}

pub fn serialize<V: Keyed + Serialize, S: Serializer>(
    map: &BTreeMap<V::Key, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

/// Rebuilds the map; a key listed twice is an error rather than a silent overwrite.
pub fn deserialize<'de, V, D>(deserializer: D) -> Result<BTreeMap<V::Key, V>, D::Error>
where
    V: Keyed + Deserialize<'de>,
    D: Deserializer<'de>,
{
    let list = Vec::<V>::deserialize(deserializer)?;
    let mut map = BTreeMap::new();
    for value in list {
        let key = value.key();
        if map.contains_key(&key) {
            return Err(D::Error::custom(format!("{key} is listed twice")));
        }
        map.insert(key, value);
    }
    Ok(map)
}
